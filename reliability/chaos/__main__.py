"""`python -m reliability.chaos` (same as `python -m reliability chaos`)."""

import sys

from reliability.chaos.cli import main

sys.exit(main())

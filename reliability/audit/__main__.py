"""`python -m reliability.audit` (same as `python -m reliability audit`)."""

import sys

from reliability.audit.cli import main

sys.exit(main())

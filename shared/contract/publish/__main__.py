"""`python -m shared.contract.publish [--check] [--root DIR]`: regenerate (or check) the published contract."""

from __future__ import annotations

import sys

from shared.contract.publish.files import main

if __name__ == "__main__":
    sys.exit(main())

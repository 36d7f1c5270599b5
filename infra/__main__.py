"""Entry point of `python -m infra`."""

from __future__ import annotations

import sys

from infra.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:  # start-up failures carry the relevant log tail
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

"""`python -m reliability audit|chaos|load …` (see each module's --help)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = ("audit", "chaos", "load", "proxy")
    if not args or args[0] not in commands:
        print(f"usage: python -m reliability {{{'|'.join(commands)}}} [--help]", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "audit":
        from reliability import audit

        return audit.main(rest)
    if command == "chaos":
        from reliability import chaos

        return chaos.main(rest)
    if command == "load":
        from reliability import load

        load.main(rest)
        return 0
    from reliability import faultproxy

    faultproxy.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

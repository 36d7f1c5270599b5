"""Container HEALTHCHECK of a service: `python docker/healthcheck.py <service> <default port>`.

GETs http://127.0.0.1:<port>/health (200 only when the service's database and Kafka are
reachable) with the standard library only, so the image needs no curl. The port is resolved the
way the service's settings class resolves it: HTTP_PORT, else <SERVICE>_PORT (the alias every
service accepts), else the default given on the command line. Exit 0 = healthy, 1 = not.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def _env(name: str) -> str | None:
    """Environment lookup ignoring case, as pydantic-settings does (case_sensitive=False)."""
    wanted = name.lower()
    for key, value in os.environ.items():
        if key.lower() == wanted:
            return value
    return None


def resolve_port(service: str, default: int) -> int:
    for name in ("HTTP_PORT", f"{service.upper()}_PORT"):
        value = _env(name)
        if value is not None and value.strip():
            return int(value)
    return default


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py <service> <default port>", file=sys.stderr)
        return 2
    service, default = argv[0], int(argv[1])
    url = f"http://127.0.0.1:{resolve_port(service, default)}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (fixed http URL)
            status = int(response.status)
    except urllib.error.HTTPError as exc:  # 503: the service is up but its DB or Kafka is not
        print(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

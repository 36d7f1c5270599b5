"""`python -m services.query`: serve the query service (HTTP_PORT, default 8004)."""

from __future__ import annotations

from services.query.app import create_app
from services.query.settings import QuerySettings
from shared.runtime import serve


def main() -> None:
    settings = QuerySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

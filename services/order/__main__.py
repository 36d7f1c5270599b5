"""`python -m services.order`: serve the order service (HTTP_PORT, default 8001)."""

from __future__ import annotations

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.runtime import serve


def main() -> None:
    settings = OrderSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

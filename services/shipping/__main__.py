"""`python -m services.shipping`: serve the shipping service (HTTP_PORT, default 8003)."""

from __future__ import annotations

from services.shipping.app import create_app
from services.shipping.settings import ShippingSettings
from shared.runtime import serve


def main() -> None:
    settings = ShippingSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

"""`python -m services.payment`: serve the payment service (HTTP_PORT, default 8002)."""

from __future__ import annotations

from services.payment.app import create_app
from services.payment.settings import PaymentSettings
from shared.runtime import serve


def main() -> None:
    settings = PaymentSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

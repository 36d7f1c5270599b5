"""The payment service's configuration: environment variables with documented defaults."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.payment.domain import DEFAULT_LIMIT_CENTS
from shared.settings import ServiceSettings


class PaymentSettings(ServiceSettings):
    """Payment settings; everything in `ServiceSettings` plus:

    DATABASE_URL          the payment database (default postgresql://payment_service:payment_service@127.0.0.1:5432/payment)
    HTTP_PORT             REST port (default 8002; PAYMENT_PORT is accepted too, as `make up` sets it)
    PAYMENT_LIMIT_CENTS   authorizations above this amount are declined `amount_over_limit`
                          (default 1000000)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://payment_service:payment_service@127.0.0.1:5432/payment"
    http_port: int = Field(default=8002, validation_alias=AliasChoices("http_port", "payment_port"))
    payment_limit_cents: int = Field(default=DEFAULT_LIMIT_CENTS, ge=0)

"""The shipping service's configuration: environment variables with documented defaults."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.shipping.domain import DEFAULT_UNSERVED_COUNTRIES
from shared.settings import ServiceSettings


class ShippingSettings(ServiceSettings):
    """Shipping settings; everything in `ServiceSettings` plus:

    DATABASE_URL                 the shipping database (default postgresql://shipping_service:shipping_service@127.0.0.1:5432/shipping)
    KEYSTORE_URL                 the key store, read-only: opens addresses for GET /shipments
                                 (default postgresql://shipping_service:shipping_service@127.0.0.1:5432/keystore)
    HTTP_PORT                    REST port (default 8003; SHIPPING_PORT is accepted too, as `make up` sets it)
    SHIPPING_UNSERVED_COUNTRIES  comma-separated ISO-3166 alpha-2 codes; shipments there fail
                                 `destination_not_served` (default AQ; empty = serve all)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://shipping_service:shipping_service@127.0.0.1:5432/shipping"
    keystore_url: str | None = "postgresql://shipping_service:shipping_service@127.0.0.1:5432/keystore"
    http_port: int = Field(default=8003, validation_alias=AliasChoices("http_port", "shipping_port"))
    # A plain string, not a list: pydantic-settings would expect JSON for a list from the env.
    shipping_unserved_countries: str = ",".join(sorted(DEFAULT_UNSERVED_COUNTRIES))

    @property
    def unserved_countries(self) -> frozenset[str]:
        return frozenset(c.strip().upper() for c in self.shipping_unserved_countries.split(",") if c.strip())

"""The UI server's configuration: environment variables with documented defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class UiSettings(ServiceSettings):
    """UI settings. It has no database and no Kafka client (it only talks HTTP to the services):
    of `ServiceSettings` it reads HTTP_HOST, LOG_LEVEL and SHUTDOWN_GRACE_S, plus:

    HTTP_PORT               where the UI listens (default 8000; UI_PORT is accepted too)
    ORDER_URL               the order service's base URL (default http://127.0.0.1:8001)
    PAYMENT_URL             the payment service's base URL (default http://127.0.0.1:8002)
    SHIPPING_URL            the shipping service's base URL (default http://127.0.0.1:8003)
    QUERY_URL               the query service's base URL (default http://127.0.0.1:8004)
    UI_DEV_KEYS_DIR         the development signing keys the sign-in page mints tokens with
                            (default .run/auth, where `make up` creates them)
    UI_PROXY_TIMEOUT_S      how long a proxied request may take before 504 (default 60; an SSE
                            stream is not bounded by it)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    http_port: int = Field(default=8000, validation_alias=AliasChoices("http_port", "ui_port"))
    order_url: str = "http://127.0.0.1:8001"
    payment_url: str = "http://127.0.0.1:8002"
    shipping_url: str = "http://127.0.0.1:8003"
    query_url: str = "http://127.0.0.1:8004"
    ui_dev_keys_dir: Path = Path(".run/auth")
    ui_proxy_timeout_s: float = Field(default=60.0, gt=0)

    def upstreams(self) -> dict[str, str]:
        """The services the browser may reach under /api/<name>/, by name."""
        return {
            "order": self.order_url.rstrip("/"),
            "payment": self.payment_url.rstrip("/"),
            "shipping": self.shipping_url.rstrip("/"),
            "query": self.query_url.rstrip("/"),
        }

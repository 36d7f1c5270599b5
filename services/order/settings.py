"""The order service's configuration: environment variables with documented defaults."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.order.saga import DEFAULT_STEP_TIMEOUT_S
from shared.settings import ServiceSettings


class OrderSettings(ServiceSettings):
    """Order settings; everything in `ServiceSettings` (CONFLICT_ATTEMPTS: how often a cancel
    that lost a write race is decided again before answering 409) plus:

    DATABASE_URL           the order database: orders, sagas, idempotency keys, deadlines
                           (default postgresql://order_service:order_service@127.0.0.1:5432/order)
    KEYSTORE_URL           the key store, read/write: makes, reads and destroys customers' data keys
                           (default postgresql://order_service:order_service@127.0.0.1:5432/keystore)
    HTTP_PORT              REST port (default 8001; ORDER_PORT is accepted too, as `make up` sets it)
    SAGA_STEP_TIMEOUT_S    how long the saga waits for a participant's answer before it
                           compensates (default 30). Fixed per saga when it starts.
    SAGA_TICK_S            the deadline scheduler's shortest pause between passes; otherwise it
                           sleeps until the earliest deadline, at most SAGA_STEP_TIMEOUT_S (default 0.5)
    SAGA_DEADLINE_BATCH    due sagas fired per scheduler pass, one transaction each (default 100)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://order_service:order_service@127.0.0.1:5432/order"
    keystore_url: str | None = "postgresql://order_service:order_service@127.0.0.1:5432/keystore"
    http_port: int = Field(default=8001, validation_alias=AliasChoices("http_port", "order_port"))
    saga_step_timeout_s: float = Field(default=DEFAULT_STEP_TIMEOUT_S, gt=0)
    saga_tick_s: float = Field(default=0.5, gt=0)
    saga_deadline_batch: int = Field(default=100, ge=1)

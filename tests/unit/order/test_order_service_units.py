"""Unit tests of the order service's adapters: settings, request body → command, fingerprints."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.order import domain
from services.order.idempotency import body_fingerprint
from services.order.settings import OrderSettings
from services.order.views import PlaceOrderRequest
from shared.contract import Address, OrderLine, OrderPlaced, encode_data

BODY: dict[str, Any] = {
    "customer_id": "cust-1",
    "items": [
        {"sku": "a", "quantity": 2, "unit_price_cents": 1250},
        {"sku": "b", "quantity": 1, "unit_price_cents": 499},
    ],
    "currency": "EUR",
    "shipping_address": {
        "name": "Ada",
        "line1": "1 Main St",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
    "payment_token": "tok_ok",
}


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "HTTP_PORT", "ORDER_PORT", "SAGA_STEP_TIMEOUT_S", "SAGA_TICK_S", "CONFLICT_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    defaults = OrderSettings()
    assert defaults.database_url == "postgresql://order_service:order_service@127.0.0.1:5432/order"
    assert (defaults.http_port, defaults.saga_step_timeout_s, defaults.saga_tick_s) == (8001, 30.0, 0.5)
    assert defaults.conflict_attempts == 5 and not hasattr(defaults, "conflict_retries")

    monkeypatch.setenv("ORDER_PORT", "9101")
    monkeypatch.setenv("SAGA_STEP_TIMEOUT_S", "2.5")
    monkeypatch.setenv("SAGA_TICK_S", "0.1")
    monkeypatch.setenv("CONFLICT_ATTEMPTS", "2")
    configured = OrderSettings()
    assert (configured.http_port, configured.saga_step_timeout_s, configured.saga_tick_s) == (9101, 2.5, 0.1)
    assert configured.conflict_attempts == 2
    monkeypatch.setenv("SAGA_STEP_TIMEOUT_S", "0")
    with pytest.raises(ValidationError):
        OrderSettings()


def test_request_maps_to_the_domain_command() -> None:
    command = PlaceOrderRequest.model_validate(BODY).to_command("order-1")

    assert command.order_id == "order-1" and command.customer_id == "cust-1"
    assert command.items == (
        OrderLine(sku="a", quantity=2, unit_price_cents=1250),
        OrderLine(sku="b", quantity=1, unit_price_cents=499),
    )
    assert command.shipping_address == Address(
        name="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE"
    )
    assert command.payment_token == "tok_ok" and command.currency == "EUR"
    assert "tok_ok" not in repr(command)
    [placed] = domain.decide(command, domain.OrderState())
    assert isinstance(placed, OrderPlaced) and placed.total_cents == 2999
    assert b"payment_token" not in encode_data(placed) and b"tok_ok" not in encode_data(placed)


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": "2"},
        {"quantity": 2.0},
        {"quantity": True},
        {"unit_price_cents": 2**63},
        {"sku": " "},
        {"extra": 1},
    ],
)
def test_request_model_is_strict(change: dict[str, Any]) -> None:
    body = {**BODY, "items": [{**BODY["items"][0], **change}]}
    with pytest.raises(ValidationError):
        PlaceOrderRequest.model_validate(body)


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    reordered = dict(reversed(list(BODY.items())))
    assert body_fingerprint(BODY) == body_fingerprint(reordered)
    assert body_fingerprint(BODY) != body_fingerprint({**BODY, "customer_id": "cust-2"})
    assert body_fingerprint(BODY) != body_fingerprint({**BODY, "items": list(reversed(BODY["items"]))})

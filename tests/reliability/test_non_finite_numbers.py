"""Regression (found by the fuzzer): a non-finite JSON number must be a 422, not a 500.

Python's JSON parser accepts `NaN`, `Infinity`, `-Infinity` and turns `1e400` into `inf`;
pydantic then (correctly) refuses the float for an integer field, but FastAPI's default 422
handler echoes the bad `input` back and rendering `inf`/`nan` as JSON raises, so the client got
a 500 (or a dropped connection). No database is needed: validation runs before the handler.
"""

from __future__ import annotations

import json

import httpx
import pytest

from services.order.app import create_app
from services.order.settings import OrderSettings
from tests.auth_support import acting

BODY = {
    "customer_id": "c-1",
    "items": [{"sku": "SKU-1", "quantity": "__N__", "unit_price_cents": 1500}],
    "currency": "EUR",
    "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Paris", "postal_code": "75001", "country": "FR"},
    "payment_token": "tok_visa",
}


@pytest.mark.parametrize("token", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
async def test_a_non_finite_number_is_refused_with_422(token: str) -> None:
    app = create_app(OrderSettings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    body = json.dumps(BODY).replace('"__N__"', token).encode()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://order.test", auth=acting()) as client:
        response = await client.post("/orders", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"][:3] == ["body", "items", 0]

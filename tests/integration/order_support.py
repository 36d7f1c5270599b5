"""Helpers for the order service and saga journey tests: run the apps, place orders, poll."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson

from infra.stack import LocalStack
from services.order.app import create_app
from services.order.customers import seal_address
from services.order.settings import OrderSettings
from shared.contract import Address, Envelope, Fact, encode, utc_now
from shared.personal import DataKey
from tests.integration.kafka_support import produce
from tests.integration.service_support import running, scratch_database

ADDRESS = {
    "name": "Ada Lovelace",
    "line1": "12 St James's Sq",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def sealed(address: dict[str, str]) -> Address:
    """An address as the contract carries it: its personal fields sealed (with a test key)."""
    return seal_address(DataKey("0" * 32, "cust-test", 1, bytes(32)), Address(**address))


def order_body(**overrides: Any) -> dict[str, Any]:
    """A valid POST /orders body (total 4950 EUR cents); fields replaced by `overrides`."""
    body: dict[str, Any] = {
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
        "items": [
            {"sku": "book-sicp", "quantity": 1, "unit_price_cents": 4500},
            {"sku": "pen-blue", "quantity": 3, "unit_price_cents": 150},
        ],
        "currency": "EUR",
        "shipping_address": dict(ADDRESS),
        "payment_token": "tok_ok",
    }
    body.update(overrides)
    return body


def order_settings(stack: LocalStack, dsn: str, **overrides: Any) -> OrderSettings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "relay_poll_interval_s": 0.1,
        "db_pool_max_size": 10,
        "saga_tick_s": 0.1,
    }
    values.update(overrides)
    return OrderSettings(**values)


@asynccontextmanager
async def order_service(
    stack: LocalStack, dsn: str | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The order app in-process on `dsn` (a scratch database if None)."""
    if dsn is None:
        async with (
            scratch_database(stack, "order") as fresh,
            running(create_app(order_settings(stack, fresh, **overrides))) as http,
        ):
            yield http
    else:
        async with running(create_app(order_settings(stack, dsn, **overrides))) as http:
            yield http


async def place(client: httpx.AsyncClient, body: dict[str, Any] | None = None, **headers: str) -> str:
    """POST /orders; the new order id (fails the test unless 202)."""
    response = await client.post("/orders", json=body or order_body(), headers=headers)
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def reaches(client: httpx.AsyncClient, url: str, timeout_s: float = 30.0, **expected: Any) -> dict[str, Any]:
    """Poll GET `url` until its body has the expected fields (bounded); the body then.

    On timeout the assertion shows the last body seen, which is what a failing journey needs.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        response = await client.get(url)
        last = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text
        )
        if response.status_code == 200 and all(last.get(k) == v for k, v in expected.items()):
            body: dict[str, Any] = last
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"GET {url} never matched {expected} within {timeout_s}s; last: {last}")


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def publish_fact(stack: LocalStack, fact: Fact, *, stream_id: str, version: int = 1, source: str) -> str:
    """Put a participant's fact on its topic as the participant's relay would; its event id."""
    assert fact.TOPIC is not None
    envelope = Envelope(
        id=str(uuid.uuid4()),
        source=source,
        subject=stream_id,
        sequence=version,
        time=utc_now(),
        correlation_id=fact.order_id,
        causation_id=f"cause-{uuid.uuid4()}",
        data=fact,
    )
    await produce(stack.kafka_bootstrap, fact.TOPIC, [(stream_id, encode(envelope))])
    return envelope.id


async def publish_v1_fact(
    stack: LocalStack, topic: str, event_type: str, stream_id: str, version: int, data: dict[str, Any], *, source: str
) -> str:
    """Put a fact on `topic` as the previous code wrote it (schema version 1), by hand, as an
    outside client would; its event id."""
    event_id = str(uuid.uuid4())
    document = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": stream_id,
        "time": utc_now().isoformat(),
        "datacontenttype": "application/json",
        "correlationid": data["order_id"],
        "causationid": f"cause-{event_id}",
        "sequence": str(version),
        "schemaversion": "1",
        "data": data,
    }
    await produce(stack.kafka_bootstrap, topic, [(stream_id, orjson.dumps(document))])
    return event_id

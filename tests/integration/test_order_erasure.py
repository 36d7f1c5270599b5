"""Crypto-shredding in the order service against real Kafka and PostgreSQL: the address is
sealed in the log and on the topics and opened only by the read endpoints; erasure destroys
the customer's key (409 while an order needs the address, idempotent, race-free against a
concurrent placement); a key store that cannot be reached makes writes 503, appending nothing.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from infra.stack import LocalStack, free_ports
from shared.contract import Money, PaymentDeclined, customer_stream_id
from shared.ids import derived_id
from shared.keystore import Keystore
from shared.personal import ERASED
from tests.integration.order_support import fetch, order_body, order_service, place, publish_fact, reaches
from tests.integration.service_support import scratch_database
from tests.integration.test_order_service import ORDER_EVENTS, messages_about

pytestmark = pytest.mark.integration

PERSONAL = ("name", "line1", "city", "postal_code")


def person() -> dict[str, Any]:
    """A customer with a name and street nobody else has (so a scan for them means something)."""
    tag = uuid.uuid4().hex[:10]
    address = {"name": f"Zelda Q{tag}", "line1": f"{tag} Erasure Lane", "city": "Lyon", "postal_code": "69001"}
    return {"customer_id": f"cust-{tag}", "address": {**address, "country": "FR"}}


def body_of(who: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return order_body(customer_id=who["customer_id"], shipping_address=dict(who["address"]), **overrides)


class Service:
    def __init__(self, client: httpx.AsyncClient, dsn: str) -> None:
        self.client = client
        self.dsn = dsn


@pytest.fixture
async def service(stack: LocalStack) -> AsyncIterator[Service]:
    async with scratch_database(stack, "order") as dsn, order_service(stack, dsn) as client:
        yield Service(client, dsn)


async def decline(stack: LocalStack, client: httpx.AsyncClient, order_id: str) -> None:
    """Answer the order's authorization with a decline, as the payment service would: REJECTED."""
    payment_id = derived_id(order_id, "payment")
    fact = PaymentDeclined(
        order_id=order_id,
        payment_id=payment_id,
        amount=Money(amount_cents=4950, currency="EUR"),
        reason="card_declined",
    )
    await publish_fact(stack, fact, stream_id=payment_id, source="/services/payment")
    await reaches(client, f"/orders/{order_id}", status="REJECTED")


def clear_words(who: dict[str, Any]) -> list[str]:
    return [who["address"]["name"], who["address"]["line1"]]


async def test_the_address_is_sealed_in_the_log_and_on_the_topic_and_opened_by_the_reads(
    service: Service, stack: LocalStack
) -> None:
    who = person()
    order_id = await place(service.client, body_of(who))

    rows = await fetch(service.dsn, "SELECT type, data::text AS data FROM events")
    assert {r["type"] for r in rows} >= {"order.placed", "saga.started"}
    for row in rows:
        for word in clear_words(who):
            assert word not in row["data"], f"{row['type']} holds {word!r} in clear"
    placed = (await messages_about(stack, ORDER_EVENTS, order_id, 1))[0]
    sealed = placed["data"]["shipping_address"]
    assert placed["schemaversion"] == "2" and all(sealed[f].startswith("pd1.") for f in PERSONAL)
    assert sealed["country"] == "FR" and not any(w in orjson.dumps(placed).decode() for w in clear_words(who))

    order = (await service.client.get(f"/orders/{order_id}")).json()
    assert order["shipping_address"] == who["address"]
    events = (await service.client.get(f"/orders/{order_id}/events")).json()
    assert events[0]["data"]["shipping_address"] == who["address"]
    saga_view = (await service.client.get(f"/sagas/{order_id}")).json()
    assert saga_view["events"][0]["data"]["shipping_address"] == who["address"]


async def test_erasure_refuses_while_an_order_needs_the_address_then_shreds_idempotently(
    service: Service, stack: LocalStack
) -> None:
    who, other = person(), person()
    url = f"/customers/{who['customer_id']}/personal-data"
    order_id = await place(service.client, body_of(who))
    other_order = await place(service.client, body_of(other))

    refused = await service.client.delete(url)
    assert refused.status_code == 409 and refused.json()["code"] == "personal_data_still_needed"
    assert order_id in refused.json()["message"]
    assert (await service.client.get(f"/orders/{order_id}")).json()["shipping_address"] == who["address"]

    await decline(stack, service.client, order_id)
    before = (await service.client.get(f"/orders/{order_id}")).json()
    erased = await service.client.delete(url)
    assert erased.status_code == 200, erased.text
    first = erased.json()
    assert first["customer_id"] == who["customer_id"] and len(first["key_ids"]) == 1 and first["repeated"] is False

    shown = {f: ERASED for f in PERSONAL} | {"country": "FR"}
    after = (await service.client.get(f"/orders/{order_id}")).json()
    assert after == {**before, "shipping_address": shown}, "only the personal fields change"
    as_placed = (await service.client.get(f"/orders/{order_id}", params={"as_of_version": 1})).json()
    assert as_placed["shipping_address"] == shown and as_placed["total_cents"] == 4950
    events = (await service.client.get(f"/orders/{order_id}/events")).json()
    assert events[0]["data"]["shipping_address"] == shown
    saga_view = (await service.client.get(f"/sagas/{order_id}")).json()
    assert saga_view["events"][0]["data"]["shipping_address"] == shown
    assert (await service.client.get(f"/orders/{other_order}")).json()["shipping_address"] == other["address"]

    again = await service.client.delete(url)
    assert again.status_code == 200 and again.json() == {**first, "repeated": True}
    recorded = await fetch(
        service.dsn, "SELECT type FROM events WHERE stream_id = $1", customer_stream_id(who["customer_id"])
    )
    assert [r["type"] for r in recorded] == ["customer.personal_data_erased"]

    # A new order after erasure gets a fresh key: it reads, the erased one stays erased.
    fresh = await place(service.client, body_of(who))
    assert (await service.client.get(f"/orders/{fresh}")).json()["shipping_address"] == who["address"]
    assert (await service.client.get(f"/orders/{order_id}")).json()["shipping_address"] == shown
    assert (await service.client.delete(url)).status_code == 409


async def test_erasure_never_destroys_the_key_of_a_concurrent_placement(service: Service, stack: LocalStack) -> None:
    """Placement and erasure of one customer take turns: either the erasure comes first (200,
    and the new order has a fresh key that reads) or the placement does (the erasure is 409)."""
    people = [person() for _ in range(8)]
    for who in people:  # each customer first had an order that ended (so erasure may go on)
        await decline(stack, service.client, await place(service.client, body_of(who)))

    async def race(who: dict[str, Any]) -> tuple[int, str]:
        erasure, order_id = await asyncio.gather(
            service.client.delete(f"/customers/{who['customer_id']}/personal-data"), place(service.client, body_of(who))
        )
        return erasure.status_code, order_id

    outcomes = await asyncio.gather(*(race(who) for who in people))
    for who, (status, order_id) in zip(people, outcomes, strict=True):
        assert status in (200, 409)
        order = (await service.client.get(f"/orders/{order_id}")).json()
        assert order["status"] == "PENDING"
        assert order["shipping_address"] == who["address"], "the new order's key was destroyed under it"


async def test_a_key_store_that_cannot_be_reached_makes_writes_503_and_appends_nothing(stack: LocalStack) -> None:
    (closed_port,) = free_ports(1)
    nowhere = f"postgresql://app:app@127.0.0.1:{closed_port}/keystore"
    async with scratch_database(stack, "order") as dsn, order_service(stack, dsn, keystore_url=nowhere) as client:
        who = person()
        placed = await client.post("/orders", json=body_of(who), headers={"Idempotency-Key": f"k-{uuid.uuid4()}"})
        assert placed.status_code == 503 and placed.headers["Retry-After"] == "1"
        assert placed.json()["code"] == "keystore_unavailable"
        erased = await client.delete(f"/customers/{who['customer_id']}/personal-data")
        assert erased.status_code == 503 and erased.json()["code"] == "keystore_unavailable"
        assert await fetch(dsn, "SELECT event_id FROM events") == []
        assert await fetch(dsn, "SELECT id FROM outbox") == []
        assert await fetch(dsn, "SELECT idempotency_key FROM order_idempotency_keys") == []


async def test_an_erasure_interrupted_after_destroying_the_keys_is_recorded_by_its_retry(
    service: Service, stack: LocalStack
) -> None:
    who = person()
    order_id = await place(service.client, body_of(who))
    await decline(stack, service.client, order_id)
    keystore = Keystore(os.environ["KEYSTORE_URL"], writer=True)
    try:
        [key_id] = await keystore.destroy(who["customer_id"])  # as if the erasure died before its fact
    finally:
        await keystore.close()
    retried = await service.client.delete(f"/customers/{who['customer_id']}/personal-data")
    assert retried.status_code == 200 and retried.json()["key_ids"] == [key_id]
    assert retried.json()["repeated"] is False

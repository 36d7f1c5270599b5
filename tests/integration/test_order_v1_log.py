"""The order service on an order database written by the previous code (schema version 1 facts,
tests/fixtures/v1), loaded as stored: it answers as the previous code did, shows none of the
payment tokens the old `saga.step_requested` facts copied, and its old sagas go on correctly,
appending current facts after the old ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from infra.stack import LocalStack
from services.order import saga
from services.order.app import SCHEMA
from shared.contract import (
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    SagaStepRequested,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    decode_data,
    encode_data,
)
from shared.db import create_pool, migrate
from shared.ids import derived_id
from shared.personal import reveal
from tests.integration.kafka_support import read_topic
from tests.integration.order_support import fetch, order_service, publish_fact, publish_v1_fact, reaches
from tests.integration.service_support import scratch_database
from tests.integration.test_shipping_service import at_current_versions
from tests.unit.order import v1_fixtures as v1

pytestmark = pytest.mark.integration

STEP_S = 45.0
SHIPPING_SOURCE = "/services/shipping"


@dataclass
class OldDatabase:
    client: httpx.AsyncClient
    dsn: str


async def load_v1_order_database(dsn: str) -> None:
    """migrate(), then the v1 rows as stored, in their order: nothing rewritten, no index rows."""
    pool = await create_pool(dsn)
    try:
        await migrate(pool, [SCHEMA])
    finally:
        await pool.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            """INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                                   correlation_id, causation_id, data)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)""",
            [
                (
                    r.event_id,
                    r.stream_id,
                    r.version,
                    r.type,
                    r.schema_version,
                    r.occurred_at,
                    r.correlation_id,
                    r.causation_id,
                    r.raw_data,
                )
                for r in v1.order_rows()
            ],
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def old(stack: LocalStack) -> AsyncIterator[OldDatabase]:
    async with scratch_database(stack, "order_v1") as dsn:
        await load_v1_order_database(dsn)
        async with order_service(stack, dsn) as client:
            yield OldDatabase(client, dsn)


def recorded(order_id: str) -> dict[str, Any]:
    answers: dict[str, Any] = v1.expected()["orders"][order_id]["order_service"]
    return answers


def as_the_contract_reads_it(fact_type: str, schema_version: int, data: dict[str, Any]) -> Any:
    """A fact's data as the code reads it now: validated, upcast, in its current JSON form (the
    personal fields of a v1 fact as legacy text, which the read edges show as it was)."""
    return msgspec.json.decode(encode_data(decode_data(fact_type, schema_version, json.dumps(data))))


def order_as_of(order_id: str, version: int) -> dict[str, Any]:
    """GET /orders/{id}?as_of_version=N, derived from the recorded answers: the recorded order
    with only its first N facts applied."""
    answers = recorded(order_id)
    view = {k: v for k, v in answers["GET /orders/{id}"].items() if k not in ("payment_id", "shipment_id", "reason")}
    statuses = {
        "order.placed": "PENDING",
        "order.confirmed": "CONFIRMED",
        "order.shipped": "SHIPPED",
        "order.delivered": "DELIVERED",
        "order.rejected": "REJECTED",
        "order.cancelled": "CANCELLED",
    }
    for event in answers["GET /orders/{id}/events"][:version]:
        view["status"] = statuses[event["type"]]
        for field in ("payment_id", "shipment_id", "reason"):
            if field in event["data"] and event["type"] != "order.shipped" and event["type"] != "order.delivered":
                view[field] = event["data"][field]
    view["version"] = version
    return view


@pytest.mark.parametrize("order_id", v1.order_ids())
async def test_old_orders_and_sagas_answer_as_recorded_without_the_token(old: OldDatabase, order_id: str) -> None:
    answers = recorded(order_id)
    token = v1.expected()["orders"][order_id]["input"]["payment_token"]

    order = await old.client.get(f"/orders/{order_id}")
    events = await old.client.get(f"/orders/{order_id}/events")
    assert order.status_code == events.status_code == 200
    assert order.json() == answers["GET /orders/{id}"]
    assert events.json() == at_current_versions(answers["GET /orders/{id}/events"])
    versions = range(1, order.json()["version"] + 1)
    past = [await old.client.get(f"/orders/{order_id}", params={"as_of_version": n}) for n in versions]
    assert [p.json() for p in past] == [order_as_of(order_id, n) for n in versions]
    assert past[-1].json() == answers["GET /orders/{id}"]

    view = await old.client.get(f"/sagas/{order_id}")
    assert view.status_code == 200
    body, expected = view.json(), answers["GET /sagas/{id}"]
    assert {k: v for k, v in body.items() if k != "events"} == {k: v for k, v in expected.items() if k != "events"}
    assert len(body["events"]) == len(expected["events"])
    for shown, was in zip(body["events"], expected["events"]):
        assert {k: v for k, v in shown.items() if k != "data"} == {k: v for k, v in was.items() if k != "data"}
        assert shown["data"] == reveal(as_the_contract_reads_it(was["type"], 1, was["data"]), {})
        if shown["type"] == SagaStepRequested.TYPE:  # v2: names the command, copies nothing
            assert "command" not in shown["data"]
            assert (shown["data"]["command_type"], shown["data"]["command_id"]) == (
                was["data"]["command"]["type"],
                was["data"]["command"]["command_id"],
            )

    for answer in (order, events, *past, view):
        assert token not in answer.text


async def saga_events_in_db(dsn: str, order_id: str) -> list[asyncpg.Record]:
    return await fetch(
        dsn,
        "SELECT version, type, schema_version FROM events WHERE stream_id = $1 ORDER BY version",
        saga.saga_stream_id(order_id),
    )


async def test_an_old_confirmed_order_goes_on_to_delivered(old: OldDatabase, stack: LocalStack) -> None:
    order_id = v1.expected()["journeys"]["confirmed"][0]
    shipment_id = derived_id(order_id, "shipment")
    old_saga_version = recorded(order_id)["GET /sagas/{id}"]["version"]

    await publish_fact(
        stack,
        ShipmentDispatched(order_id=order_id, shipment_id=shipment_id),
        stream_id=shipment_id,
        version=2,
        source=SHIPPING_SOURCE,
    )
    await reaches(old.client, f"/orders/{order_id}", timeout_s=STEP_S, status="SHIPPED", version=3)
    await publish_fact(
        stack,
        ShipmentDelivered(order_id=order_id, shipment_id=shipment_id),
        stream_id=shipment_id,
        version=3,
        source=SHIPPING_SOURCE,
    )
    delivered = await reaches(old.client, f"/orders/{order_id}", timeout_s=STEP_S, status="DELIVERED", version=4)

    assert {k: v for k, v in delivered.items() if k not in ("status", "version")} == {
        k: v for k, v in recorded(order_id)["GET /orders/{id}"].items() if k not in ("status", "version")
    }
    events = (await old.client.get(f"/orders/{order_id}/events")).json()
    assert events[:2] == at_current_versions(recorded(order_id)["GET /orders/{id}/events"])
    assert [(e["type"], e["version"]) for e in events[2:]] == [("order.shipped", 3), ("order.delivered", 4)]
    # The saga went on exactly as a delivered journey of the previous code did.
    view = await reaches(old.client, f"/sagas/{order_id}", timeout_s=STEP_S, completed=True)
    a_v1_delivery = recorded(v1.expected()["journeys"]["delivered"][0])["GET /sagas/{id}"]
    assert view["history"] == a_v1_delivery["history"] and view["step"] == "completed"
    rows = await saga_events_in_db(old.dsn, order_id)
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > old_saga_version
    assert all(r["schema_version"] == 1 for r in rows)


async def test_an_old_confirmed_order_is_cancelled_and_refunded(old: OldDatabase, stack: LocalStack) -> None:
    order_id = v1.expected()["journeys"]["confirmed"][1]
    shipment_id, payment_id = derived_id(order_id, "shipment"), derived_id(order_id, "payment")
    old_saga_version = recorded(order_id)["GET /sagas/{id}"]["version"]
    total = recorded(order_id)["GET /orders/{id}"]["total_cents"]
    currency = recorded(order_id)["GET /orders/{id}"]["currency"]

    cancel = await old.client.post(f"/orders/{order_id}/cancel")
    assert cancel.status_code == 202, cancel.text
    assert cancel.json() == {"order_id": order_id, "status": "CONFIRMED", "version": 2, "saga_step": "compensating"}
    seen = await read_topic(
        stack.kafka_bootstrap,
        SHIPPING_COMMANDS,
        timeout_s=STEP_S,
        until=lambda s: any(m.value.get("correlationid") == order_id for m in s),
    )
    [cancel_shipment] = {m.value["id"]: m.value for m in seen if m.value.get("correlationid") == order_id}.values()
    assert cancel_shipment["type"] == "shipment.cancel" and cancel_shipment["subject"] == shipment_id
    # Its deterministic id is the saga version of the step fact, counted after the old facts.
    view = (await old.client.get(f"/sagas/{order_id}")).json()
    [step] = [e for e in view["events"] if e["type"] == SagaStepRequested.TYPE and e["version"] > old_saga_version]
    assert (
        cancel_shipment["id"] == step["data"]["command_id"] == derived_id(order_id, f"saga-command:{step['version']}")
    )

    await publish_fact(
        stack,
        ShipmentCancelled(order_id=order_id, shipment_id=shipment_id, reason="cancelled_by_customer"),
        stream_id=shipment_id,
        version=2,
        source=SHIPPING_SOURCE,
    )
    refunding = await reaches(old.client, f"/sagas/{order_id}", timeout_s=STEP_S, awaiting=["payment.refund"])
    # The restored saga got its deadline index row, which follows the saga like any other's.
    [index] = await fetch(old.dsn, "SELECT deadline, saga_version FROM saga_deadlines WHERE order_id = $1", order_id)
    assert index["saga_version"] == refunding["version"] and index["deadline"] is not None
    assert index["deadline"] == datetime.fromisoformat(refunding["deadline"])
    # The payment service answers as the previous code wrote its facts (v1: flat amount).
    await publish_v1_fact(
        stack,
        PAYMENT_EVENTS,
        "payment.refunded",
        payment_id,
        3,
        {
            "payment_id": payment_id,
            "order_id": order_id,
            "amount_cents": total,
            "currency": currency,
            "reason": "cancelled_by_customer",
        },
        source="/services/payment",
    )
    cancelled = await reaches(old.client, f"/orders/{order_id}", timeout_s=STEP_S, status="CANCELLED")

    assert cancelled["reason"] == "cancelled_by_customer" and cancelled["version"] == 3
    view = await reaches(old.client, f"/sagas/{order_id}", timeout_s=STEP_S, completed=True, awaiting=[])
    a_v1_cancel = recorded(v1.expected()["journeys"]["cancelled_after_confirmed"][0])["GET /sagas/{id}"]
    assert view["history"] == a_v1_cancel["history"] and view["step"] == "compensated"
    assert view["payment_status"] == "REFUNDED" and view["shipment_status"] == "CANCELLED"
    refunded = [e for e in view["events"] if e["data"].get("reply_type") == "payment.refunded"]
    assert refunded[0]["data"]["amount_cents"] == total
    rows = await saga_events_in_db(old.dsn, order_id)
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    new_steps = [r for r in rows if r["version"] > old_saga_version and r["type"] == SagaStepRequested.TYPE]
    old_steps = [r for r in rows if r["version"] <= old_saga_version and r["type"] == SagaStepRequested.TYPE]
    assert len(new_steps) == 2 and all(r["schema_version"] == 2 for r in new_steps)
    assert old_steps and all(r["schema_version"] == 1 for r in old_steps)  # never rewritten

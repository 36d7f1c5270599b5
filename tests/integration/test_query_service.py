"""The query service against the real Kafka and PostgreSQL: views, pagination, read-your-writes,
SSE with resume, poison facts, and rebuild-by-replay giving the same tables.

The event topics are shared by the whole test session, so every test uses its own order ids
(and customer ids / currencies) and only looks at those.
"""

from __future__ import annotations

import asyncio
import base64
import random
import string
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from infra.stack import LocalStack, free_port
from services.query.api import OrderSummary
from services.query.projection import fold
from shared.contract import ORDER_EVENTS, OrderRejected, PaymentDeclined, PaymentFact, ShipmentFact, dlq_topic
from tests.auth_support import acting
from tests.integration.kafka_support import produce, read_topic, wait_for
from tests.integration.query_support import Query, query_service, view_tables
from tests.unit.query.journeys import Journey, Received, cancelled_after_capture, declined, happy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def query(stack: LocalStack) -> AsyncIterator[Query]:
    async with query_service(stack, "query", sse_keepalive_s=0.5, sse_poll_s=5.0) as running_query:
        yield running_query


def expected_summary(envs: list[Received]) -> dict[str, Any]:
    [view] = fold(envs).values()
    return OrderSummary.of(view).model_dump(mode="json")  # as the API renders it


# ---------------------------------------------------------------- views


async def test_facts_arriving_out_of_order_across_topics_converge_and_duplicates_change_nothing(query: Query) -> None:
    j = happy(customer_id=f"cust-{uuid.uuid4().hex[:8]}")
    shipping = [e for e in j.facts if isinstance(e.data, ShipmentFact)]
    payment = [e for e in j.facts if isinstance(e.data, PaymentFact)]
    order = [e for e in j.facts if e not in shipping + payment]
    # The shipment's and the payment's facts land before the order is even placed, twice over.
    await query.publish(shipping + payment + shipping[:1] + order + payment)
    # Eventually consistent: each topic's partition is consumed on its own, so wait for the
    # whole summary (a bounded wait), not for one topic's part of it.
    expected = expected_summary(j.facts)
    view = await query.order_when(j.order_id, lambda v: v == expected)
    assert view == expected
    assert view["status"] == "DELIVERED" and view["payment_status"] == "CAPTURED"
    metrics = (await query.client.get("/metrics")).text
    written = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("consumer_one_statement_batches_total") and 'outcome="written"' in line
    ]
    assert sum(written) > 0, "the views' batches are written in one statement (claim and views together)"

    timeline = (await query.client.get(f"/orders/{j.order_id}/timeline")).json()
    assert [e["id"] for e in timeline["events"]] == [e.id for e in j.facts]  # causal = recorded order
    first = timeline["events"][0]
    assert set(first) == {"id", "type", "source", "subject", "time", "sequence", "causationid", "correlationid", "data"}
    assert (first["type"], first["source"], first["sequence"]) == ("order.placed", "/services/order", 1)


async def test_unknown_orders_are_404_and_facts_before_the_order_stream_do_not_make_it_known(query: Query) -> None:
    for unknown in (
        await query.client.get(f"/orders/{uuid.uuid4()}"),
        await query.client.get(f"/orders/{uuid.uuid4()}/timeline"),
    ):
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "order_not_found" and unknown.json()["message"]
    # An id PostgreSQL cannot even store (NUL) is refused by the kernel's input guard, never a 500.
    assert (await query.client.get("/orders/a%00b")).status_code == 422
    assert (await query.client.get("/orders/a%00b/timeline")).status_code == 422
    j = happy()
    await query.publish([j.facts[2]])  # shipment.scheduled only

    async def on_timeline() -> bool:
        return (await query.client.get(f"/orders/{j.order_id}/timeline")).status_code == 200

    await wait_for(on_timeline)
    early = await query.client.get(f"/orders/{j.order_id}")
    assert early.status_code == 404 and early.json()["code"] == "order_not_found"


async def test_orders_by_customer_paginate_newest_first_with_an_opaque_cursor(query: Query) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    journeys = [Journey(customer_id=customer) for _ in range(5)]
    for n, j in enumerate(journeys):
        j.clock = j.clock.replace(minute=n)
        j.placed()
    d = declined(customer_id=customer)
    d.clock = d.clock.replace(minute=30)
    d.facts.clear()
    d.versions.clear()
    d.placed()
    rejected_cause = d.payment(PaymentDeclined, reason="card_declined")
    d.order(OrderRejected, rejected_cause, reason="payment_declined:card_declined")
    await query.publish([e for j in journeys for e in j.facts] + d.facts)
    await query.order_when(d.order_id, lambda v: v["status"] == "REJECTED")
    for j in journeys:
        await query.order_when(j.order_id, lambda v: v["status"] == "PENDING")

    pages, cursor = [], None
    while True:
        params: dict[str, str | int] = {"customer_id": customer, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await query.client.get("/orders", params=params)).json()
        pages.append([o["order_id"] for o in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    newest_first = [d.order_id] + [j.order_id for j in reversed(journeys)]
    assert [o for p in pages for o in p] == newest_first

    pending = (await query.client.get("/orders", params={"customer_id": customer, "status": "PENDING"})).json()
    assert [o["order_id"] for o in pending["items"]] == newest_first[1:] and pending["next_cursor"] is None
    assert pending["items"][0]["customer_id"] == customer


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["yesterday", "x"]').decode()}, "cursor"),
        ({"status": "LOST"}, "status"),
        ({"customer_id": "a\x00b"}, "customer_id"),
    ],
)
async def test_bad_list_parameters_are_422_naming_the_field(query: Query, params: dict[str, Any], field: str) -> None:
    r = await query.client.get("/orders", params=params)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", field]


async def test_stats_count_by_status_and_revenue_is_captured_minus_refunded(query: Query) -> None:
    currency = "X" + "".join(random.choices(string.ascii_uppercase, k=2))  # valid ISO-4217 shape, only this test
    kept = happy(currency=currency, total_cents=1000)
    refunded = cancelled_after_capture(currency=currency, total_cents=300)
    await query.publish(kept.facts + refunded.facts)
    # Payments arrive on their own topic: wait for them too, not only for the orders' status.
    await query.order_when(
        refunded.order_id, lambda v: v["status"] == "CANCELLED" and v["payment_status"] == "REFUNDED"
    )
    await query.order_when(kept.order_id, lambda v: v["status"] == "DELIVERED" and v["payment_status"] == "CAPTURED")
    stats = (await query.client.get("/stats")).json()
    assert stats["revenue_by_currency"][currency] == {
        "captured_cents": 1300,
        "refunded_cents": 300,
        "revenue_cents": 1000,
    }
    assert stats["orders_total"] == sum(stats["orders_by_status"].values())
    assert stats["orders_by_status"]["DELIVERED"] >= 1 and stats["orders_by_status"]["CANCELLED"] >= 1
    assert stats["payments_by_status"]["REFUNDED"] >= 1 and stats["shipments_by_status"]["CANCELLED"] >= 1


# ---------------------------------------------------------------- read your writes


async def test_min_version_waits_for_the_view_then_answers(query: Query) -> None:
    j = happy()
    await query.publish(j.facts[:1])
    r = await query.client.get(f"/orders/{j.order_id}", params={"min_version": 1, "wait_s": 30})
    assert r.status_code == 200 and r.json()["version"] == 1

    started = time.monotonic()
    waiting = asyncio.create_task(query.client.get(f"/orders/{j.order_id}", params={"min_version": 2, "wait_s": 30}))
    await asyncio.sleep(0)  # let the request start waiting before version 2 exists
    assert not waiting.done()
    await query.publish(j.facts[1:5])  # ..., order.confirmed (version 2)
    r = await waiting
    assert r.status_code == 200
    assert (r.json()["version"], r.json()["status"]) == (2, "CONFIRMED")
    assert time.monotonic() - started < 30


async def test_min_version_not_reached_in_time_is_a_clear_504(query: Query) -> None:
    j = happy()
    await query.publish(j.facts[:1])
    await query.order_when(j.order_id, lambda v: v["version"] == 1)
    started = time.monotonic()
    r = await query.client.get(f"/orders/{j.order_id}", params={"min_version": 3, "wait_s": 0.5})
    assert time.monotonic() - started >= 0.5
    assert r.status_code == 504 and r.headers["retry-after"] == "1"
    body = r.json()
    assert (body["code"], body["wanted_version"], body["current_version"]) == ("view_behind", 3, 1)
    unknown = await query.client.get(f"/orders/{uuid.uuid4()}", params={"min_version": 1, "wait_s": 0.1})
    assert unknown.status_code == 504 and unknown.json()["current_version"] == 0
    too_long = await query.client.get(f"/orders/{j.order_id}", params={"min_version": 1, "wait_s": 3600})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["query", "wait_s"]


# ---------------------------------------------------------------- server-sent events


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The already-started app behind a real HTTP server (ASGITransport buffers whole bodies)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout_s=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def read_sse(
    url: str, want: int, headers: dict[str, str] | None = None, kept_alive: asyncio.Event | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Read until `want` events arrived; return them and the number of keep-alive comments."""
    events: list[tuple[int, dict[str, Any]]] = []
    keepalives = 0
    async with httpx.AsyncClient(timeout=30, auth=acting()) as client:
        async with client.stream("GET", url, headers=headers or {}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            current: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(": keep-alive"):
                    keepalives += 1
                    if kept_alive is not None:
                        kept_alive.set()
                elif line.startswith("id: "):
                    current["id"] = line[4:]
                elif line.startswith("data: "):
                    current["data"] = line[6:]
                elif line == "" and "id" in current:
                    events.append((int(current["id"]), orjson.loads(current["data"])))
                    current = {}
                    if len(events) >= want:
                        break
    return events, keepalives


async def test_stream_sends_facts_as_they_arrive_and_resumes_after_last_event_id(query: Query) -> None:
    j = happy()
    async with served(query.app) as base:
        url = f"{base}/stream?order_id={j.order_id}"
        first = asyncio.create_task(read_sse(url, want=2))
        await wait_for(lambda: _sse_clients(query) >= 1, timeout_s=10)
        await query.publish(j.facts[:2])
        events, _ = await asyncio.wait_for(first, 60)
        # Two topics (order, payment), neither fact caused by the other: they may come either way.
        assert sorted(doc["id"] for _, doc in events) == sorted(e.id for e in j.facts[:2])
        placed = next(doc for _, doc in events if doc["id"] == j.facts[0].id)
        assert placed["type"] == "order.placed" and placed["specversion"] == "1.0"
        assert events[0][0] < events[1][0]

        # Disconnected: two more facts happen, then the client comes back with its last id.
        await query.publish(j.facts[2:4])
        await query.order_when(j.order_id, lambda v: v["payment_status"] == "CAPTURED")
        missed, _ = await asyncio.wait_for(read_sse(url, want=2, headers={"Last-Event-ID": str(events[-1][0])}), 60)
        assert sorted(doc["id"] for _, doc in missed) == sorted(e.id for e in j.facts[2:4])
        assert all(seq > events[-1][0] for seq, _ in missed)

        # Idle streams get keep-alive comments; a new fact still arrives on the same stream.
        kept_alive = asyncio.Event()
        third = asyncio.create_task(
            read_sse(url, want=1, headers={"Last-Event-ID": str(missed[-1][0])}, kept_alive=kept_alive)
        )
        await asyncio.wait_for(kept_alive.wait(), 10)  # idle: a keep-alive comment (every 0.5 s here)
        await query.publish(j.facts[4:5])
        live, keepalives = await asyncio.wait_for(third, 60)
        assert [doc["id"] for _, doc in live] == [j.facts[4].id]
        assert keepalives >= 1

    for headers, params in [
        ({"Last-Event-ID": "yesterday"}, {}),
        ({"Last-Event-ID": str(2**70)}, {}),
        ({}, {"last_event_id": str(2**70)}),
        ({}, {"order_id": "a\x00b"}),
    ]:
        bad = await query.client.get("/stream", headers=headers, params=params)
        assert bad.status_code == 422, (headers, params)


def _sse_clients(query: Query) -> float:
    from services.query.metrics import SSE_CLIENTS

    return SSE_CLIENTS._value.get()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- poison


async def test_a_fact_naming_no_order_goes_to_the_dlq_and_the_next_fact_is_applied(query: Query) -> None:
    orphan_id = str(uuid.uuid4())
    orphan = orjson.dumps(
        {  # as an outside producer would write it: no order_id in its data
            "specversion": "1.0",
            "id": orphan_id,
            "source": "/test",
            "type": "order.placed",
            "subject": "?",
            "time": happy().clock.isoformat(),
            "correlationid": "",
            "causationid": "",
            "sequence": "1",
            "schemaversion": "1",
            "data": {"customer_id": "nobody"},
        }
    )
    j = happy()
    await produce(query.bootstrap, ORDER_EVENTS, [("?", orphan)])
    await query.publish(j.facts[:1])
    await query.order_when(j.order_id, lambda v: v["status"] == "PENDING")

    def has_orphan(seen: list[Any]) -> bool:
        return any(s.value.get("id") == orphan_id for s in seen)  # a dead letter keeps the original's id

    dead = await read_topic(query.bootstrap, dlq_topic(ORDER_EVENTS), until=has_orphan, timeout_s=60)
    assert has_orphan(dead)


# ---------------------------------------------------------------- rebuild


async def test_rebuild_replays_into_fresh_tables_equal_to_the_incremental_ones_and_switches(query: Query) -> None:
    j = cancelled_after_capture()
    later = happy()
    await query.publish(j.facts)
    await query.order_when(j.order_id, lambda v: v["status"] == "CANCELLED")
    await query.caught_up()
    [before] = (g for g in (await query.client.get("/admin/generations")).json() if g["state"] == "current")
    incremental = await view_tables(query.dsn, before["generation"])
    assert any(row[0] == j.order_id for row in incremental["orders"])

    both = await asyncio.gather(query.client.post("/admin/rebuild"), query.client.post("/admin/rebuild"))
    assert sorted(r.status_code for r in both) == [202, 409], "one rebuild at a time"
    started, refused = sorted(both, key=lambda r: r.status_code)
    rebuild = started.json()
    assert (refused.json()["code"], refused.json()["rebuild_id"]) == ("rebuild_in_progress", rebuild["rebuild_id"])
    assert started.headers["location"] == f"/admin/rebuild/{rebuild['rebuild_id']}"
    assert rebuild["generation"] == before["generation"] + 1 and rebuild["state"] == "building"
    assert rebuild["target_total"] >= len(j.facts)
    # The old views keep serving meanwhile.
    assert (await query.client.get(f"/orders/{j.order_id}")).json()["status"] == "CANCELLED"

    async def switched() -> bool:
        body = (await query.client.get(f"/admin/rebuild/{rebuild['rebuild_id']}")).json()
        return bool(body["done"])

    await wait_for(switched, timeout_s=120)
    status = (await query.client.get(f"/admin/rebuild/{rebuild['rebuild_id']}")).json()
    assert (status["state"], status["progress"]) == ("current", 1.0)
    assert (await query.client.get("/stats")).json()["generation"] == rebuild["generation"]
    assert await view_tables(query.dsn, rebuild["generation"]) == incremental
    assert await view_tables(query.dsn, before["generation"]) == incremental  # retired, kept for comparison
    unknown = await query.client.get(f"/admin/rebuild/{uuid.uuid4()}")
    assert unknown.status_code == 404 and unknown.json()["code"] == "rebuild_not_found"

    # The rebuilt generation's consumer is now the live one.
    await query.publish(later.facts[:1])
    await query.order_when(later.order_id, lambda v: v["status"] == "PENDING")
    # And the SSE feed holds each fact once, whichever generation applied it first.
    conn = await asyncpg.connect(query.dsn)
    try:
        ids = [
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM fact_feed WHERE order_id = $1", j.order_id)
        ]
    finally:
        await conn.close()
    assert sorted(ids) == sorted(e.id for e in j.facts)


async def test_health_metrics_and_openapi_come_from_the_kernel(query: Query) -> None:
    health = await query.client.get("/health")
    assert health.status_code == 200 and health.json()["database"] == "up"
    assert "query_facts_applied_total" in (await query.client.get("/metrics")).text
    assert "/admin/rebuild" in (await query.client.get("/openapi.json")).json()["paths"]
    assert (await query.client.get("/docs")).status_code == 200

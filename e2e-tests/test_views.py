"""Reading the facts back: time travel on the write side, and the query service's read models
(read-your-writes, timeline, stats, pagination, SSE, rebuild) - all fed only from Kafka."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client import (
    Json,
    SystemClient,
    eventually,
    expect,
    new_customer,
    order_body,
    total_of,
)
from streams import SseEvent, sse

HAPPY_TYPES = [
    "order.placed",
    "payment.authorized",
    "shipment.scheduled",
    "payment.captured",
    "order.confirmed",
    "shipment.dispatched",
    "order.shipped",
    "shipment.delivered",
    "order.delivered",
]


async def test_time_travel_with_as_of_version(client: SystemClient) -> None:
    body = order_body(new_customer("travel"))
    placed, _ = await client.place_and_confirm(body)
    order_id = placed["order_id"]
    final = await client.ship_and_deliver(order_id)
    expected = {1: "PENDING", 2: "CONFIRMED", 3: "SHIPPED", 4: "DELIVERED"}
    for version, status in expected.items():
        past = expect(await client.order(order_id, as_of_version=version), 200)
        assert (past["status"], past["version"]) == (status, version)
        assert past["items"] == body["items"] and past["total_cents"] == total_of(body)
    first = expect(await client.order(order_id, as_of_version=1), 200)
    assert "payment_id" not in first and "shipment_id" not in first, "no knowledge of the future at version 1"
    assert expect(await client.order(order_id, as_of_version=4), 200) == final
    resp = await client.order(order_id, as_of_version=5)
    assert resp.status_code == 404, f"beyond the current version: {resp.status_code} {resp.text}"
    assert expect(await client.order(order_id), 200) == final, "reading the past changed nothing"


async def test_read_your_writes_with_min_version(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("ryw")))
    order_id = placed["order_id"]
    # Straight after the 202: min_version=1 waits for the view instead of answering 404.
    view = expect(await client.view(order_id, min_version=1, wait_s=20), 200)
    assert view["order_id"] == order_id and view["version"] >= 1
    order = await client.wait_order(order_id, {"CONFIRMED"})
    view = expect(await client.view(order_id, min_version=order["version"], wait_s=20), 200)
    assert view["version"] >= order["version"] and view["status"] == "CONFIRMED"
    # A version the order will never reach: a bounded wait, then 504 saying how far the view is.
    resp = await client.view(order_id, min_version=99, wait_s=0.5)
    assert resp.status_code == 504, resp.text
    behind = resp.json()
    assert behind["wanted_version"] == 99 and behind["current_version"] == order["version"]


def _assert_causal(events: list[Json]) -> None:
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "a fact appears twice in the timeline"
    position = {e["id"]: i for i, e in enumerate(events)}
    last_seq: dict[str, int] = {}
    for i, e in enumerate(events):
        seq = int(e["sequence"])
        assert seq > last_seq.get(e["subject"], 0), f"{e['type']} before an earlier fact of {e['subject']}"
        last_seq[e["subject"]] = seq
        cause = position.get(e["causationid"])
        assert cause is None or cause < i, f"{e['type']} listed before its cause"


async def test_timeline_is_every_fact_in_causal_order(client: SystemClient) -> None:
    placed, confirmed = await client.place_and_confirm(order_body(new_customer("timeline")))
    order_id = placed["order_id"]
    await client.ship_and_deliver(order_id)
    timeline = await client.wait_timeline(order_id, HAPPY_TYPES)
    events = timeline["events"]
    assert timeline["order_id"] == order_id
    # This journey is one causal chain, so causal order is exactly this order.
    assert [e["type"] for e in events] == HAPPY_TYPES
    _assert_causal(events)
    assert {e["source"] for e in events} == {"/services/order", "/services/payment", "/services/shipping"}
    assert {e["correlationid"] for e in events} == {order_id}
    subjects = {e["type"].split(".")[0]: e["subject"] for e in events}
    assert subjects == {"order": order_id, "payment": confirmed["payment_id"], "shipment": confirmed["shipment_id"]}
    # Write-side facts and timeline facts are the same facts (same ids).
    write_ids = {str(e["event_id"]) for e in expect(await client.order_events(order_id), 200)}
    assert write_ids == {e["id"] for e in events if e["type"].startswith("order.")}


async def test_timeline_of_a_compensated_order(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("timeline-aq"), country="AQ"))
    order_id = placed["order_id"]
    await client.wait_order(order_id, {"CANCELLED"})
    wanted = ["order.placed", "payment.authorized", "shipment.failed", "payment.voided", "order.cancelled"]
    timeline = await client.wait_timeline(order_id, wanted)
    assert [e["type"] for e in timeline["events"]] == wanted
    _assert_causal(timeline["events"])


async def test_stats_count_our_orders(client: SystemClient) -> None:
    """Counts move by our orders. Other orders may move too, so: terminal counts grow by at least
    ours; revenue in XTS (the ISO 4217 code reserved for testing, used only here) by exactly ours."""
    before = await client.stats()
    xts_before = before["revenue_by_currency"].get("XTS", {"captured_cents": 0, "refunded_cents": 0})
    customer = new_customer("stats")
    delivered_body = order_body(customer, currency="XTS", items=[{"sku": "S", "quantity": 3, "unit_price_cents": 1111}])
    refunded_body = order_body(customer, currency="XTS", items=[{"sku": "S", "quantity": 1, "unit_price_cents": 777}])
    delivered, _ = await client.place_and_confirm(delivered_body)
    await client.ship_and_deliver(delivered["order_id"])
    refunded, _ = await client.place_and_confirm(refunded_body)
    expect(await client.cancel(refunded["order_id"]), 202)
    await client.wait_order(refunded["order_id"], {"CANCELLED"})
    rejected = await client.place_ok(order_body(customer, currency="XTS", payment_token="tok_decline"))
    await client.wait_order(rejected["order_id"], {"REJECTED"})
    for order_id in (delivered["order_id"], refunded["order_id"], rejected["order_id"]):
        await client.wait_view_matches_write_side(order_id)
    await client.wait_view(refunded["order_id"], lambda v: v["payment_status"] == "REFUNDED")

    after = await client.stats()
    assert after["orders_total"] - before["orders_total"] >= 3
    assert after["orders_total"] == sum(after["orders_by_status"].values())
    for status in ("DELIVERED", "CANCELLED", "REJECTED"):
        assert after["orders_by_status"][status] - before["orders_by_status"][status] >= 1, status
    assert after["payments_by_status"]["DECLINED"] - before["payments_by_status"]["DECLINED"] >= 1
    assert after["payments_by_status"]["REFUNDED"] - before["payments_by_status"]["REFUNDED"] >= 1
    assert after["shipments_by_status"]["DELIVERED"] - before["shipments_by_status"]["DELIVERED"] >= 1
    xts = after["revenue_by_currency"]["XTS"]
    assert xts["captured_cents"] - xts_before["captured_cents"] == 3333 + 777
    assert xts["refunded_cents"] - xts_before["refunded_cents"] == 777
    assert xts["revenue_cents"] == xts["captured_cents"] - xts["refunded_cents"]


async def test_pagination_sees_every_order_once_in_a_stable_order(client: SystemClient) -> None:
    customer = new_customer("pages")
    placed: list[str] = []
    for i in range(7):
        token = "tok_decline" if i in (1, 4) else "tok_visa"
        placed.append((await client.place_ok(order_body(customer, payment_token=token)))["order_id"])
    for order_id in placed:
        await client.wait_order(order_id, {"CONFIRMED", "REJECTED"})
        await client.wait_view_matches_write_side(order_id)

    async def walk(**filters: Any) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(20):
            page = expect(await client.views(customer_id=customer, limit=2, cursor=cursor, **filters), 200)
            assert len(page["items"]) <= 2
            seen += [v["order_id"] for v in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("pagination does not end")

    first = await walk()
    assert sorted(first) == sorted(placed) and len(first) == len(set(first)) == 7, "each order exactly once"
    assert first == list(reversed(placed)), "newest first"
    assert await walk() == first, "the order is stable"
    everything = expect(await client.views(customer_id=customer, limit=200), 200)
    assert [v["order_id"] for v in everything["items"]] == first and everything["next_cursor"] is None
    assert all(v["customer_id"] == customer for v in everything["items"])
    rejected = await walk(status="REJECTED")
    assert rejected == [placed[4], placed[1]]


def has_types(*types: str) -> Callable[[list[SseEvent]], bool]:
    return lambda events: set(types) <= {e.json()["type"] for e in events}


def assert_causal_stream(events: list[SseEvent]) -> None:
    """The stream never shows an effect before its cause: each aggregate's facts in their order
    (sequence 1, 2, ...), and each fact after the fact its causationid names when that one is in
    the stream (e.g. order.confirmed after payment.captured, whichever topic reached the query
    service first). Facts caused by commands or requests have no such cause and may interleave."""
    docs = [e.json() for e in events]
    by_subject: dict[str, list[int]] = {}
    for d in docs:
        by_subject.setdefault(d["subject"], []).append(int(d["sequence"]))
    assert all(seqs == sorted(seqs) for seqs in by_subject.values()), by_subject
    position = {d["id"]: i for i, d in enumerate(docs)}
    assert len(position) == len(docs), "a fact was sent twice"
    for i, d in enumerate(docs):
        cause = position.get(d["causationid"])
        assert cause is None or cause < i, f"{d['type']} sent before its cause {docs[cause]['type']}"
        assert "causalgap" not in d, f"{d['type']} was sent without its cause: {d}"


def position_of(events: list[SseEvent], type_: str) -> int:
    return next(i for i, e in enumerate(events) if e.json()["type"] == type_)


async def test_sse_streams_facts_and_resumes_with_last_event_id(client: SystemClient) -> None:
    # 1. Connected first, then an order is placed: its facts arrive, each with an id.
    async with sse(client.endpoints, client.token("admin")) as stream:
        placed = await client.place_ok(order_body(new_customer("sse")))
        order_id = placed["order_id"]

        flow = ["order.placed", "payment.authorized", "shipment.scheduled", "payment.captured", "order.confirmed"]

        def all_of_ours(evs: list[SseEvent]) -> bool:
            return has_types(*flow)([e for e in evs if e.json().get("correlationid") == order_id])

        got = await stream.collect(all_of_ours, timeout=30)
    ours = [e for e in got if e.json().get("correlationid") == order_id]
    assert sorted(e.json()["type"] for e in ours) == sorted(flow)
    assert_causal_stream(ours)
    assert position_of(ours, "payment.captured") < position_of(ours, "order.confirmed"), "effect before cause"
    assert all(e.id is not None and e.id.isdigit() for e in ours)
    assert [int(e.id or 0) for e in ours] == sorted(int(e.id or 0) for e in ours), "ids increase"
    doc = ours[position_of(ours, "order.placed")].json()
    assert doc["specversion"] == "1.0" and doc["subject"] == order_id and doc["data"]["order_id"] == order_id
    last_seen = ours[-1].id

    # 2. More facts happen while nobody listens ...
    confirmed_order = await client.order_ok(order_id)
    expect(await client.dispatch(confirmed_order["shipment_id"]), 200)
    await client.wait_order(order_id, {"SHIPPED"})
    await client.wait_view(order_id, lambda v: v["status"] == "SHIPPED")

    # 3. ... and a reconnect with Last-Event-ID gets exactly those, filtered to the order.
    async with sse(client.endpoints, client.token("admin"), order_id=order_id, last_event_id=last_seen) as stream:
        resumed = await stream.collect(has_types("shipment.dispatched", "order.shipped"), timeout=30)
        extra = await stream.next(timeout=1.0)
    assert [e.json()["type"] for e in resumed] == ["shipment.dispatched", "order.shipped"], "cause, then effect"
    assert_causal_stream(resumed)
    assert extra is None, f"unexpected fact after resuming: {extra}"
    assert all(int(e.id or 0) > int(last_seen or 0) for e in resumed)

    # 4. A live, filtered stream: only this order's later facts.
    async with sse(client.endpoints, client.token("admin"), order_id=order_id) as stream:
        other = await client.place_ok(order_body(new_customer("sse-other")))  # noise that must not appear
        expect(await client.deliver(confirmed_order["shipment_id"]), 200)
        live = await stream.collect(has_types("shipment.delivered", "order.delivered"), timeout=30)
    assert [e.json()["type"] for e in live] == ["shipment.delivered", "order.delivered"], "cause, then effect"
    assert_causal_stream(live)
    assert all(e.json()["correlationid"] == order_id for e in live)
    await client.wait_order(other["order_id"], {"CONFIRMED"})


async def test_rebuild_gives_identical_views(client: SystemClient) -> None:
    customer = new_customer("rebuild")
    ids: list[str] = []
    placed, _ = await client.place_and_confirm(order_body(customer))
    await client.ship_and_deliver(placed["order_id"])
    ids.append(placed["order_id"])
    ids.append((await client.place_ok(order_body(customer, payment_token="tok_decline")))["order_id"])
    ids.append((await client.place_ok(order_body(customer, country="AQ")))["order_id"])
    await client.wait_order(ids[1], {"REJECTED"})
    await client.wait_order(ids[2], {"CANCELLED"})
    for order_id in ids:
        await client.wait_view_matches_write_side(order_id)
    await client.wait_view(ids[2], lambda v: v["payment_status"] == "VOIDED")

    async def snapshot() -> dict[str, Any]:
        return {
            "views": {i: expect(await client.view(i), 200) for i in ids},
            "timelines": {i: expect(await client.timeline(i), 200) for i in ids},
            "list": expect(await client.views(customer_id=customer, limit=50), 200),
        }

    before = await snapshot()
    rebuild_id = await _start_rebuild(client)

    async def done() -> Json | None:
        status = expect(await client.rebuild_status(rebuild_id), 200)
        return status if status["done"] else None

    status = await eventually(done, 180, what=f"rebuild {rebuild_id} done", max_interval=1.0)
    assert status["progress"] == 1.0 and status["applied_total"] == status["target_total"]
    assert (await client.stats())["generation"] >= status["generation"]
    after = await snapshot()
    assert after == before, "the rebuilt views differ from the incrementally built ones"


async def _start_rebuild(client: SystemClient) -> str:
    """POST /admin/rebuild; if one is already running (another client), wait for it first."""

    async def start() -> str | None:
        resp = await client.rebuild()
        if resp.status_code == 202:
            return str(resp.json()["rebuild_id"])
        body = expect(resp, 409)
        running = str(body["rebuild_id"])
        status = expect(await client.rebuild_status(running), 200)
        assert status["done"], f"rebuild {running} still running"
        return None

    return await eventually(start, 240, what="start a rebuild", max_interval=1.0)

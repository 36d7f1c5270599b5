"""Event store against the real PostgreSQL: optimistic concurrency, immutability, typed reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra.stack import LocalStack
from shared.contract import (
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    CancelShipment,
    CapturePayment,
    MessageFormatError,
    Money,
    PaymentCaptured,
    PaymentFact,
    RefundPayment,
    SagaAnomalyDetected,
    VoidPayment,
    decode,
)
from shared.db import create_pool, migrate
from shared.eventstore import ConcurrencyConflict, EventStore, IndexRows, StreamAppend
from shared.ids import caused_by

pytestmark = pytest.mark.integration

CAPTURE, CAPTURED, REFUND = CapturePayment.TYPE, PaymentCaptured.TYPE, RefundPayment.TYPE
V1_PAYMENT_FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "v1" / "payment_events.jsonl"


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database, max_size=20)
    await migrate(pool)
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


def happened(n: int) -> PaymentCaptured:
    """A published fact whose amount tells the facts of a test apart."""
    return PaymentCaptured(order_id="o", payment_id="p", amount=Money(amount_cents=n, currency="EUR"))


def private(note: str = "x") -> SagaAnomalyDetected:
    """A fact that never leaves its service's log (its class has no topic)."""
    return SagaAnomalyDetected(order_id="o", anomaly=note)


def amounts(facts: list[Any]) -> list[int]:
    return [f.data.amount.amount_cents for f in facts]


async def test_racing_writers_on_one_version_exactly_one_wins(store: EventStore) -> None:
    await store.append("s", 0, [happened(0)])

    async def writer(i: int) -> str:
        try:
            await store.append("s", 1, [happened(i)])
            return "won"
        except ConcurrencyConflict:
            return "conflict"

    outcomes = await asyncio.gather(*(writer(i) for i in range(12)))
    assert outcomes.count("won") == 1
    assert outcomes.count("conflict") == 11
    assert [e.sequence for e in await store.read("s")] == [1, 2]


async def test_appending_past_the_head_is_a_conflict_not_a_gap(store: EventStore) -> None:
    await store.append("s", 0, [happened(1)])
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", 3, [happened(2)])
    assert [e.sequence for e in await store.read("s")] == [1]


async def test_a_conflict_appends_nothing_and_queues_nothing(store: EventStore) -> None:
    await store.append("s", 0, [happened(1), happened(2)])
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", 1, [happened(3)])
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 2


async def test_read_up_to_a_version_replays_the_past_as_typed_facts(store: EventStore) -> None:
    await store.append("s", 0, [happened(i) for i in range(1, 6)])
    past = await store.read("s", up_to_version=3)
    assert amounts(past) == [1, 2, 3]
    assert all(isinstance(e.data, PaymentCaptured) for e in past)
    assert await store.read("missing") == []


async def test_a_fact_is_stored_as_its_current_schema_version_and_read_back_equal(store: EventStore) -> None:
    [written] = await store.append("s", 0, [happened(7)])
    [read] = await store.read("s")
    assert read == written
    async with store.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT type, schema_version, data FROM events")
    assert (row["type"], row["schema_version"]) == (PaymentCaptured.TYPE, PaymentCaptured.VERSION)
    assert row["data"] == {"order_id": "o", "payment_id": "p", "amount": {"amount_cents": 7, "currency": "EUR"}}


async def test_facts_without_a_topic_stay_private(store: EventStore) -> None:
    await store.append("s", 0, [private(), happened(1)])
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1


async def test_causal_ids_come_from_the_handled_message(store: EventStore) -> None:
    with caused_by("order-9", "msg-3"):
        [event] = await store.append("s", 0, [happened(1)])
    assert (event.correlation_id, event.causation_id) == ("order-9", "msg-3")
    [stored] = await store.read("s")
    assert (stored.correlation_id, stored.causation_id) == ("order-9", "msg-3")


async def insert_as_stored(store: EventStore, rows: list[dict[str, Any]]) -> None:
    """Rows of the event log exactly as the previous code wrote them (no codec involved)."""
    async with store.pool.acquire() as conn:
        await conn.executemany(
            """INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                                   correlation_id, causation_id, data)
               VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb)""",
            [
                (
                    r["event_id"],
                    r["stream_id"],
                    r["version"],
                    r["type"],
                    r["schema_version"],
                    datetime.fromisoformat(r["occurred_at"]),
                    r["correlation_id"],
                    r["causation_id"],
                    json.dumps(r["data"]),
                )
                for r in rows
            ],
        )


# v2: the amount as one Money value; v3 of the facts that start a payment: + customer_id.
CURRENT_PAYMENT_VERSION = {
    "payment.authorized": 3,
    "payment.declined": 3,
    "payment.captured": 2,
    "payment.voided": 2,
    "payment.refunded": 2,
}


async def test_v1_payment_facts_stored_by_the_previous_code_are_read_as_v2_structs(store: EventStore) -> None:
    rows = [json.loads(line) for line in V1_PAYMENT_FACTS.read_text().splitlines() if line.strip()]
    assert rows and all(r["schema_version"] == 1 and "amount_cents" in r["data"] for r in rows)
    await insert_as_stored(store, rows)
    streams = await store.read_many(sorted({r["stream_id"] for r in rows}))
    read = {e.id: e for stream in streams.values() for e in stream}
    assert len(read) == len(rows)
    for row in rows:
        fact = read[row["event_id"]]
        assert isinstance(fact.data, PaymentFact) and fact.data.TYPE == row["type"]
        assert fact.data.VERSION == CURRENT_PAYMENT_VERSION[row["type"]]
        assert fact.data.amount == Money(amount_cents=row["data"]["amount_cents"], currency=row["data"]["currency"])
        assert (fact.data.order_id, fact.data.payment_id) == (row["data"]["order_id"], row["data"]["payment_id"])
        assert (fact.subject, fact.sequence, fact.correlation_id, fact.causation_id) == (
            row["stream_id"],
            row["version"],
            row["correlation_id"],
            row["causation_id"],
        )
    one = rows[0]["stream_id"]
    assert await store.read(one) == streams[one]
    async with store.pool.acquire() as conn:
        stored = await conn.fetch("SELECT schema_version, data FROM events")
    assert all(
        r["schema_version"] == 1 and "amount_cents" in r["data"] and "amount" not in r["data"] for r in stored
    ), "the stored facts themselves are never rewritten"
    # A stream read in the current versions keeps being appended to in them, after its v1 facts.
    [later] = await store.append(one, len(streams[one]), [happened(1)])
    again = await store.read(one)
    assert [e.data.VERSION for e in again] == [CURRENT_PAYMENT_VERSION[e.type] for e in again]
    assert len(again) == later.sequence


async def test_a_stored_fact_that_no_longer_keeps_the_contract_is_an_error_not_a_silent_default(
    store: EventStore,
) -> None:
    await insert_as_stored(
        store,
        [
            {
                "event_id": "00000000-0000-0000-0000-000000000001",
                "stream_id": "s",
                "version": 1,
                "type": PaymentCaptured.TYPE,
                "schema_version": 1,
                "occurred_at": "2026-11-30T00:04:33+00:00",
                "correlation_id": "c",
                "causation_id": "c",
                "data": {"order_id": "o", "payment_id": "p", "currency": "EUR"},
            }
        ],
    )
    with pytest.raises(MessageFormatError, match="does not match its schema"):
        await store.read("s")


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events"],
)
async def test_the_log_refuses_mutation_for_the_app_and_even_for_a_superuser(
    store: EventStore, stack: LocalStack, fresh_database: str, statement: str
) -> None:
    await store.append("s", 0, [happened(1)])
    async with store.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    admin = await asyncpg.connect(stack.pg_admin_dsn(fresh_database.rsplit("/", 1)[1]))
    try:
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await admin.execute(statement)
        assert await admin.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await admin.close()


async def test_after_commit_callbacks_run_only_when_the_transaction_commits(store: EventStore) -> None:
    ran: list[str] = []
    async with store.transaction() as uow:
        await uow.append("s", 0, [happened(1)])
        uow.after_commit(lambda: ran.append("committed"))
        assert ran == []
    assert ran == ["committed"]
    with pytest.raises(RuntimeError):
        async with store.transaction() as uow:
            uow.after_commit(lambda: ran.append("rolled back"))
            raise RuntimeError("abort")
    assert ran == ["committed"]


async def test_republish_queues_the_recorded_fact_unchanged(store: EventStore) -> None:
    [event] = await store.append("s", 0, [happened(1)])
    async with store.transaction() as uow:
        await uow.republish(event)
        [kept_private] = await store.append("private", 0, [private()], conn=uow.conn)
        with pytest.raises(ValueError, match="never published"):
            await uow.republish(kept_private)
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT topic, value FROM outbox ORDER BY id")
    values = [bytes(r["value"]) for r in rows]
    assert len(values) == 2 and values[0] == values[1], "the same CloudEvent, same id, queued twice"
    assert {r["topic"] for r in rows} == {PAYMENT_EVENTS}


async def _outbox(store: EventStore) -> list[tuple[str, str]]:
    """(key, CloudEvents type) of the outbox rows, in publication order."""
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT key, value FROM outbox ORDER BY id")
    return [(r["key"], decode(bytes(r["value"])).type) for r in rows]


async def test_queued_commands_keep_their_place_among_appended_facts_on_their_own_topics(store: EventStore) -> None:
    async with store.transaction() as uow:
        await uow.send(CapturePayment(order_id="o", payment_id="a"))
        await uow.append("s", 0, [happened(1)])
        await uow.send(VoidPayment(order_id="o", payment_id="b", reason="r"))
        await uow.send(CancelShipment(order_id="o", shipment_id="c", reason="r"))
        await uow.append("s", 1, [happened(2)])
        await uow.send(RefundPayment(order_id="o", payment_id="d", reason="r"), command_id="cmd-4")
    assert await _outbox(store) == [
        ("a", CAPTURE),
        ("s", CAPTURED),
        ("b", VoidPayment.TYPE),
        ("c", CancelShipment.TYPE),
        ("s", CAPTURED),
        ("d", REFUND),
    ]
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT topic, value FROM outbox ORDER BY id")
    assert [r["topic"] for r in rows] == [
        PAYMENT_COMMANDS,
        PAYMENT_EVENTS,
        PAYMENT_COMMANDS,
        SHIPPING_COMMANDS,
        PAYMENT_EVENTS,
        PAYMENT_COMMANDS,
    ]
    refund = decode(bytes(rows[-1]["value"]))
    assert (refund.id, refund.subject, refund.sequence, refund.is_command) == ("cmd-4", "d", 0, True)
    assert refund.data == RefundPayment(order_id="o", payment_id="d", reason="r")


async def test_a_failed_savepoint_undoes_its_facts_messages_and_callbacks_only(store: EventStore) -> None:
    ran: list[str] = []
    async with store.transaction() as uow:
        await uow.send(CapturePayment(order_id="o", payment_id="a"))
        uow.after_commit(lambda: ran.append("kept"))
        with pytest.raises(RuntimeError):
            async with uow.savepoint():
                await uow.send(VoidPayment(order_id="o", payment_id="b", reason="undone"))
                await uow.append("s", 0, [happened(1)])
                await uow.send(VoidPayment(order_id="o", payment_id="c", reason="undone"))
                uow.after_commit(lambda: ran.append("undone"))
                raise RuntimeError("this attempt fails")
        async with uow.savepoint():
            await uow.send(RefundPayment(order_id="o", payment_id="d", reason="retried"))
    assert await _outbox(store) == [("a", CAPTURE), ("d", REFUND)]
    assert ran == ["kept"]
    assert await store.read("s") == []


async def test_read_many_returns_each_stream_in_version_order(store: EventStore) -> None:
    for n in range(1, 4):
        await store.append("b", n - 1, [happened(n)])
        await store.append("a", n - 1, [happened(10 + n)])
    streams = await store.read_many(["b", "missing", "a"])
    assert list(streams) == ["b", "missing", "a"]
    assert amounts(streams["b"]) == [1, 2, 3]
    assert amounts(streams["a"]) == [11, 12, 13]
    assert streams["missing"] == []
    async with store.transaction() as uow:
        assert (await uow.read_many(["a"]))["a"] == await store.read("a")


async def test_a_commit_that_queued_messages_rings_the_local_bell(store: EventStore) -> None:
    store.outbox_written.clear()
    async with store.transaction() as uow:
        await uow.append("private", 0, [private()])  # no topic: nothing to publish
    assert not store.outbox_written.is_set()
    with pytest.raises(RuntimeError):
        async with store.transaction() as uow:
            await uow.append("s", 0, [happened(1)])
            raise RuntimeError("rolled back")
    assert not store.outbox_written.is_set()
    async with store.transaction() as uow:
        await uow.append("s", 0, [happened(1)])
    assert store.outbox_written.is_set()


async def test_append_many_writes_several_streams_and_the_queue_in_one_statement_or_nothing(store: EventStore) -> None:
    await store.append("b", 0, [happened(1)])
    async with store.transaction() as uow:
        await uow.send(CapturePayment(order_id="o", payment_id="x"))
        a, empty, b = await uow.append_many(
            [
                StreamAppend("a", 0, [happened(1), happened(2)]),
                StreamAppend("c", 0, []),
                StreamAppend("b", 1, [happened(2)]),
            ]
        )
    assert ([e.sequence for e in a], empty, [e.sequence for e in b]) == ([1, 2], [], [2])
    assert await _outbox(store) == [
        ("b", CAPTURED),  # the first append, before the transaction
        ("x", CAPTURE),
        ("a", CAPTURED),
        ("a", CAPTURED),
        ("b", CAPTURED),
    ]
    async with store.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM outbox")
    with pytest.raises(ConcurrencyConflict):
        async with store.transaction() as uow:
            await uow.send(VoidPayment(order_id="o", payment_id="y", reason="lost"))
            await uow.append_many(
                [StreamAppend("a", 2, [happened(3)]), StreamAppend("b", 1, [happened(3)])]
            )  # b is at 2
    assert [e.sequence for e in await store.read("a")] == [1, 2], "one stale stream: nothing is appended"
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == before
    with pytest.raises(ValueError, match="once per statement"):
        await store.append_many([StreamAppend("d", 0, [happened(1)]), StreamAppend("d", 1, [happened(2)])])


async def test_index_rows_are_written_by_the_append_statement_only_when_it_appends(store: EventStore) -> None:
    async with store.pool.acquire() as conn:
        await conn.execute("CREATE TABLE thing_by_order (stream_id TEXT PRIMARY KEY, order_id TEXT NOT NULL)")
    async with store.transaction() as uow:
        await uow.append("thing-1", 0, [happened(1)], index=IndexRows("thing_by_order", [("thing-1", "o-1")]))
    async with store.transaction() as uow:  # a lost race: no facts, no row
        with pytest.raises(ConcurrencyConflict):
            await uow.append("thing-1", 0, [happened(2)], index=IndexRows("thing_by_order", [("thing-1", "o-2")]))
    async with store.pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch("SELECT stream_id, order_id FROM thing_by_order")] == [
            ("thing-1", "o-1")
        ]
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    async with store.transaction() as uow:
        with pytest.raises(ValueError):
            await uow.append("thing-2", 0, [happened(3)], index=IndexRows("thing_by_order; DROP TABLE x", []))

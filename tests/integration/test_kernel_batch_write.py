"""A consumer batch as one statement (shared/batch_write.py), against the real PostgreSQL: all of
its writes in one round trip, and nothing at all when any of its preconditions fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.batch_write import BatchPreconditionFailed, BatchWork, Claim, DeferredWrite
from shared.contract import PAYMENT_COMMANDS, PAYMENT_EVENTS, CapturePayment, Money, PaymentCaptured
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, IndexRows, Recorded, StreamAppend
from shared.ids import caused_by

pytestmark = pytest.mark.integration

OWN_DDL = [
    "CREATE TABLE IF NOT EXISTS lookups (stream_id TEXT PRIMARY KEY, order_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS marks (id TEXT PRIMARY KEY, seen INT NOT NULL DEFAULT 0)",
]
MARK = "UPDATE marks SET seen = seen + 1 WHERE id = ANY({}::text[]) RETURNING seen * 10 AS tens"


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database, max_size=5)
    await migrate(pool, OWN_DDL)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO marks (id) VALUES ('m1'), ('m2')")
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


def captured(n: int, stream: str = "p") -> PaymentCaptured:
    return PaymentCaptured(order_id="o", payment_id=stream, amount=Money(amount_cents=n, currency="EUR"))


def claim(*ids: str) -> Claim:
    return Claim("c", list(ids), ["t"], [0], [len(ids)])


async def everything(store: EventStore) -> dict[str, list[Any]]:
    """What the kernel's and the test's tables hold."""
    async with store.pool.acquire() as conn:
        return {
            "inbox": [r["message_id"] for r in await conn.fetch("SELECT message_id FROM inbox ORDER BY 1")],
            "positions": [
                tuple(r)
                for r in await conn.fetch("SELECT consumer, topic, partition, next_offset FROM consumer_positions")
            ],
            "events": [
                (r["stream_id"], r["version"], r["causation_id"])
                for r in await conn.fetch("SELECT stream_id, version, causation_id FROM events ORDER BY position")
            ],
            "outbox": [(r["topic"], r["key"]) for r in await conn.fetch("SELECT topic, key FROM outbox ORDER BY id")],
            "lookups": [tuple(r) for r in await conn.fetch("SELECT stream_id, order_id FROM lookups ORDER BY 1")],
            "marks": [tuple(r) for r in await conn.fetch("SELECT id, seen FROM marks ORDER BY 1")],
        }


async def _a_full_batch(work: BatchWork, p: str, q: str) -> tuple[list[Recorded], list[list[Recorded]], int]:
    """Facts on two streams from two messages, a command, a lookup row, a deferred own write."""
    with caused_by("o", work.claim.message_ids[0]):
        await work.send(CapturePayment(order_id="o", payment_id=p))
        first = await work.append(p, 0, [captured(1, p)], index=IndexRows("lookups", [(p, "o")]))
    with caused_by("o", work.claim.message_ids[1]):  # the next message follows on from the first's facts
        second = await work.append_many([StreamAppend(p, 1, [captured(2, p)]), StreamAppend(q, 0, [captured(3, q)])])
    work.expect(f"untouched-{p}", 0)
    marked = work.defer(DeferredWrite(MARK, (list(work.claim.message_ids),), rows=2, read="tens"))
    return first, second, marked


async def test_a_batch_is_one_statement_with_its_claim_facts_messages_lookups_and_own_rows(store: EventStore) -> None:
    statements: list[str] = []
    async with store.pool.acquire() as conn:
        async with conn.transaction():  # marks for the warm-up batch, which prepares the statement
            await conn.execute("INSERT INTO marks (id) VALUES ('w1'), ('w2')")
        warm = BatchWork(conn, store, Claim("w", ["w1", "w2"], ["t"], [1], [2]))
        await _a_full_batch(warm, "wp", "wq")
        await warm.commit()
        conn.add_query_logger(lambda record: statements.append(record.query))
        work = BatchWork(conn, store, claim("m1", "m2"))
        first, second, marked = await _a_full_batch(work, "p", "q")
        assert statements == [], "nothing is sent before commit"
        await work.commit()
    assert work.read_back(marked) == 10, "a deferred write's result is read back after commit"
    assert len(statements) == 1, statements
    assert [e.sequence for e in first] == [1] and [[e.sequence for e in s] for s in second] == [[2], [1]]
    written = await everything(store)
    assert {k: [row for row in rows if not _warm_up(row)] for k, rows in written.items()} == {
        "inbox": ["m1", "m2"],
        "positions": [("c", "t", 0, 2)],
        "events": [("p", 1, "m1"), ("p", 2, "m2"), ("q", 1, "m2")],
        "outbox": [(PAYMENT_COMMANDS, "p"), (PAYMENT_EVENTS, "p"), (PAYMENT_EVENTS, "p"), (PAYMENT_EVENTS, "q")],
        "lookups": [("p", "o")],
        "marks": [("m1", 1), ("m2", 1)],
    }


def _warm_up(row: Any) -> bool:
    """A row of the warm-up batch: its ids, streams and consumer start with "w"."""
    return any(str(value).startswith("w") for value in (row if isinstance(row, tuple) else (row,)))


async def _refused(store: EventStore, work_of: Any) -> None:
    before = await everything(store)
    async with store.pool.acquire() as conn:
        work = BatchWork(conn, store, claim("m1", "m2"))
        ran: list[bool] = []
        work.after_commit(lambda: ran.append(True))
        await work_of(work)
        with pytest.raises(BatchPreconditionFailed):
            await work.commit()
    assert ran == [], "a refused statement runs no after-commit callback"
    assert await everything(store) == before, "a refused statement writes nothing, not even its claim"


async def test_a_message_the_inbox_has_already_refuses_the_whole_statement(store: EventStore) -> None:
    async with store.pool.acquire() as conn:
        await conn.execute("INSERT INTO inbox (consumer, message_id) VALUES ('c', 'm2')")

    async def work_of(work: BatchWork) -> None:
        await work.append("p", 0, [captured(1)])

    await _refused(store, work_of)


async def test_a_stream_that_moved_refuses_it_whether_written_or_only_decided_on(store: EventStore) -> None:
    await store.append("p", 0, [captured(1)])

    async def appended_on_a_stale_version(work: BatchWork) -> None:
        await work.append("p", 0, [captured(2)])

    async def decided_on_a_stale_version(work: BatchWork) -> None:
        work.expect("p", 0)  # decided nothing, but on a state that is no longer the stream's
        await work.append("q", 0, [captured(3, "q")])

    await _refused(store, appended_on_a_stale_version)
    await _refused(store, decided_on_a_stale_version)


async def test_an_own_write_that_misses_its_rows_refuses_it(store: EventStore) -> None:
    async def work_of(work: BatchWork) -> None:
        await work.append("p", 0, [captured(1)])
        work.defer(DeferredWrite(MARK, (["m1", "absent"],), rows=2))

    await _refused(store, work_of)


async def test_a_concurrent_writer_of_the_same_version_refuses_it(store: EventStore) -> None:
    """The version check sees the statement's snapshot; a writer committing the same version in
    the meantime makes the insert fail on the log's unique key: refused too, nothing written."""
    async with store.pool.acquire() as conn, store.pool.acquire() as other, store.pool.acquire() as watcher:
        work = BatchWork(conn, store, claim("m1"))
        await work.append("p", 0, [captured(1)])
        racing = other.transaction()
        await racing.start()
        await store.append("p", 0, [captured(9)], conn=other)  # not committed yet: it holds the key
        ours = asyncio.create_task(work.commit())
        while not await watcher.fetchval(  # our statement waits for the racing writer's key
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid()
        ):
            await asyncio.sleep(0.01)
        await racing.commit()
        with pytest.raises(BatchPreconditionFailed):
            await ours
        assert await watcher.fetchval("SELECT count(*) FROM inbox") == 0
        assert [r["version"] for r in await watcher.fetch("SELECT version FROM events")] == [1]

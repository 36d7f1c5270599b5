"""Event store against the real PostgreSQL: optimistic concurrency, immutability, reads."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import asyncpg
import pytest

from infra.stack import LocalStack
from shared.db import create_pool, migrate
from shared.eventstore import ConcurrencyConflict, EventRoutes, EventStore, StreamAppend
from shared.ids import caused_by
from shared.messages import Command, NewEvent, decode
from shared.upcasting import UpcasterRegistry

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database, max_size=20)
    await migrate(pool)
    try:
        yield EventStore(pool, source="/test", routes=EventRoutes({"test.": "test.events"}))
    finally:
        await pool.close()


def happened(n: int) -> NewEvent:
    return NewEvent("test.happened", {"order_id": "o", "n": n})


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
    assert [e.version for e in await store.read("s")] == [1, 2]


async def test_appending_past_the_head_is_a_conflict_not_a_gap(store: EventStore) -> None:
    await store.append("s", 0, [happened(1)])
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", 3, [happened(2)])
    assert [e.version for e in await store.read("s")] == [1]


async def test_a_conflict_appends_nothing_and_queues_nothing(store: EventStore) -> None:
    await store.append("s", 0, [happened(1), happened(2)])
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", 1, [happened(3)])
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 2


async def test_read_up_to_a_version_replays_the_past(store: EventStore) -> None:
    await store.append("s", 0, [happened(i) for i in range(1, 6)])
    assert [e.data["n"] for e in await store.read("s", up_to_version=3)] == [1, 2, 3]
    assert await store.read("missing") == []


async def test_unrouted_events_stay_private(store: EventStore) -> None:
    await store.append("s", 0, [NewEvent("saga.step_requested", {"order_id": "o"}), happened(1)])
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1


async def test_causal_ids_come_from_the_handled_message(store: EventStore) -> None:
    with caused_by("order-9", "msg-3"):
        [event] = await store.append("s", 0, [happened(1)])
    assert (event.correlation_id, event.causation_id) == ("order-9", "msg-3")
    [stored] = await store.read("s")
    assert (stored.correlation_id, stored.causation_id) == ("order-9", "msg-3")


async def test_upcasters_apply_on_read(fresh_database: str) -> None:
    registry = UpcasterRegistry()
    registry.register("test.happened", 1)(lambda d: {**d, "unit": "cents"})
    pool = await create_pool(fresh_database)
    try:
        await migrate(pool)
        writer = EventStore(pool, source="/test")
        await writer.append("s", 0, [happened(1)])
        reader = EventStore(pool, source="/test", upcasters=registry)
        [event] = await reader.read("s")
        assert (event.schema_version, event.data["unit"]) == (2, "cents")
        async with pool.acquire() as conn:
            raw: Any = await conn.fetchval("SELECT data FROM events")
        assert "unit" not in raw, "the stored fact itself is unchanged"
    finally:
        await pool.close()


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
        with pytest.raises(ValueError, match="not routed"):
            await uow.republish(
                (await store.append("private", 0, [NewEvent("saga.x", {"order_id": "o"})], conn=uow.conn))[0]
            )
    async with store.pool.acquire() as conn:
        values = [bytes(r["value"]) for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
    assert len(values) == 2 and values[0] == values[1], "the same CloudEvent, same id, queued twice"


async def _outbox(store: EventStore) -> list[tuple[str, str]]:
    """(key, CloudEvents type) of the outbox rows, in publication order."""
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT key, value FROM outbox ORDER BY id")
    return [(r["key"], decode(bytes(r["value"])).type) for r in rows]


async def test_queued_messages_keep_their_place_among_appended_facts(store: EventStore) -> None:
    async with store.transaction() as uow:
        await uow.send(Command("test.first", "a", {"order_id": "o"}), "test.commands")
        await uow.append("s", 0, [happened(1)])
        await uow.send(Command("test.second", "b", {"order_id": "o"}), "test.commands")
        await uow.send(Command("test.third", "c", {"order_id": "o"}), "test.commands")
        await uow.append("s", 1, [happened(2)])
        await uow.send(Command("test.fourth", "d", {"order_id": "o"}), "test.commands")
    assert await _outbox(store) == [
        ("a", "test.first"), ("s", "test.happened"), ("b", "test.second"),
        ("c", "test.third"), ("s", "test.happened"), ("d", "test.fourth"),
    ]


async def test_a_failed_savepoint_undoes_its_facts_messages_and_callbacks_only(store: EventStore) -> None:
    ran: list[str] = []
    async with store.transaction() as uow:
        await uow.send(Command("test.kept", "a", {"order_id": "o"}), "test.commands")
        uow.after_commit(lambda: ran.append("kept"))
        with pytest.raises(RuntimeError):
            async with uow.savepoint():
                await uow.send(Command("test.undone", "b", {"order_id": "o"}), "test.commands")
                await uow.append("s", 0, [happened(1)])
                await uow.send(Command("test.undone", "c", {"order_id": "o"}), "test.commands")
                uow.after_commit(lambda: ran.append("undone"))
                raise RuntimeError("this attempt fails")
        async with uow.savepoint():
            await uow.send(Command("test.retried", "d", {"order_id": "o"}), "test.commands")
    assert await _outbox(store) == [("a", "test.kept"), ("d", "test.retried")]
    assert ran == ["kept"]
    assert await store.read("s") == []


async def test_read_many_returns_each_stream_in_version_order(store: EventStore) -> None:
    for n in range(1, 4):
        await store.append("b", n - 1, [happened(n)])
        await store.append("a", n - 1, [happened(10 + n)])
    streams = await store.read_many(["b", "missing", "a"])
    assert list(streams) == ["b", "missing", "a"]
    assert [e.data["n"] for e in streams["b"]] == [1, 2, 3]
    assert [e.data["n"] for e in streams["a"]] == [11, 12, 13]
    assert streams["missing"] == []
    async with store.transaction() as uow:
        assert (await uow.read_many(["a"]))["a"] == await store.read("a")


async def test_a_commit_that_queued_messages_rings_the_local_bell(store: EventStore) -> None:
    store.outbox_written.clear()
    async with store.transaction() as uow:
        await uow.append("private", 0, [NewEvent("saga.noted", {"order_id": "o"})])  # unrouted
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
        await uow.send(Command("test.sent", "x", {"order_id": "o"}), "test.commands")
        a, empty, b = await uow.append_many(
            [StreamAppend("a", 0, [happened(1), happened(2)]), StreamAppend("c", 0, []), StreamAppend("b", 1, [happened(2)])]
        )
    assert ([e.version for e in a], empty, [e.version for e in b]) == ([1, 2], [], [2])
    assert await _outbox(store) == [
        ("b", "test.happened"),  # the first append, before the transaction
        ("x", "test.sent"), ("a", "test.happened"), ("a", "test.happened"), ("b", "test.happened"),
    ]
    async with store.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM outbox")
    with pytest.raises(ConcurrencyConflict):
        async with store.transaction() as uow:
            await uow.send(Command("test.lost", "y", {"order_id": "o"}), "test.commands")
            await uow.append_many([StreamAppend("a", 2, [happened(3)]), StreamAppend("b", 1, [happened(3)])])  # b is at 2
    assert [e.version for e in await store.read("a")] == [1, 2], "one stale stream: nothing is appended"
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == before
    with pytest.raises(ValueError, match="once per statement"):
        await store.append_many([StreamAppend("d", 0, [happened(1)]), StreamAppend("d", 1, [happened(2)])])

"""DLQ replay against the real broker and database: a message a consumer could not handle is
dead-lettered (a CloudEvent keeping the original), listed by `python -m infra dlq list`, and once
the code is fixed, replayed with `infra.dlq.replay`: its effect appears exactly once. Replaying
again, or replaying to a consumer that had handled it, adds nothing; replaying while still broken
dead-letters it again with its attempts added up; a redelivery of the same record is a duplicate.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from io import StringIO
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra import dlq
from infra.stack import LocalStack
from shared.consumer import ConsumerRunner, Delivery
from shared.contract import DeadLetter, PaymentCaptured, dlq_topic
from shared.contract.dead_letter import UNDECODABLE_TYPE
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, UnitOfWork
from shared.kafka import make_consumer
from shared.relay import OutboxRelay
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import produce, wait_for
from tests.integration.test_kernel_consumer import Running, fact

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EFFECTS_DDL = "CREATE TABLE IF NOT EXISTS effects (consumer TEXT NOT NULL, message_id TEXT NOT NULL, n INT NOT NULL)"
POISON_CENTS = 13  # the amount the handler cannot handle until it is fixed


@pytest.fixture
async def topic(new_topic: NewTopicFactory) -> str:
    return await new_topic("replay", partitions=2)


@pytest.fixture
async def store(fresh_database: str, stack: LocalStack) -> AsyncIterator[EventStore]:
    """The consumers' database, with its relay publishing the dead letters they queue."""
    pool = await create_pool(fresh_database)
    await migrate(pool, [EFFECTS_DDL])
    stop = asyncio.Event()
    relay = asyncio.create_task(OutboxRelay(fresh_database, stack.kafka_bootstrap).run(stop))
    try:
        yield EventStore(pool, source="/test")
    finally:
        stop.set()
        await asyncio.wait_for(relay, 30)
        await pool.close()


class Handler:
    """Records an effect per message; while `broken`, refuses 13 cents (the bug a code change fixes)."""

    def __init__(self, consumer: str, *, broken: bool) -> None:
        self.consumer = consumer
        self.broken = broken

    async def __call__(self, uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            data = delivery.envelope.data
            assert isinstance(data, PaymentCaptured)
            if self.broken and data.amount.amount_cents == POISON_CENTS:
                raise ValueError(f"cannot handle {POISON_CENTS} cents yet")
            await uow.conn.execute(
                "INSERT INTO effects VALUES ($1, $2, $3)", self.consumer, delivery.envelope.id, data.amount.amount_cents
            )


def consumer(store: EventStore, stack: LocalStack, topic: str, name: str, *, broken: bool, group: str = "") -> Running:
    factory = None
    if group:  # a fresh Kafka group: everything is delivered again
        factory = lambda: make_consumer(stack.kafka_bootstrap, group_id=group, client_id=group)  # noqa: E731
    runner = ConsumerRunner(
        name=name,
        topics=[topic],
        store=store,
        bootstrap_servers=stack.kafka_bootstrap,
        handler=Handler(name, broken=broken),
        consumer_factory=factory,
    )
    return Running(runner)


async def effects(store: EventStore, name: str) -> list[tuple[str, int]]:
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT message_id, n FROM effects WHERE consumer = $1 ORDER BY n", name)
    return [(r["message_id"], r["n"]) for r in rows]


async def has_effect(store: EventStore, name: str, n: int) -> bool:
    return n in [m for _, m in await effects(store, name)]


async def inbox(store: EventStore, name: str, message_id: str) -> tuple[str, int]:
    async with store.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT outcome, failed_attempts FROM inbox WHERE consumer = $1 AND message_id = $2", name, message_id
        )
    assert row is not None
    return row["outcome"], row["failed_attempts"]


async def past(store: EventStore, name: str, topic: str, partition: int, offset: int) -> bool:
    """The consumer's stored position is past `offset` (it has dealt with that record)."""
    async with store.pool.acquire() as conn:
        position = await conn.fetchval(
            "SELECT next_offset FROM consumer_positions WHERE consumer = $1 AND topic = $2 AND partition = $3",
            name,
            topic,
            partition,
        )
    return position is not None and position > offset


async def letters(stack: LocalStack, topic: str, count: int) -> list[DeadLetter]:
    """The dead letters of `topic` once there are `count` (read as `make dlq` reads them)."""
    found: list[DeadLetter] = []

    async def enough() -> bool:
        records = await dlq.read_dead_letters(stack.kafka_bootstrap, [dlq_topic(topic)])
        found[:] = [r.letter for r in records if r.letter is not None]
        return len(found) >= count

    await wait_for(enough)
    assert len(found) == count, [f.dlqerror for f in found]
    return found


async def record_at(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[bytes | None, bytes | None]:
    """(key, value) of one record, read outside any group."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tp = TopicPartition(topic, partition)
        reader.assign([tp])
        reader.seek(tp, offset)
        record = await asyncio.wait_for(reader.getone(tp), 30)
        return record.key, record.value
    finally:
        await reader.stop()


async def test_a_poison_message_fixed_by_a_code_change_is_replayed_and_takes_effect_exactly_once(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    messages = [fact(1), fact(POISON_CENTS), fact(2)]
    poison_key, poison_value = messages[1]
    poison_id = orjson.loads(poison_value)["id"]
    await produce(bootstrap, topic, messages)
    strict = consumer(store, stack, topic, "strict", broken=True)  # dead-letters it
    lenient = consumer(store, stack, topic, "lenient", broken=False)  # handles it
    try:
        await wait_for(lambda: strict.runner.handled == 2 and strict.runner.dead_lettered == 1)
        await wait_for(lambda: lenient.runner.handled == 3)
        [first] = await letters(stack, topic, 1)
        assert (first.id, first.type, first.dlqconsumer, first.attempts) == (
            poison_id,
            PaymentCaptured.TYPE,
            "strict",
            3,
        )
        assert "cannot handle 13 cents yet" in first.dlqerror
        assert await inbox(store, "strict", poison_id) == ("dead_lettered", 3)

        # Replayed before the fix: dead-lettered again, the attempts add up, the first failure stays.
        again = await dlq.replay(bootstrap, topic, poison_id)
        assert (again.topic, again.message_id) == (topic, poison_id)
        assert await record_at(bootstrap, topic, again.partition, again.offset) == (
            poison_key.encode(),
            poison_value,
        ), "the original key and value, byte for byte"
        await wait_for(lambda: strict.runner.dead_lettered == 2)
        _, second = await letters(stack, topic, 2)
        assert second.attempts == 6 and second.dlqfirstfailure == first.dlqfirstfailure
        assert second.dlqlastfailure >= first.dlqlastfailure and second.origin == (topic, again.partition, again.offset)
        await wait_for(lambda: past(store, "lenient", topic, again.partition, again.offset))
        assert lenient.runner.handled == 3, "the consumer that had handled it dropped the replay"

        # The code change: the handler now handles 13 cents. Replayed: one effect.
        strict.runner.handler = Handler("strict", broken=False)
        fixed = await dlq.replay(bootstrap, dlq_topic(topic), poison_id)
        await wait_for(lambda: strict.runner.handled == 3)
        assert sorted(n for _, n in await effects(store, "strict")) == [1, 2, POISON_CENTS]
        assert await inbox(store, "strict", poison_id) == ("handled", 6)

        # Replayed once more: both consumers drop it; nothing changes anywhere.
        twice = await dlq.replay(bootstrap, topic, poison_id)
        assert (twice.partition, twice.offset) != (fixed.partition, fixed.offset)
        for name in ("strict", "lenient"):
            await wait_for(lambda name=name: past(store, name, topic, twice.partition, twice.offset))
    finally:
        await strict.close()
        await lenient.close()
    assert (strict.runner.handled, strict.runner.dead_lettered, lenient.runner.handled) == (3, 2, 3)
    assert [m for m, n in await effects(store, "strict") if n == POISON_CENTS] == [poison_id], "exactly once"
    assert [m for m, n in await effects(store, "lenient") if n == POISON_CENTS] == [poison_id], "exactly once"
    assert len(await letters(stack, topic, 2)) == 2


async def test_a_redelivery_of_the_dead_lettered_record_is_a_duplicate_not_a_replay(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    key, value = fact(POISON_CENTS, stream="r")
    poison_id = orjson.loads(value)["id"]
    await produce(stack.kafka_bootstrap, topic, [(key, value)])
    first = consumer(store, stack, topic, "c", broken=True)
    await wait_for(lambda: first.runner.dead_lettered == 1)
    await first.close()
    # Mass redelivery: the stored positions are gone and a fresh group starts from the beginning.
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM consumer_positions")
    again = consumer(store, stack, topic, "c", broken=False, group=f"rewound-{uuid.uuid4().hex[:6]}")
    try:
        await produce(stack.kafka_bootstrap, topic, [fact(5, stream="r")])  # same key: after it
        await wait_for(lambda: has_effect(store, "c", 5))  # so it has dealt with the poison before it
    finally:
        await again.close()
    assert (again.runner.handled, again.runner.dead_lettered) == (1, 0)
    assert [n for _, n in await effects(store, "c")] == [5], "a redelivery is not a replay: only a replay revives"
    assert await inbox(store, "c", poison_id) == ("dead_lettered", 3)
    assert len(await letters(stack, topic, 1)) == 1


async def test_make_dlq_lists_the_letters_and_an_undecodable_replay_is_the_same_bytes_again(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    garbage = b"\xff\xfe not a cloudevent {"
    await produce(bootstrap, topic, [("g", garbage), fact(POISON_CENTS, stream="g")])
    running = consumer(store, stack, topic, "c", broken=True)
    try:
        await wait_for(lambda: running.runner.dead_lettered == 2)
        undecodable, refused = sorted(await letters(stack, topic, 2), key=lambda letter: letter.origin)
        assert undecodable.type == UNDECODABLE_TYPE and undecodable.id == ":".join(map(str, undecodable.origin))

        listed = await cli("list", "--topic", topic, "--json", bootstrap=bootstrap)
        assert listed.returncode == 0, listed.stderr
        rows = orjson.loads(listed.stdout)
        assert [(r["id"], r["type"], r["consumer"], r["attempts"]) for r in rows] == [
            (undecodable.id, UNDECODABLE_TYPE, "c", 1),
            (refused.id, PaymentCaptured.TYPE, "c", 3),
        ]
        assert rows[1]["origin"] == {"topic": topic, "partition": refused.origin[1], "offset": refused.origin[2]}
        table = await cli("list", "--topic", dlq_topic(topic), bootstrap=bootstrap)
        header, *lines = table.stdout.splitlines()
        assert header.split()[:4] == ["DLQ", "TOPIC", "OFFSET", "ID"] and len(lines) == 2
        assert lines[1].split()[:6] == [dlq_topic(topic), "1", refused.id, PaymentCaptured.TYPE, "c", "3"]

        unknown = await cli("replay", "--topic", topic, "--id", "no-such-id", bootstrap=bootstrap)
        assert unknown.returncode == 1 and "no dead letter with id 'no-such-id'" in unknown.stderr

        out = StringIO()
        assert (
            await asyncio.to_thread(
                dlq.main, ["replay", "--topic", topic, "--id", undecodable.id, "--bootstrap", bootstrap], out
            )
            == 0
        )
        assert f"replayed {UNDECODABLE_TYPE} {undecodable.id}" in out.getvalue()
        await wait_for(lambda: running.runner.dead_lettered == 3)
        *_, replayed = sorted(await letters(stack, topic, 3), key=lambda letter: letter.origin)
        assert await record_at(bootstrap, topic, replayed.origin[1], replayed.origin[2]) == (b"g", garbage)
        assert replayed.id == ":".join(map(str, replayed.origin)) and replayed.attempts == 1, "a new record, a new id"
    finally:
        await running.close()


class _Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


async def cli(*args: str, bootstrap: str) -> _Done:
    """`python -m infra dlq ...` as an operator runs it (what `make dlq` / `make dlq-replay` call)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra",
        "dlq",
        *args,
        "--bootstrap",
        bootstrap,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return _Done(proc.returncode, stdout.decode(), stderr.decode())

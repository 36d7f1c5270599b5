"""Consumer runner against the real broker: one effect per message, poison to the DLQ."""
from __future__ import annotations

import asyncio
import base64
import uuid
from typing import AsyncIterator, Sequence

import orjson
import pytest

from infra.stack import LocalStack
from shared.consumer import ConsumerRunner, Delivery, one_at_a_time
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, UnitOfWork
from shared.kafka import make_consumer
from shared.messages import RecordedEvent, encode, event_to_cloudevent, utc_now
from shared.relay import OutboxRelay
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import at_least, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

EFFECTS_DDL = "CREATE TABLE IF NOT EXISTS effects (message_id TEXT NOT NULL, n INT NOT NULL)"


@pytest.fixture
async def topic(new_topic: NewTopicFactory) -> str:
    return await new_topic("consume", partitions=3)


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool, [EFFECTS_DDL])
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


def fact(n: int, stream: str = "s", fail: bool = False) -> tuple[str, bytes]:
    event = RecordedEvent(
        event_id=uuid.uuid4(),
        type="test.happened",
        stream_id=stream,
        version=n,
        schema_version=1,
        occurred_at=utc_now(),
        correlation_id=stream,
        causation_id=stream,
        data={"order_id": stream, "n": n, "fail": fail},
    )
    return stream, encode(event_to_cloudevent(event, "/test"))


@one_at_a_time
async def record_effect(uow: UnitOfWork, delivery: Delivery) -> None:
    if delivery.envelope.data.get("fail"):
        raise ValueError(f"cannot handle n={delivery.envelope.data['n']}")
    await uow.conn.execute("INSERT INTO effects VALUES ($1, $2)", delivery.envelope.id, delivery.envelope.data["n"])


async def effects(store: EventStore) -> list[tuple[str, int]]:
    async with store.pool.acquire() as conn:
        return [(r["message_id"], r["n"]) for r in await conn.fetch("SELECT message_id, n FROM effects ORDER BY n")]


class Running:
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(runner.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


def runner(store: EventStore, stack: LocalStack, topic: str, name: str = "c", group: str | None = None) -> ConsumerRunner:
    factory = None
    if group is not None:
        factory = lambda: make_consumer(stack.kafka_bootstrap, group_id=group, client_id=group)  # noqa: E731
    return ConsumerRunner(
        name=name, topics=[topic], store=store, bootstrap_servers=stack.kafka_bootstrap,
        handler=record_effect, consumer_factory=factory,
    )


async def test_duplicate_and_replayed_deliveries_have_one_effect(store: EventStore, stack: LocalStack, topic: str) -> None:
    messages = [fact(n, stream=f"s{n % 3}") for n in range(1, 31)]
    await produce(stack.kafka_bootstrap, topic, messages + messages[:10])  # the relay re-published ten
    first = Running(runner(store, stack, topic))
    await wait_for(lambda: first.runner.handled == 30)
    await first.close()
    # Mass redelivery: Kafka offsets and stored positions rewound, everything arrives again.
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM consumer_positions")
    replay = Running(runner(store, stack, topic, group=f"rewound-{uuid.uuid4().hex[:6]}"))
    await wait_for(lambda: replay.runner.handled == 0 and replay.runner._consumer is not None)
    await produce(stack.kafka_bootstrap, topic, [fact(31)])
    await wait_for(lambda: replay.runner.handled == 1)
    await replay.close()
    done = await effects(store)
    assert sorted(n for _, n in done) == list(range(1, 32))
    assert len({m for m, _ in done}) == 31


async def test_poison_and_failing_messages_go_to_the_dlq_and_the_next_is_processed(
    store: EventStore, stack: LocalStack, topic: str, fresh_database: str
) -> None:
    await produce(
        stack.kafka_bootstrap,
        topic,
        [("s", b"\x00 definitely not json"), fact(1), fact(2, fail=True), fact(3)],
    )
    running = Running(runner(store, stack, topic))
    await wait_for(lambda: running.runner.handled == 2 and running.runner.dead_lettered == 2)
    await running.close()
    assert [n for _, n in await effects(store)] == [1, 3]
    stop = asyncio.Event()
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap)
    relay_task = asyncio.create_task(relay.run(stop))
    dead = await read_topic(stack.kafka_bootstrap, topic + ".dlq", until=at_least(2))
    stop.set()
    await relay_task
    assert len(dead) == 2
    poison, failed = sorted(dead, key=lambda s: s.value["origin"]["offset"])
    assert "not JSON" in poison.value["error"]
    assert base64.b64decode(poison.value["value_base64"]) == b"\x00 definitely not json"
    assert "cannot handle n=2" in failed.value["error"]
    assert failed.value["origin"]["topic"] == topic
    assert orjson.loads(base64.b64decode(failed.value["value_base64"]))["data"]["n"] == 2
    async with store.pool.acquire() as conn:
        outcomes = sorted(r["outcome"] for r in await conn.fetch("SELECT outcome FROM inbox"))
    assert outcomes == ["dead_lettered", "dead_lettered", "handled", "handled"]


async def test_two_replicas_in_one_group_share_the_work_once_through_rebalances(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(1, 201)])
    a = Running(runner(store, stack, topic, name="shared-group"))
    await wait_for(lambda: a.runner.handled > 0)
    b = Running(runner(store, stack, topic, name="shared-group"))  # joins: a rebalance mid-stream
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(201, 401)])
    await wait_for(lambda: a.runner.handled + b.runner.handled >= 400, timeout_s=90)
    await a.close()  # leaves: another rebalance, b takes every partition
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(401, 451)])
    await wait_for(lambda: a.runner.handled + b.runner.handled >= 450, timeout_s=90)
    await b.close()
    assert sorted(n for _, n in await effects(store)) == list(range(1, 451))
    assert a.runner.handled + b.runner.handled == 450


async def test_one_poll_across_partitions_is_one_transaction_and_a_failure_isolates_only_its_message(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    streams = [f"k{i}" for i in range(12)]  # enough keys to land on all 3 partitions
    messages = [fact(n, stream=s, fail=(s == "k5" and n == 2)) for s in streams for n in (1, 2)]
    await produce(stack.kafka_bootstrap, topic, messages)
    batches: list[set[int]] = []

    async def handler(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        batches.append({d.partition for d in deliveries})
        await record_effect(uow, deliveries)

    consumer = ConsumerRunner(name="c", topics=[topic], store=store, bootstrap_servers=stack.kafka_bootstrap, handler=handler)
    running = Running(consumer)
    await wait_for(lambda: consumer.handled == len(messages) - 1 and consumer.dead_lettered == 1)
    await running.close()
    assert max(len(partitions) for partitions in batches) > 1, "a poll's partitions share one handler call"
    assert len(await effects(store)) == len(messages) - 1
    async with store.pool.acquire() as conn:
        positions = await conn.fetch("SELECT partition, next_offset FROM consumer_positions WHERE consumer = 'c'")
    assert len(positions) == 3
    assert sum(r["next_offset"] for r in positions) == len(messages), "every partition's position was stored"

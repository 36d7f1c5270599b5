"""The kernel parts readiness and graceful shutdown rely on, against the real broker and database.

* A consumer group member counts as assigned once it has joined, even when it got no partition
  because its group has more members than the topic has partitions.
* A relay told to stop publishes what the outbox holds before it ends (the last requests' and
  consumer batches' messages), instead of leaving it for the next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar

import pytest

from infra.stack import LocalStack
from shared.consumer import ConsumerRunner, Delivery
from shared.contract import Money, PaymentCaptured
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, UnitOfWork
from shared.relay import OutboxRelay, RelaySettings
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import distinct_ids_at_least, read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool)
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


async def nothing(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
    return None


async def test_a_member_left_without_partitions_counts_as_assigned(
    store: EventStore, stack: LocalStack, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic("members", partitions=1)
    stop = asyncio.Event()
    members = [
        ConsumerRunner(
            name=f"{topic}.group", topics=[topic], store=store, bootstrap_servers=stack.kafka_bootstrap, handler=nothing
        )
        for _ in range(2)
    ]
    assert not any(m.assigned for m in members)
    tasks = [asyncio.create_task(m.run(stop)) for m in members]
    try:
        await wait_for(lambda: all(m.assigned for m in members), timeout_s=90)
        owners = [m for m in members if m._consumer is not None and m._consumer.assignment()]
        assert len(owners) == 1, "one partition: one member owns it, the other is a ready standby"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert not any(m.assigned for m in members), "a stopped member is no longer assigned"


def fact_on(topic: str) -> Callable[[str], PaymentCaptured]:
    class OnTheTestTopic(PaymentCaptured, frozen=True, kw_only=True):
        TOPIC: ClassVar[str | None] = topic

    return lambda order_id: OnTheTestTopic(
        order_id=order_id, payment_id="p", amount=Money(amount_cents=1, currency="EUR")
    )


async def test_a_stopping_relay_publishes_what_the_outbox_holds(
    store: EventStore, stack: LocalStack, fresh_database: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic("flush", partitions=3)
    happened = fact_on(topic)
    stop = asyncio.Event()
    # Polling once a minute: after the stop, only the flush can publish what is appended below.
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="t", settings=RelaySettings(poll_interval_s=60))
    task = asyncio.create_task(relay.run(stop))
    try:
        async with store.pool.acquire() as conn:

            async def idle_and_listening() -> bool:
                return bool(await conn.fetchval("SELECT listening FROM outbox_relay_state WHERE id = 1"))

            await wait_for(idle_and_listening, timeout_s=60)
            # Writers stop ringing, so nothing wakes the idle relay before its stop.
            await conn.execute("UPDATE outbox_relay_state SET listening = false WHERE id = 1")
        for i in range(30):
            await store.append(f"s-{i % 3}", i // 3, [happened(f"s-{i % 3}")])
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0, "the flush published and deleted every row"
        committed = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}
    seen = await read_topic(stack.kafka_bootstrap, topic, until=distinct_ids_at_least(30), timeout_s=60)
    assert {s.value["id"] for s in seen} == committed and len(committed) == 30

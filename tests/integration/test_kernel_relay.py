"""Outbox relay against the real broker: nothing committed is lost, per-stream order holds.

The facts are contract facts (payment.captured) published on each test's own topic, so that no
other test's messages mix in: `fact_on(topic)` is payment.captured with that topic as its TOPIC.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from infra.stack import LocalStack
from shared import relay as relay_module
from shared.contract import Money, PaymentCaptured
from shared.db import create_pool, migrate
from shared.eventstore import ConcurrencyConflict, EventStore
from shared.relay import OutboxRelay, RelaySettings
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import Seen, distinct_ids_at_least, read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(new_topic: NewTopicFactory) -> str:
    return await new_topic("relay", partitions=3)


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database, max_size=24)
    await migrate(pool)
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


Happened = Callable[[str], PaymentCaptured]


@pytest.fixture
def happened(topic: str) -> Happened:
    """A payment.captured of stream `order_id`, published on the test's topic."""

    class OnTheTestTopic(PaymentCaptured, frozen=True, kw_only=True):
        TOPIC: ClassVar[str | None] = topic

    return lambda order_id: OnTheTestTopic(
        order_id=order_id, payment_id="p", amount=Money(amount_cents=1, currency="EUR")
    )


class _Rollback(Exception):
    pass


async def committed_ids(store: EventStore) -> set[str]:
    async with store.pool.acquire() as conn:
        return {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}


def assert_per_stream_order(seen: list[Seen]) -> None:
    """Every key's first deliveries run 1, 2, 3, … in offset order."""
    by_key: dict[str, list[int]] = defaultdict(list)
    first: set[str] = set()
    for s in sorted(seen, key=lambda s: (s.partition, s.offset)):
        if s.value["id"] in first:
            continue
        first.add(s.value["id"])
        by_key[s.key].append(int(s.value["sequence"]))
    for key, versions in by_key.items():
        assert versions == list(range(1, len(versions) + 1)), f"stream {key} out of order: {versions[:20]}"


async def test_sixteen_racing_writers_with_rollbacks_publish_exactly_what_committed(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, topic: str
) -> None:
    stop = asyncio.Event()
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="t")
    relay_task = asyncio.create_task(relay.run(stop))
    rng = random.Random(7)
    streams = [f"stream-{i}" for i in range(24)]  # shared by writers: real conflicts happen

    async def writer(w: int) -> None:
        for _ in range(40):
            stream = rng.choice(streams)
            try:
                async with store.transaction() as uow:
                    head = len(await uow.read(stream))
                    await asyncio.sleep(rng.random() * 0.004)
                    await uow.append(stream, head, [happened(stream)] * rng.randint(1, 3))
                    await asyncio.sleep(rng.random() * 0.004)
                    if rng.random() < 0.2:
                        raise _Rollback()
            except (_Rollback, ConcurrencyConflict):
                pass

    await asyncio.gather(*(writer(w) for w in range(16)))
    committed = await committed_ids(store)
    assert len(committed) > 300
    seen = await read_topic(stack.kafka_bootstrap, topic, until=distinct_ids_at_least(len(committed)))
    stop.set()
    await relay_task
    published = {s.value["id"] for s in seen}
    assert published == committed
    assert len(seen) == len(committed), "no crash happened, so nothing is published twice"
    assert_per_stream_order(seen)
    assert {s.key for s in seen} == {s.value["subject"] for s in seen}, "key = aggregate id"


async def test_exactly_one_relay_publishes_per_database_and_a_standby_takes_over(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, topic: str
) -> None:
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="a")
    b = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="b")
    tasks = [asyncio.create_task(a.run(stop_a)), asyncio.create_task(b.run(stop_b))]
    await wait_for(lambda: a.is_leader or b.is_leader)
    await asyncio.sleep(0.5)  # give a wrongly-elected second leader time to show itself
    assert [a.is_leader, b.is_leader].count(True) == 1
    leader, standby, stop_leader = (a, b, stop_a) if a.is_leader else (b, a, stop_b)
    await store.append("s", 0, [happened("s")])
    await wait_for(lambda: leader.published == 1)
    stop_leader.set()
    await wait_for(lambda: standby.is_leader)
    await store.append("s", 1, [happened("s")])
    await wait_for(lambda: standby.published == 1)
    stop_a.set()
    stop_b.set()
    await asyncio.gather(*tasks)
    seen = await read_topic(stack.kafka_bootstrap, topic, until=distinct_ids_at_least(2))
    assert [int(s.value["sequence"]) for s in seen] == [1, 2]


#: A relay alone in its process, to be SIGSTOPped and SIGKILLed.
RELAY_PROCESS = (
    "import asyncio, sys\n"
    "from shared.logs import configure_logging\n"
    "from shared.relay import OutboxRelay\n"
    "configure_logging('killable')\n"
    "asyncio.run(OutboxRelay(sys.argv[1], sys.argv[2], name='killable').run(asyncio.Event()))\n"
)


def start_relay_process(dsn: str, bootstrap: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", RELAY_PROCESS, dsn, bootstrap],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_relay_sigkilled_between_commit_and_publish_loses_nothing(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, topic: str, tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    relay = start_relay_process(fresh_database, stack.kafka_bootstrap, log)
    try:
        await wait_for(lambda: "active publisher" in log.read_text())
        # Frozen relay: these commits happen, and it cannot publish them before it dies.
        relay.send_signal(signal.SIGSTOP)
        for i in range(50):
            await store.append(f"frozen-{i % 5}", i // 5, [happened("x")])
        relay.kill()
        relay.wait()
        nothing = await read_topic(stack.kafka_bootstrap, topic, until=lambda s: False, timeout_s=1.5)
        assert nothing == [], "the killed relay published nothing"

        # Kill the relay at random moments while writers keep committing.
        relay = start_relay_process(fresh_database, stack.kafka_bootstrap, log)
        rng = random.Random(11)

        async def keep_appending() -> None:
            for i in range(600):
                await store.append(f"busy-{i % 12}", i // 12, [happened("y")])
                if i % 50 == 0:
                    await asyncio.sleep(0.05)

        writer = asyncio.create_task(keep_appending())
        for _ in range(4):
            await asyncio.sleep(0.2 + rng.random() * 0.6)
            relay.kill()
            relay.wait()
            relay = start_relay_process(fresh_database, stack.kafka_bootstrap, log)
        await writer
        committed = await committed_ids(store)
        assert len(committed) == 650
        seen = await read_topic(stack.kafka_bootstrap, topic, until=distinct_ids_at_least(len(committed)), timeout_s=90)
    finally:
        relay.kill()
        relay.wait()
    assert {s.value["id"] for s in seen} == committed
    assert_per_stream_order(seen)


async def test_kafka_down_for_a_while_loses_nothing(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, topic: str
) -> None:
    stop = asyncio.Event()
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="t")
    task = asyncio.create_task(relay.run(stop))
    try:
        for i in range(20):
            await store.append(f"s-{i % 4}", i // 4, [happened("z")])
        await wait_for(lambda: relay.published == 20)
        await asyncio.to_thread(stack.kill_kafka)
        for i in range(20, 60):
            await store.append(f"s-{i % 4}", i // 4, [happened("z")])
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.start_kafka)
        committed = await committed_ids(store)
        seen = await read_topic(stack.kafka_bootstrap, topic, until=distinct_ids_at_least(60), timeout_s=120)
    finally:
        stop.set()
        await task
    assert {s.value["id"] for s in seen} == committed
    assert_per_stream_order(seen)


async def test_an_idle_relay_is_woken_by_the_commit_not_by_its_poll(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str
) -> None:
    stop = asyncio.Event()
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="t", settings=RelaySettings(poll_interval_s=60))
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.is_leader)

        async def listening() -> bool:
            async with store.pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT listening FROM outbox_relay_state"))

        await wait_for(listening)
        for n in range(1, 4):
            await store.append("s", n - 1, [happened("s")])
            await wait_for(lambda n=n: relay.published == n, timeout_s=20)  # far below the 60 s poll
    finally:
        stop.set()
        await task


async def test_a_relay_in_the_writers_process_is_woken_by_their_commit_without_a_database_bell(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str
) -> None:
    # It never stops lingering and never polls within the test: only the local bell can wake it.
    settings = RelaySettings(poll_interval_s=3600, linger_s=3600, linger_poll_s=3600)
    stop = asyncio.Event()
    relay = OutboxRelay(
        fresh_database, stack.kafka_bootstrap, name="t", settings=settings, local_bell=store.outbox_written
    )
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.is_leader)
        for n in range(1, 4):
            async with store.transaction() as uow:
                await uow.append("s", n - 1, [happened("s")])
            await wait_for(lambda n=n: relay.published == n, timeout_s=20)
        async with store.pool.acquire() as conn:
            assert await conn.fetchval("SELECT listening FROM outbox_relay_state") is False
            # Published rows are deleted by the next fetch: only the last one is still there.
            assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        stop.set()
        await task
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0, "a stopping relay deletes what it published"


async def test_the_doorbell_stays_up_between_commits_and_comes_down_while_the_relay_is_busy(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, topic: str
) -> None:
    settings = RelaySettings(poll_interval_s=60, linger_s=0.05, busy_s=0.3)
    stop = asyncio.Event()
    relay = OutboxRelay(fresh_database, stack.kafka_bootstrap, name="t", settings=settings)
    task = asyncio.create_task(relay.run(stop))

    async def doorbell() -> bool:
        async with store.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT listening FROM outbox_relay_state"))

    async def is_down() -> bool:
        return not await doorbell()

    try:
        await wait_for(doorbell)
        for n in range(1, 4):  # each commit rings; the bell is not taken down and put up again
            await store.append("s", n - 1, [happened("s")])
            await wait_for(lambda n=n: relay.published == n, timeout_s=20)  # far below the 60 s poll
            assert await doorbell()
        async with store.pool.acquire() as conn:  # a long burst: 100,000 rows at once
            await conn.execute(
                "INSERT INTO outbox (topic, key, value) SELECT $1, 'k' || (g % 50), 'x'::bytea FROM generate_series(1, 100000) g",
                topic,
            )
        await wait_for(is_down, timeout_s=60, interval_s=0.01)
        await wait_for(lambda: relay.published == 100003, timeout_s=120)
        await wait_for(doorbell, timeout_s=20)  # idle again: writers ring once more
    finally:
        stop.set()
        await task


async def test_a_busy_relay_lingers_after_a_bell_so_commits_meanwhile_share_a_fetch(
    store: EventStore, happened: Happened, stack: LocalStack, fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = RelaySettings(poll_interval_s=3600, linger_s=3600, linger_poll_s=3600, busy_linger_s=3600)
    stop = asyncio.Event()
    relay = OutboxRelay(
        fresh_database, stack.kafka_bootstrap, name="t", settings=settings, local_bell=store.outbox_written
    )
    fetched: list[int] = []
    fetch = relay._fetch

    async def recording(conn: Any, acknowledged: list[int]) -> Any:
        rows = await fetch(conn, acknowledged)
        if rows:
            fetched.append(len(rows))
        return rows

    lingering = asyncio.Event()
    sleep = relay_module._sleep_unless

    async def sleeping(until: asyncio.Event, seconds: float) -> bool:
        if seconds == settings.busy_linger_s:
            lingering.set()
        return await sleep(until, seconds)

    monkeypatch.setattr(relay, "_fetch", recording)
    monkeypatch.setattr(relay_module, "_sleep_unless", sleeping)
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.is_leader)
        await store.append("s", 0, [happened("s"), happened("s")])  # two rows at once: the relay is busy
        await wait_for(lambda: relay.published == 2, timeout_s=20)
        await store.append("s", 2, [happened("s")])  # rings the bell: the busy relay lingers...
        await asyncio.wait_for(lingering.wait(), timeout=20)
        await store.append("s", 3, [happened("s")])  # ...so this commit joins the same fetch
    finally:
        stop.set()  # ends the linger: the stopping relay publishes what is there, in one fetch
        await task
    assert relay.published == 4
    assert fetched == [2, 2], "no fetch while it lingered: the two commits went together"

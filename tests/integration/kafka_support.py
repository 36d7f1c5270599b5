"""Test helpers that read topics directly, outside any consumer group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass(frozen=True)
class Seen:
    partition: int
    offset: int
    key: str
    value: dict[str, Any]


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Seen]], bool],
    timeout_s: float = 60.0,
) -> list[Seen]:
    """Read the whole topic from the beginning until `until(seen)` holds or the bound passes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await consumer._client.force_metadata_update()  # topic just created
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: list[Seen] = []
        deadline = time.monotonic() + timeout_s
        while not until(seen) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    seen.append(Seen(r.partition, r.offset, r.key.decode() if r.key else "", orjson.loads(r.value)))
        return seen
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def at_least(n: int) -> Callable[[list[Seen]], bool]:
    return lambda seen: len(seen) >= n


def distinct_ids_at_least(n: int) -> Callable[[list[Seen]], bool]:
    return lambda seen: len({s.value["id"] for s in seen}) >= n


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.05) -> None:
    """Poll an async or sync predicate until true; fail the test with a clear message if never."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")

"""The floor of `make bench`: what raw Kafka and raw PostgreSQL do on this machine, no services.

* Kafka: messages/s produced -> consumed in one process with aiokafka: the services' producer
  settings (acks=all, idempotent, linger 0 ms), keyed messages of the system's mean message
  size spread over a fresh topic with the same partition count; a group-less consumer reads
  them concurrently. Rate = messages / (last consumed - first produced).
* PostgreSQL: single-row commits/s: N asyncpg connections, each looping `INSERT` of one row
  (autocommit: one transaction, one WAL flush each) of the system's mean message size.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import make_producer


async def kafka_floor(bootstrap: str, *, message_bytes: int, partitions: int, duration_s: float) -> dict[str, Any]:
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    producer = make_producer(bootstrap, client_id="bench-floor")
    await producer.start()
    value = os.urandom(max(1, message_bytes // 2)).hex().encode()[:message_bytes]
    keys = [str(uuid.uuid4()).encode() for _ in range(1024)]
    try:
        for _ in range(50):  # topic metadata may take a moment to appear
            if consumer.partitions_for_topic(topic):
                break
            await consumer.topics()
            await asyncio.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        received = 0
        produced = 0
        producing = True
        last_received_at = 0.0

        async def consume() -> None:
            nonlocal received, last_received_at
            while producing or received < produced:
                batches = await consumer.getmany(timeout_ms=200, max_records=10000)
                for records in batches.values():
                    received += len(records)
                    last_received_at = time.monotonic()

        consumer_task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)  # the consumer has fetched its (empty) positions
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        while time.monotonic() - started < duration_s:
            for _ in range(500):
                pending.append(await producer.send(topic, value, key=keys[produced % len(keys)]))
                produced += 1
            if len(pending) >= 5000:  # bounded in-flight, like the relay's batches
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        acked_at = time.monotonic()
        producing = False
        await asyncio.wait_for(consumer_task, timeout=120)
    finally:
        await producer.stop()
        await consumer.stop()
    elapsed = last_received_at - started
    return {
        "messages": produced,
        "message_bytes": len(value),
        "partitions": partitions,
        "produce_ack_per_s": round(produced / (acked_at - started), 1),
        "produce_consume_per_s": round(produced / elapsed, 1),
        "seconds": round(elapsed, 2),
        "client": "aiokafka, one process: producer as shared.kafka.make_producer (acks=all, idempotent, "
        "linger 0 ms) + a group-less consumer reading concurrently",
    }


async def postgres_floor(
    admin_dsn: str, app_dsn_of: Any, *, connections: int, row_bytes: int, duration_s: float
) -> dict[str, Any]:
    name = "bench_floor"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" OWNER app')
    finally:
        await admin.close()
    dsn: str = app_dsn_of(name)
    setup = await asyncpg.connect(dsn)
    await setup.execute(
        "CREATE TABLE rows (id BIGSERIAL PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), payload TEXT NOT NULL)"
    )
    await setup.close()
    payload = "x" * row_bytes
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    count = 0
    deadline = 0.0

    async def writer(conn: asyncpg.Connection) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await conn.execute("INSERT INTO rows (payload) VALUES ($1)", payload)
            count += 1

    try:
        started = time.monotonic()
        deadline = started + duration_s
        await asyncio.gather(*(writer(c) for c in conns))
        elapsed = time.monotonic() - started
    finally:
        for c in conns:
            await c.close()
    return {
        "commits": count,
        "commits_per_s": round(count / elapsed, 1),
        "connections": connections,
        "row_bytes": row_bytes,
        "seconds": round(elapsed, 2),
        "client": "asyncpg; each INSERT of one row is its own transaction (autocommit); fsync=on, "
        "synchronous_commit as the stack runs it",
    }

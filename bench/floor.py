"""The floor of `make bench`: what raw Kafka and raw PostgreSQL do on this machine, no services.

* Kafka: messages/s produced -> consumed in one process with aiokafka: the services' producer
  settings (acks=all, idempotent, linger 0 ms), keyed messages of the system's mean message
  size spread over a fresh topic with the same partition count; a group-less consumer reads
  them concurrently. Rate = messages / (last consumed - first produced).
* PostgreSQL: single-row commits/s: N asyncpg connections, each looping `INSERT` of one row
  (autocommit: one transaction, one WAL flush each) of the system's mean message size.
* Wake-ups: what one hop between two processes costs the machine itself. Two processes pass a
  message back and forth over loopback TCP, once placed by the scheduler (on a 2-core machine:
  mostly on different cores, each woken from idle) and once both pinned to one core. Every hop
  of a saga (relay → broker → consumer → PostgreSQL backend → ...) is such an exchange; on a
  virtual machine whose idle cores halt at once, one across cores costs far more than the work.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
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


def _echo(listener: socket.socket, exchanges: int, cpu: int | None) -> None:
    """The child of `wakeup_floor`: answer every message, then report its own CPU seconds."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(exchanges):
        conn.sendall(conn.recv(4096))
    conn.recv(1)  # the parent asks for the report only once it has read the last answer
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.sendall(f"{usage.ru_utime + usage.ru_stime!r}".encode())
    conn.close()


def _ping_pong(exchanges: int, message_bytes: int, cpu: int | None) -> dict[str, float]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    address = listener.getsockname()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            _echo(listener, exchanges, cpu)
        finally:
            os._exit(0)
    listener.close()
    before = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        conn = socket.create_connection(address)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"x" * message_bytes
        start = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        for _ in range(exchanges):
            conn.sendall(message)
            got = 0
            while got < message_bytes:
                got += len(conn.recv(4096))
        wall = time.perf_counter() - began
        end = resource.getrusage(resource.RUSAGE_SELF)
        conn.sendall(b"?")
        child_cpu = float(conn.recv(64).decode())
        conn.close()
    finally:
        os.sched_setaffinity(0, before)
        os.waitpid(pid, 0)
    own_cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
    return {
        "round_trip_us": round(wall / exchanges * 1e6, 1),
        "cpu_us_per_round_trip_each_side": round((own_cpu + child_cpu) / 2 / exchanges * 1e6, 1),
    }


def wakeup_floor(*, exchanges: int = 20_000, message_bytes: int = 600) -> dict[str, Any]:
    """Loopback ping-pong between two processes: placed freely, then both on core 0."""
    free = _ping_pong(exchanges, message_bytes, None)
    pinned = _ping_pong(exchanges, message_bytes, 0)
    return {
        "exchanges": exchanges,
        "message_bytes": message_bytes,
        "placed_by_the_scheduler": free,
        "both_on_one_core": pinned,
        "cost_ratio": round(
            free["cpu_us_per_round_trip_each_side"] / max(pinned["cpu_us_per_round_trip_each_side"], 0.1), 1
        ),
        "note": "two processes passing one message back and forth over loopback TCP (TCP_NODELAY); CPU: "
        "user + system time of both, per round trip, halved",
    }


def wakeup_floor_apart() -> dict[str, Any]:
    """`wakeup_floor` in a process of its own: it forks, which a process with threads must not."""
    done = subprocess.run([sys.executable, "-m", "bench.floor"], capture_output=True, check=True, timeout=300)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    print(json.dumps(wakeup_floor()))

"""Kernel benchmark: append throughput, relay lag, and the `eventsourcing` library as a yardstick.

`make bench-kernel` starts its own Kafka and PostgreSQL on free ports (never a running stack),
measures, prints a summary and writes bench/results/kernel-latest.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from infra.stack import LocalStack, free_ports
from services.order.customers import seal_address
from shared.contract import ORDER_EVENTS, Address, OrderLine, OrderPlaced, encode_data
from shared.db import create_pool, migrate
from shared.eventstore import EventStore
from shared.personal import DataKey
from shared.topics import ensure_topics

RESULTS = Path(__file__).with_name("results")
DURATION_S = float(os.environ.get("BENCH_KERNEL_DURATION_S", "5"))
LAG_RATE = int(os.environ.get("BENCH_KERNEL_LAG_RATE", "1000"))
LAG_DURATION_S = float(os.environ.get("BENCH_KERNEL_LAG_DURATION_S", "10"))
#: The relay alone in a process of its own, so that its CPU is not the writers'.
RELAY_PROCESS = (
    "import asyncio, sys\n"
    "from shared.logs import configure_logging\n"
    "from shared.relay import OutboxRelay\n"
    "configure_logging(sys.argv[3])\n"
    "asyncio.run(OutboxRelay(sys.argv[1], sys.argv[2], name=sys.argv[3]).run(asyncio.Event()))\n"
)


def placed(order_id: str) -> OrderPlaced:
    """The fact every append of the benchmark writes: a typical order.placed."""
    return OrderPlaced(
        order_id=order_id,
        customer_id="customer-42",
        currency="EUR",
        total_cents=4599,
        items=(
            OrderLine(sku="SKU-1", quantity=2, unit_price_cents=1500),
            OrderLine(sku="SKU-2", quantity=1, unit_price_cents=1599),
        ),
        shipping_address=seal_address(
            DataKey("0" * 32, "cust-1", 1, bytes(32)),
            Address(name="Ada Lovelace", line1="12 St James's Sq", city="London", postal_code="SW1Y 4JH", country="GB"),
        ),
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def fresh_db(stack: LocalStack, name: str) -> str:
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" OWNER app')
    finally:
        await admin.close()
    return stack.pg_dsn(name)


async def our_append_rate(stack: LocalStack, writers: int) -> float:
    dsn = await fresh_db(stack, f"bench_ours_{writers}")
    pool = await create_pool(dsn, min_size=writers, max_size=writers)
    await migrate(pool)
    store = EventStore(pool, source="/bench")
    count = 0
    deadline = time.monotonic() + DURATION_S

    async def writer(w: int) -> None:
        nonlocal count
        version = 0
        stream = f"bench-{w}-{uuid.uuid4().hex[:6]}"
        while time.monotonic() < deadline:
            await store.append(stream, version, [placed(stream)])
            version += 1
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.monotonic() - started
    await pool.close()
    return count / elapsed


def library_append_rate(stack: LocalStack, writers: int) -> float:
    """The same workload through eventsourcing's PostgresApplicationRecorder (psycopg, threads)."""
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    dsn = asyncio.run(fresh_db(stack, f"bench_lib_{writers}"))
    port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    datastore = PostgresDatastore(
        dbname=f"bench_lib_{writers}",
        host="127.0.0.1",
        port=port,
        user="app",
        password="app",
        pool_size=writers,
        max_overflow=0,
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    state = encode_data(placed(str(uuid.uuid4())))
    counts = [0] * writers
    deadline = time.monotonic() + DURATION_S

    def writer(w: int) -> None:
        originator = uuid.uuid4()
        version = 1
        while time.monotonic() < deadline:
            recorder.insert_events([StoredEvent(originator, version, "bench:OrderPlaced", state)])
            version += 1
            counts[w] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    datastore.close()
    return sum(counts) / elapsed


async def relay_lag(stack: LocalStack, log_dir: Path) -> dict[str, float]:
    """Open-loop appends at LAG_RATE/s; lag = consumed-from-Kafka time minus commit time.

    The benchmark's stack is its own: nothing but these appends is published on order.events."""
    dsn = await fresh_db(stack, "bench_lag")
    pool = await create_pool(dsn, min_size=16, max_size=16)
    await migrate(pool)
    store = EventStore(pool, source="/bench")
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY_PROCESS, dsn, stack.kafka_bootstrap, "bench-relay"],
        stdout=(log_dir / "bench-relay.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    consumer = AIOKafkaConsumer(
        ORDER_EVENTS,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    committed_at: dict[str, float] = {}
    received_at: dict[str, float] = {}
    total = int(LAG_RATE * LAG_DURATION_S)
    try:

        async def consume() -> None:
            while len(received_at) < total:
                batches = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for records in batches.values():
                    for r in records:
                        received_at[json.loads(r.value)["id"]] = now

        consumer_task = asyncio.create_task(consume())
        await asyncio.sleep(1.0)  # let the group settle before the clock starts

        async def one(i: int) -> None:
            stream = f"lag-{i}"
            [event] = await store.append(stream, 0, [placed(stream)])
            committed_at[event.id] = time.monotonic()

        start = time.monotonic()
        tasks = []
        for i in range(total):
            target = start + i / LAG_RATE
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        achieved = total / (time.monotonic() - start)
        await asyncio.wait_for(consumer_task, timeout=120)
    finally:
        await consumer.stop()
        relay.terminate()
        relay.wait(timeout=10)
        await pool.close()
    lags = [(received_at[i] - committed_at[i]) * 1000 for i in committed_at if i in received_at]
    return {
        "target_rate_per_s": LAG_RATE,
        "achieved_rate_per_s": round(achieved, 1),
        "events": len(lags),
        "p50_ms": round(pct(lags, 50), 2),
        "p99_ms": round(pct(lags, 99), 2),
        "max_ms": round(max(lags), 2),
        "mean_ms": round(statistics.fmean(lags), 2),
    }


async def main_async(stack: LocalStack, log_dir: Path) -> dict[str, Any]:
    await ensure_topics(stack.kafka_bootstrap)
    ours_1 = await our_append_rate(stack, 1)
    ours_16 = await our_append_rate(stack, 16)
    lib_1 = await asyncio.to_thread(library_append_rate, stack, 1)
    lib_16 = await asyncio.to_thread(library_append_rate, stack, 16)
    lag = await relay_lag(stack, log_dir)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s_per_append_run": DURATION_S,
        "append_events_per_s": {"writers_1": round(ours_1, 1), "writers_16": round(ours_16, 1)},
        "eventsourcing_library_events_per_s": {"writers_1": round(lib_1, 1), "writers_16": round(lib_16, 1)},
        "ratio_ours_to_library": {"writers_1": round(ours_1 / lib_1, 2), "writers_16": round(ours_16 / lib_16, 2)},
        "relay_lag_ms": lag,
        "notes": "each append is one transaction holding one event plus its outbox row; "
        "the library run uses PostgresApplicationRecorder (one event per insert_events call)",
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
        kafka_port, controller_port, pg_port = free_ports(3)
        stack = LocalStack(Path(tmp), kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
        try:
            stack.start()
            results = asyncio.run(main_async(stack, Path(tmp)))
        finally:
            stack.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "kernel-latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    a, lib, lag = results["append_events_per_s"], results["eventsourcing_library_events_per_s"], results["relay_lag_ms"]
    print(f"append events/s      1 writer: {a['writers_1']:>9}   16 writers: {a['writers_16']:>9}")
    print(f"eventsourcing lib    1 writer: {lib['writers_1']:>9}   16 writers: {lib['writers_16']:>9}")
    print(
        f"ratio ours/library   1 writer: {results['ratio_ours_to_library']['writers_1']:>9}   16 writers: {results['ratio_ours_to_library']['writers_16']:>9}"
    )
    print(
        f"relay lag at {lag['target_rate_per_s']}/s (achieved {lag['achieved_rate_per_s']}/s): "
        f"p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()

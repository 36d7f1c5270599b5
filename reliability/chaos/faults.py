"""The faults: each injects itself into a running harness, lasts its time and undoes itself.

A fault that needs more than the audit to call the system recovered (rewind: redelivered
messages were dropped as duplicates; poison: every poison message dead-lettered and passed)
sets `harness.verify`, which the recovery loop calls.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import httpx

from reliability.chaos import faults_sigterm
from reliability.chaos.config import (
    ALL_FAULTS,
    PAYMENT_CONSUMER,
    SAGA_CONSUMER,
    SERVICE_NAMES,
    SHIPPING_CONSUMER,
    WRITE_CONSUMERS,
    FaultResult,
)
from reliability.chaos.poison import (
    Poison,
    commit_offsets_to_zero,
    dead_lettered_by,
    expected_bad_data,
    expected_dead_letterers,
    inject_poison,
)
from reliability.faultproxy import Mode
from shared.contract import EVENT_TOPICS

if TYPE_CHECKING:
    from reliability.chaos.harness import ChaosHarness

Inject = Callable[[FaultResult], Awaitable[None]]


def injector(h: ChaosHarness, fault: str) -> Inject:
    if fault in faults_sigterm.FAULTS:
        return faults_sigterm.injector(h, fault)
    if fault.startswith("kill-") and fault[5:] in SERVICE_NAMES:
        return lambda r: kill_service(h, fault[5:], r)
    table: dict[str, Inject] = {
        "kill-order-replica": lambda r: kill_service(h, "order", r),
        "kill-kafka": lambda r: kill_kafka(h, r),
        "pg-immediate": lambda r: pg_immediate(h, r),
        "sigstop-payment": lambda r: sigstop(h, "payment", r),
        "sigstop-shipping": lambda r: sigstop(h, "shipping", r),
        "rewind-offsets": lambda r: rewind(h, r),
        "poison": lambda r: poison(h, r),
    }
    if fault in table:
        return table[fault]
    target, _, mode = fault.partition("-")
    if target in ("pg", "kafka") and mode in ("latency", "reset", "blackhole"):
        return lambda r: proxy_fault(h, target, mode, r)
    raise ValueError(f"unknown fault {fault!r}; known: {', '.join(ALL_FAULTS)}")


async def kill_service(h: ChaosHarness, name: str, result: FaultResult) -> None:
    proc = h.service(name)
    pid = proc.pid()
    await asyncio.to_thread(proc.kill)
    result.details["killed_pid"] = pid
    await asyncio.sleep(h.config.fault_s)
    proc.start()
    t = time.monotonic()
    await h.wait_healthy([name])
    result.details["restart_healthy_s"] = round(time.monotonic() - t, 2)


async def kill_kafka(h: ChaosHarness, result: FaultResult) -> None:
    await asyncio.to_thread(h.stack.kill_kafka)
    await asyncio.sleep(h.config.fault_s)
    t = time.monotonic()
    await asyncio.to_thread(h.stack.start_kafka)
    result.details["kafka_restart_s"] = round(time.monotonic() - t, 2)


async def pg_immediate(h: ChaosHarness, result: FaultResult) -> None:
    await asyncio.to_thread(h.stack.stop_postgres, "immediate")
    await asyncio.sleep(h.config.fault_s)
    t = time.monotonic()
    await asyncio.to_thread(h.stack.start_postgres)
    result.details["postgres_restart_s"] = round(time.monotonic() - t, 2)


async def sigstop(h: ChaosHarness, name: str, result: FaultResult) -> None:
    proc = h.service(name)
    if not proc.send_signal(signal.SIGSTOP):
        raise RuntimeError(f"{name} is not running")
    result.details["stopped_s"] = h.config.sigstop_s
    try:
        await asyncio.sleep(h.config.sigstop_s)
    finally:
        proc.send_signal(signal.SIGCONT)


async def proxy_fault(h: ChaosHarness, target: str, mode: str, result: FaultResult) -> None:
    proxy = h.pg_proxy if target == "pg" else h.kafka_proxy
    assert proxy is not None
    result.details["proxied_service"] = h.config.proxied
    latency = h.config.latency_ms if mode == "latency" else 0.0
    await asyncio.to_thread(proxy.set_mode, Mode(mode), latency)
    try:
        await asyncio.sleep(h.config.fault_s)
    finally:
        await asyncio.to_thread(proxy.set_mode, Mode.PASS)
    result.details["proxy"] = await asyncio.to_thread(proxy.state)


async def rewind(h: ChaosHarness, result: FaultResult) -> None:
    """Stop the consumers' services, forget every position (DB and Kafka), restart."""
    plan: list[tuple[str, str, tuple[str, ...]]] = [
        (svc, group, topics) for svc, (group, topics) in WRITE_CONSUMERS.items()
    ]
    plan.append(("query", await query_consumer(h), EVENT_TOPICS))
    procs = {svc: h.service(svc) for svc, *_ in plan}
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs.values()))
    rewound: dict[str, int] = {}
    for svc, group, topics in plan:
        conn = await asyncpg.connect(h.stack.pg_dsn(svc), timeout=10)
        try:
            deleted = await conn.execute("DELETE FROM consumer_positions WHERE consumer = $1", group)
        finally:
            await conn.close()
        rewound[group] = await commit_offsets_to_zero(h.stack.kafka_bootstrap, group, topics)
        result.details.setdefault("positions_deleted", {})[group] = deleted
    result.details["kafka_partitions_rewound"] = rewound
    for proc in procs.values():
        proc.start()
    await h.wait_healthy(procs)

    async def verify(r: FaultResult) -> bool:
        """The restarted consumers re-read everything and dropped it as duplicates (inbox)."""
        dropped = {svc: await duplicates_dropped(h, svc) for svc in procs}
        r.details["redelivered_duplicates_dropped"] = dropped
        return all(n > 0 for n in dropped.values())

    h.verify = verify


async def duplicates_dropped(h: ChaosHarness, service: str) -> int:
    """consumer_messages_total{outcome="duplicate"} of a service since it started."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(h.stack.service_url(service) + "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("consumer_messages_total{") and 'outcome="duplicate"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def query_consumer(h: ChaosHarness) -> str:
    """The consumer group of the query service's current view generation."""
    conn = await asyncpg.connect(h.stack.pg_dsn("query"), timeout=10)
    try:
        name: str | None = await conn.fetchval("SELECT consumer FROM view_generations WHERE state = 'current'")
    finally:
        await conn.close()
    if name is None:
        raise RuntimeError("the query service has no current view generation")
    return name


async def poison(h: ChaosHarness, result: FaultResult) -> None:
    query_group = await query_consumer(h)
    injected = await inject_poison(h.stack.kafka_bootstrap)
    expected = expected_dead_letterers(query_group)
    result.details["poison_injected"] = len(injected)

    async def verify(r: FaultResult) -> bool:
        found = await dead_lettered_by(h.stack.kafka_bootstrap)
        missing = []
        for p in injected:
            who = found.get((p.topic, p.partition, p.offset), set())
            wanted = expected[p.topic] if p.kind == "garbage" else expected_bad_data(p.topic, query_group)
            if not wanted <= who:
                missing.append(
                    f"{p.kind}@{p.topic}:{p.partition}:{p.offset} DLQ'd by {sorted(who)}, expected {sorted(wanted)}"
                )
        not_past = await moved_past(h, injected, query_group)
        r.details["poison_not_dead_lettered"] = missing
        r.details["poison_positions_not_past"] = not_past
        return not missing and not not_past

    h.verify = verify
    await asyncio.sleep(h.config.fault_s)


async def moved_past(h: ChaosHarness, injected: Sequence[Poison], query_group: str) -> list[str]:
    """Every consumer of a poisoned partition has a stored position past the poison (the
    positions not past it)."""
    dbs = {PAYMENT_CONSUMER: "payment", SHIPPING_CONSUMER: "shipping", SAGA_CONSUMER: "order", query_group: "query"}
    not_past: list[str] = []
    positions: dict[tuple[str, str, int], int] = {}
    for group, db in dbs.items():
        conn = await asyncpg.connect(h.stack.pg_dsn(db), timeout=10)
        try:
            for row in await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer = $1", group
            ):
                positions[(group, row["topic"], row["partition"])] = row["next_offset"]
        finally:
            await conn.close()
    readers = expected_dead_letterers(query_group)
    for p in injected:
        for group in readers[p.topic]:
            if positions.get((group, p.topic, p.partition), -1) <= p.offset:
                not_past.append(f"{group} not past {p.topic}:{p.partition}:{p.offset}")
    return not_past

"""What the benchmarked system spends: CPU of its processes, PostgreSQL commits, Kafka messages.

Snapshots are taken before and after each step; `deltas` turns two of them into the step's costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.observe import partitions_of
from infra.stack import LocalStack
from shared.contract import COMMAND_TOPICS, DLQ_TOPICS, EVENT_TOPICS

SERVICES = ("order", "payment", "shipping", "query")
DATABASES = ("order", "payment", "shipping", "query")
PROCESSES = (*SERVICES, "kafka", "postgres")
TOPICS = EVENT_TOPICS + COMMAND_TOPICS
OFFSETS_TOPIC = "__consumer_offsets"
# Loaded by the bench's own PostgreSQL start (InfraSettings.pg_settings): top-level statements
# per database, what each service sends (a PL/pgSQL function call counts once).
PG_STAT_STATEMENTS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top"}
_STATEMENTS = """
SELECT d.datname, sum(s.calls)::bigint AS calls,
       (sum(s.calls) FILTER (WHERE upper(left(ltrim(s.query), 5)) NOT IN ('BEGIN', 'COMMI', 'ROLLB')))::bigint AS data
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = ANY($1::text[]) GROUP BY d.datname
"""


def _own_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    # children_*: reaped children (PostgreSQL backends that exited; the load generator).
    return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and all its live descendants (and, via children_*, the reaped ones)."""
    try:
        proc = psutil.Process(pid)
        total = _own_cpu(proc)
        for child in proc.children(recursive=True):
            try:
                total += _own_cpu(child)
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return None


@dataclass
class Snapshot:
    wall: float
    cpu: dict[str, float]
    machine_busy: float
    commits: dict[str, int]
    rollbacks: dict[str, int]
    xid: int
    offsets: dict[str, int]
    statements: dict[str, int] = field(default_factory=dict)  # all top-level statements per database
    data_statements: dict[str, int] = field(default_factory=dict)  # without BEGIN/COMMIT/ROLLBACK


class Resources:
    """CPU of our processes, PostgreSQL commit counters and Kafka end offsets, on demand."""

    def __init__(self, stack: LocalStack, pids: dict[str, int]) -> None:
        self.stack = stack
        self.pids = pids
        self.admin: asyncpg.Connection | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []
        self.has_statements = False

    async def open(self) -> None:
        self.admin = await asyncpg.connect(self.stack.pg_admin_dsn())
        try:
            await self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await self.admin.fetch(_STATEMENTS, list(DATABASES))
            self.has_statements = True
        except asyncpg.PostgresError:
            self.has_statements = False  # not preloaded: statements are not reported
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.stack.kafka_bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        self.consumer = consumer
        known = await partitions_of(self.stack.kafka_bootstrap, [*TOPICS, *DLQ_TOPICS, OFFSETS_TOPIC])
        self.partitions = [TopicPartition(topic, p) for topic, ps in known.items() for p in ps]

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self.consumer is not None:
            await self.consumer.stop()

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            value = tree_cpu(pid)
            if value is not None:
                out[name] = value
        out["bench_client"] = _own_cpu(psutil.Process())
        return out

    async def pg_counters(self) -> tuple[dict[str, int], dict[str, int], int]:
        assert self.admin is not None
        rows = await self.admin.fetch(
            "SELECT datname, xact_commit, xact_rollback FROM pg_stat_database WHERE datname = ANY($1::text[])",
            list(DATABASES),
        )
        xid = await self.admin.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        return (
            {r["datname"]: int(r["xact_commit"]) for r in rows},
            {r["datname"]: int(r["xact_rollback"]) for r in rows},
            int(xid),
        )

    async def statements(self) -> tuple[dict[str, int], dict[str, int]]:
        """Top-level statements per database so far: all, and without transaction control."""
        if self.admin is None or not self.has_statements:
            return {}, {}
        rows = await self.admin.fetch(_STATEMENTS, list(DATABASES))
        return {r["datname"]: int(r["calls"]) for r in rows}, {r["datname"]: int(r["data"] or 0) for r in rows}

    async def calls_by_statement(self) -> dict[tuple[str, str], tuple[int, float]]:
        """Calls so far of each top-level statement text, per database, and PostgreSQL's
        execution milliseconds of them (the idle breakdown; which statements cost the server)."""
        if self.admin is None or not self.has_statements:
            return {}
        rows = await self.admin.fetch(
            """SELECT d.datname, s.query, sum(s.calls)::bigint AS calls, sum(s.total_exec_time) AS exec_ms
               FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
               WHERE d.datname = ANY($1::text[]) GROUP BY 1, 2""",
            list(DATABASES),
        )
        return {(r["datname"], r["query"]): (int(r["calls"]), float(r["exec_ms"] or 0.0)) for r in rows}

    async def offsets(self) -> dict[str, int]:
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(self.partitions)
        out: dict[str, int] = {}
        for tp, end in ends.items():
            out[tp.topic] = out.get(tp.topic, 0) + int(end)
        return out

    async def snapshot(self, *, with_cpu: bool = True) -> Snapshot:
        commits, rollbacks, xid = await self.pg_counters()
        t = psutil.cpu_times()
        busy = float(
            t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        )
        statements, data = await self.statements()
        return Snapshot(
            time.time(),
            self.cpu() if with_cpu else {},
            busy,
            commits,
            rollbacks,
            xid,
            await self.offsets(),
            statements,
            data,
        )

    async def message_sizes(self, per_partition: int = 200) -> dict[str, float]:
        """Mean value size of the latest messages of each of the system's topics."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.stack.kafka_bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [tp for tp in self.partitions if tp.topic in TOPICS]
            ends = await consumer.end_offsets(tps)
            wanted = {tp: end for tp, end in ends.items() if end > 0}
            consumer.assign(list(wanted))
            for tp, end in wanted.items():
                consumer.seek(tp, max(0, end - per_partition))
            sizes: dict[str, list[int]] = {}
            remaining = dict(wanted)
            deadline = time.monotonic() + 15
            while remaining and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    sizes.setdefault(tp.topic, []).extend(len(r.value or b"") for r in records)
                    if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
            return {topic: round(sum(v) / len(v), 1) for topic, v in sizes.items() if v}
        finally:
            await consumer.stop()


def deltas(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    wall = after.wall - before.wall
    cpu = {k: after.cpu[k] - before.cpu[k] for k in after.cpu if k in before.cpu}
    ours = sum(v for k, v in cpu.items())
    machine = after.machine_busy - before.machine_busy
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "machine_busy_cores": machine / wall if wall else 0.0,
        "other_load_cores": max(0.0, (machine - ours) / wall) if wall else 0.0,
        "commits": {db: after.commits.get(db, 0) - before.commits.get(db, 0) for db in DATABASES},
        "rollbacks": {db: after.rollbacks.get(db, 0) - before.rollbacks.get(db, 0) for db in DATABASES},
        "write_xacts": after.xid - before.xid,
        "statements": {db: after.statements[db] - before.statements.get(db, 0) for db in after.statements},
        "data_statements": {
            db: after.data_statements[db] - before.data_statements.get(db, 0) for db in after.data_statements
        },
        "messages": {t: after.offsets.get(t, 0) - before.offsets.get(t, 0) for t in after.offsets},
    }

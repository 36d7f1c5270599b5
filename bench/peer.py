"""The peer in `make bench`: the same saga as a DBOS Transact workflow, on the same PostgreSQL.

Why a peer: a figure of ours means little alone; the same five write transactions (order
written, payment authorized, shipment scheduled, payment captured, order confirmed) run as an
idiomatic DBOS Transact workflow in one process, against the same PostgreSQL in the same run,
say what a durable-workflow library does with the same machine.

Idiomatic: `@DBOS.workflow()` over five `@ds.transaction()` steps of DBOS's asyncio
PostgreSQL datasource (SQLAlchemy + psycopg 3, DBOS's default isolation), the system database
in its own PostgreSQL database, workflows started by calling the workflow function (DBOS
checkpoints the workflow and every step). Closed loop: `concurrency` callers each run one
workflow after another; the concurrency doubles each step (escalating like ours) until the
throughput stops growing. The best step is the highest throughput whose p99 < 1 s (the same
bound ours must keep). Run as `python -m bench.peer --dsn ... --admin-dsn ...`; prints one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from bench.figures import pct

P99_BOUND_MS = 1000.0  # a step counts only if it keeps the bound ours must keep
DATABASE = "bench_peer"
SCHEMA = """
CREATE TABLE IF NOT EXISTS peer_orders (
    order_id text PRIMARY KEY, status text NOT NULL, amount_cents bigint NOT NULL, updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_payments (
    order_id text PRIMARY KEY, status text NOT NULL, amount_cents bigint NOT NULL, updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_shipments (
    order_id text PRIMARY KEY, status text NOT NULL, country text NOT NULL, updated_at timestamptz NOT NULL
);
"""


@dataclass(frozen=True)
class Step:
    concurrency: int
    seconds: float
    completed: int
    errors: int
    latencies_ms: list[float]
    cpu_s: float  # this process's CPU over the step (DBOS and its callers; PostgreSQL not included)

    @property
    def per_s(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "workflows_per_s": round(self.per_s, 1),
            "completed": self.completed,
            "errors": self.errors,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "process_cpu_ms_per_workflow": round(self.cpu_s * 1000 / self.completed, 2) if self.completed else None,
        }


def percentile(values: list[float], q: float) -> float | None:
    """The bench's percentile (bench.figures.pct) rounded to 0.1 ms; None without values."""
    return round(pct(values, q), 1) if values else None


def best(steps: list[Step]) -> Step | None:
    """The highest-throughput step that kept p99 under the bound."""
    kept = [s for s in steps if s.completed and (percentile(s.latencies_ms, 99) or 0.0) < P99_BOUND_MS]
    return max(kept, key=lambda s: s.per_s, default=None)


def keep_escalating(steps: list[Step]) -> bool:
    """Double again while the last step still gained 5 % over the best before it."""
    if len(steps) < 2:
        return True
    before = max(s.per_s for s in steps[:-1])
    return steps[-1].per_s > before * 1.05


async def prepare(admin_dsn: str, dsn: str) -> None:
    """A fresh database for the peer (its tables and DBOS's system tables), on the same server."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f'CREATE DATABASE {DATABASE} OWNER "{urlsplit(dsn).username}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


async def run_peer(dsn: str, levels: list[int], step_s: float) -> dict[str, Any]:
    """Launch DBOS, run the saga workflow at each concurrency level, return the figures."""
    from dbos import DBOS, AsyncSQLAlchemyDatasource
    from sqlalchemy import text

    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    pool = max(levels) + 4
    DBOS(config={"name": "bench-peer", "system_database_url": url, "sys_db_pool_size": pool, "log_level": "WARNING"})
    ds = await AsyncSQLAlchemyDatasource.create(url, engine_kwargs={"pool_size": pool, "max_overflow": 0})

    async def write(sql: str, **params: Any) -> None:
        await ds.sql_session().execute(text(sql), {**params, "now": time.time()})

    @ds.transaction()
    async def place(order_id: str, amount: int) -> None:
        await write("INSERT INTO peer_orders VALUES (:o, 'PLACED', :a, to_timestamp(:now))", o=order_id, a=amount)

    @ds.transaction()
    async def authorize(order_id: str, amount: int) -> None:
        await write("INSERT INTO peer_payments VALUES (:o, 'AUTHORIZED', :a, to_timestamp(:now))", o=order_id, a=amount)

    @ds.transaction()
    async def schedule(order_id: str, country: str) -> None:
        await write(
            "INSERT INTO peer_shipments VALUES (:o, 'SCHEDULED', :c, to_timestamp(:now))", o=order_id, c=country
        )

    @ds.transaction()
    async def capture(order_id: str) -> None:
        await write(
            "UPDATE peer_payments SET status = 'CAPTURED', updated_at = to_timestamp(:now) WHERE order_id = :o",
            o=order_id,
        )

    @ds.transaction()
    async def confirm(order_id: str) -> None:
        await write(
            "UPDATE peer_orders SET status = 'CONFIRMED', updated_at = to_timestamp(:now) WHERE order_id = :o",
            o=order_id,
        )

    @DBOS.workflow()
    async def saga(order_id: str, amount: int, country: str) -> str:
        await place(order_id, amount)
        await authorize(order_id, amount)
        await schedule(order_id, country)
        await capture(order_id)
        await confirm(order_id)
        return "CONFIRMED"

    DBOS.launch()
    try:
        await saga(f"warm-{uuid.uuid4()}", 1000, "FR")  # connections, schema caches
        steps: list[Step] = []
        for level in levels:
            steps.append(await _step(saga, level, step_s))
            print(orjson.dumps({"progress": steps[-1].figures()}).decode(), file=sys.stderr, flush=True)
            if not keep_escalating(steps):
                break
    finally:
        DBOS.destroy()
        await ds.engine.dispose()
    top = best(steps)
    return {
        "name": "DBOS Transact",
        "version": metadata.version("dbos"),
        "saturation_per_s": round(top.per_s, 1) if top else 0.0,
        "p50_ms": percentile(top.latencies_ms, 50) if top else None,
        "p99_ms": percentile(top.latencies_ms, 99) if top else None,
        "best_concurrency": top.concurrency if top else None,
        "process_cpu_ms_per_workflow": top.figures()["process_cpu_ms_per_workflow"] if top else None,
        "steps": [s.figures() for s in steps],
    }


async def _step(saga: Any, concurrency: int, seconds: float) -> Step:
    """`concurrency` callers, each running one workflow after another, for `seconds`."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await saga(str(uuid.uuid4()), 4200, "FR")
            except Exception as exc:  # a failed workflow is counted, never hidden
                errors += 1
                logging.getLogger("bench.peer").warning("workflow failed", extra={"error": repr(exc)})
                continue
            latencies.append((time.monotonic() - started) * 1000)

    began, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Step(concurrency, time.monotonic() - began, len(latencies), errors, latencies, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--admin-dsn", required=True, help="a DSN that may create the peer's database")
    parser.add_argument("--dsn", required=True, help=f"the peer's database ({DATABASE}) on the same server")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64", help="concurrency levels, escalated in order")
    parser.add_argument("--step-s", type=float, default=10.0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    async def go() -> dict[str, Any]:
        await prepare(args.admin_dsn, args.dsn)
        return await run_peer(args.dsn, levels, args.step_s)

    print(orjson.dumps(asyncio.run(go())).decode(), flush=True)


if __name__ == "__main__":
    main()

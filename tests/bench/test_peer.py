"""The peer (bench/peer.py): its arithmetic, and one short run of the DBOS workflow on real
PostgreSQL that leaves every saga's five writes behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bench import peer
from bench.figures import peer_figures
from infra.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]


def _step(concurrency: int, per_s: float, p99: float) -> peer.Step:
    return peer.Step(concurrency, 1.0, int(per_s), 0, [p99] * int(per_s), 0.5)


def test_percentile_is_the_benchs() -> None:
    values = [float(v) for v in range(1, 101)]
    assert peer.percentile(values, 0) == 1.0 and peer.percentile(values, 100) == 100.0
    assert peer.percentile(values, 99) == 99.0
    assert peer.percentile([], 50) is None


def test_best_is_the_fastest_step_within_the_p99_bound() -> None:
    steps = [_step(1, 10, 100), _step(4, 30, 400), _step(16, 40, 1500)]
    best = peer.best(steps)
    assert best is not None and best.concurrency == 4


def test_escalation_stops_when_throughput_stops_growing() -> None:
    assert peer.keep_escalating([_step(1, 10, 50)])
    assert peer.keep_escalating([_step(1, 10, 50), _step(2, 20, 60)])
    assert not peer.keep_escalating([_step(1, 10, 50), _step(2, 20, 60), _step(4, 20, 120)])


def test_ratio_is_ours_over_the_peers() -> None:
    figures = peer_figures(
        {"name": "DBOS Transact", "version": "3.4.0", "saturation_per_s": 40.0, "p50_ms": 20.0, "p99_ms": 50.0}, 100.0
    )
    assert figures is not None and figures["ratio"] == 2.5
    assert peer_figures({"error": "exited 1"}, 100.0) == {"error": "exited 1"}


@pytest.mark.integration
async def test_a_short_peer_run_confirms_every_saga(stack: LocalStack) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--admin-dsn", stack.pg_admin_dsn(), "--dsn", stack.pg_dsn(peer.DATABASE)]
        + ["--levels", "1,2", "--step-s", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["name"] == "DBOS Transact" and result["version"] == "3.4.0"
    completed = sum(s["completed"] for s in result["steps"])
    assert completed > 0 and all(s["errors"] == 0 for s in result["steps"])
    conn = await asyncpg.connect(stack.pg_dsn(peer.DATABASE))
    try:
        confirmed = await conn.fetchval("SELECT count(*) FROM peer_orders WHERE status = 'CONFIRMED'")
        captured = await conn.fetchval("SELECT count(*) FROM peer_payments WHERE status = 'CAPTURED'")
        scheduled = await conn.fetchval("SELECT count(*) FROM peer_shipments WHERE status = 'SCHEDULED'")
        workflows = await conn.fetchval("SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'")
    finally:
        await conn.close()
    assert confirmed == captured == scheduled == workflows == completed + 1  # + the warm-up saga
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {peer.DATABASE} WITH (FORCE)")
    finally:
        await admin.close()

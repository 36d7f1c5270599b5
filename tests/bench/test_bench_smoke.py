"""`make bench` end to end, shortened: its own stack, one low rate, the floor, JSON + PNG.

It proves the benchmark runs from a fresh clone; its figures are not asserted (machines are
noisy), only that every figure the issue asks for is there and consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_a_short_bench_run_writes_every_figure(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BENCH_RATES": "5",
        "BENCH_STEP_S": "3",
        "BENCH_WARMUP_S": "2",
        "BENCH_RESULTS_DIR": str(tmp_path),
        "BENCH_PEER_LEVELS": "1,2",
        "BENCH_PEER_STEP_S": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "bench.system", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "saturation:" in run.stdout and "floor:" in run.stdout  # the summary table was printed
    result = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.png").stat().st_size > 0
    [step] = result["steps"]
    assert step["rate_per_s"] == 5 and step["accepted"] > 0 and step["completed"] > 0
    assert step["outcomes"].get("CONFIRMED", 0) > 0
    assert not [k for k in step["outcomes"] if "unexpected" in k or k == "not_final_after_drain"], step["outcomes"]
    for side in ("placed_to_confirmed_write_ms", "placed_to_confirmed_query_ms"):
        figures = step["latency"][side]
        assert figures["p50"] <= figures["p95"] <= figures["p99"] <= figures["max"]
    assert set(step["cpu_s_per_saga"]) >= {"order", "payment", "shipping", "query", "kafka", "postgres"}
    assert result["p99_placed_to_confirmed_ms"]["5"] == step["latency"]["placed_to_confirmed_write_ms"]["p99"]
    assert "saturation_sagas_per_s" in result
    assert result["cpu_ms_per_saga"] > 0 and result["bench_client_cpu_ms_per_saga"] is not None
    assert set(result["cpu_ms_per_saga_by_process"]) == {"order", "payment", "shipping", "query", "kafka", "postgres"}
    assert result["commits_per_saga"]["total"] > 0
    statements = result["statements_per_saga"]  # pg_stat_statements, loaded by the bench's PostgreSQL
    assert set(statements) == {"order", "payment", "shipping", "query", "total"} and statements["total"] > 0
    peer = result["peer"]
    assert peer["name"] == "DBOS Transact" and peer["version"] and peer["saturation_per_s"] > 0, peer
    assert peer["p50_ms"] <= peer["p99_ms"] and peer["ratio"] is not None
    floor = result["floor"]
    assert floor["kafka_messages_per_s"] > 0 and floor["postgres_commits_per_s"] > 0
    assert floor["system_spends_per_saga"] and floor["theoretical_max_sagas_per_s"]

"""The benchmark's own arithmetic: the outcome mix, percentiles, the saturation headline, the
load generator's connection reuse, the codec benchmark comparing like with like, and the
wake-up floor."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import pytest

from bench import codecs, figures, floor, load


def test_the_mix_is_90_5_5_interleaved() -> None:
    kinds = [load.kind_of(i) for i in range(1000)]
    assert Counter(kinds) == {load.HAPPY: 900, load.DECLINED: 50, load.SHIP_FAIL: 50}
    assert all(Counter(kinds[i : i + 20])[load.HAPPY] == 18 for i in range(0, 1000, 20))


def test_percentiles_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert figures.pct(values, 50) in (50.0, 50.5, 51.0)
    assert figures.pct(values, 99) >= 99.0 and figures.pct(values, 100) == 100.0
    summary = figures.summary(values)
    assert summary is not None and summary["max"] == 100.0 and summary["p50"] <= summary["p95"] <= summary["p99"]
    assert figures.summary([]) is None


def _step(rate: float, completed: float, keeps_up: bool, p99: float) -> dict[str, Any]:
    latency = {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99, "max": p99}
    return {
        "rate_per_s": rate,
        "completed_sagas_per_s": completed,
        "keeps_up": keeps_up,
        "latency": {"placed_to_confirmed_write_ms": latency, "placed_to_confirmed_query_ms": latency},
    }


def test_saturation_is_the_highest_rate_that_kept_up() -> None:
    steps = [_step(10, 10, True, 80), _step(50, 49.8, True, 400), _step(100, 61, False, 3000)]
    head = figures.headline({"steps": steps}, figures.make_config(quick=True))
    assert head["saturation_rate_per_s"] == 50 and head["saturation_sagas_per_s"] == 49.8
    assert head["max_completed_sagas_per_s"] == 61 and head["escalation_stopped_at"] == 100
    assert head["p99_placed_to_confirmed_ms"] == {"10": 80, "50": 400, "100": 3000}
    targets = head["targets"]
    assert targets["met"]["sustained_sagas_per_s"] is False
    assert (targets["measured"]["p99_write_ms"], targets["measured"]["p99_query_ms"]) == (3000, 3000), "at 100/s"
    assert targets["met"]["p99_write_ms"] is False and targets["measured"]["peer_ratio"] is None
    none_kept_up = figures.headline({"steps": [_step(10, 3, False, 5000)]}, figures.make_config(quick=True))
    assert none_kept_up["saturation_rate_per_s"] is None and none_kept_up["saturation_sagas_per_s"] == 0.0


class _FakeConnection:
    def __init__(self) -> None:
        self.idle_since = time.monotonic()
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_the_pool_reuses_a_fresh_idle_connection_but_not_a_stale_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = load.Pool("127.0.0.1", 1, max_connections=4)
    fresh, stale = _FakeConnection(), _FakeConnection()
    pool.live = 2
    pool.release(stale)  # type: ignore[arg-type]
    stale.idle_since -= load.MAX_IDLE_S + 1  # the server may be closing it by now
    pool.release(fresh)  # type: ignore[arg-type]
    first: Any = await pool.acquire()
    assert first is fresh
    opened: list[Any] = []

    async def open_connection(host: str, port: int) -> _FakeConnection:
        opened.append((host, port))
        return _FakeConnection()

    monkeypatch.setattr(load.Connection, "open", open_connection)
    replacement: Any = await pool.acquire()
    assert stale.closed and replacement is not stale and opened == [("127.0.0.1", 1)]


def test_the_codecs_compared_keep_one_contract_and_are_all_measured() -> None:
    for codec in codecs.codecs():
        codecs.check_same_contract(codec)  # same JSON, read back equal, invalid input refused
    result = codecs.measure(repeats=1, min_loop_s=0.001)
    rows = result["results"]
    assert [r["codec"] for r in rows] == [c.name for c in codecs.codecs()]
    assert all(r["encode_us"] > 0 and r["decode_validate_us"] > 0 and r["bytes"] == rows[0]["bytes"] for r in rows)
    assert min(r["decode_validate_vs_fastest"] for r in rows) == 1.0


def test_the_wakeup_floor_measures_both_placements_in_a_process_of_its_own() -> None:
    """Both ping-pongs really exchanged their messages (a round trip takes time and CPU on both
    sides), and the forking runs apart from the caller, whose affinity stays as it was."""
    affinity = os.sched_getaffinity(0)
    result = floor.wakeup_floor_apart()
    assert os.sched_getaffinity(0) == affinity
    assert result["exchanges"] == 20_000
    for placement in ("placed_by_the_scheduler", "both_on_one_core"):
        measured = result[placement]
        assert measured["round_trip_us"] > 0
        assert measured["cpu_us_per_round_trip_each_side"] > 0
    assert result["cost_ratio"] == round(
        result["placed_by_the_scheduler"]["cpu_us_per_round_trip_each_side"]
        / result["both_on_one_core"]["cpu_us_per_round_trip_each_side"],
        1,
    )

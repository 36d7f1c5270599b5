"""The benchmark's arithmetic (pure): its configuration, percentiles, one step's figures and
the saturation headline over all steps."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.load import EXPECTED_STATUS
from bench.observe import QueryFinal, WriteFinal
from bench.resources import OFFSETS_TOPIC, PROCESSES
from shared.contract import OrderStatus


@dataclass(frozen=True)
class Config:
    mode: str
    rates: list[float]
    step_s: float
    warmup_rate: float
    warmup_s: float
    idle_s: float
    drain_timeout_s: float
    floor_s: float
    pg_floor_connections: int = 16
    keep_up_ratio: float = 0.95
    p99_bound_ms: float = 1000.0
    max_error_ratio: float = 0.01
    sample_every: int = 50
    profile_rate: float | None = None
    peer_levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    peer_step_s: float = 10.0

    @property
    def out_prefix(self) -> str:
        return "profiled" if self.profile_rate else "latest"


def make_config(quick: bool) -> Config:
    if quick:
        config = Config(
            "quick",
            [10, 25, 50, 75, 100, 150, 200, 300, 400, 800],
            step_s=4,
            warmup_rate=40,
            warmup_s=12,
            idle_s=1,
            drain_timeout_s=10,
            floor_s=2,
            peer_levels=(1, 4, 16, 64),
            peer_step_s=3.0,
        )
    else:
        config = Config(
            "full",
            [10, 15, 25, 50, 75, 100, 150, 200, 250, 300, 350, 400, 600, 800, 1200, 1600],
            step_s=15,
            warmup_rate=40,
            warmup_s=30,
            idle_s=3,
            drain_timeout_s=40,
            floor_s=6,
        )
    env = os.environ
    rates = [float(r) for r in env["BENCH_RATES"].split(",")] if env.get("BENCH_RATES") else config.rates
    step_s = float(env.get("BENCH_STEP_S", config.step_s))
    warmup_s = float(env.get("BENCH_WARMUP_S", config.warmup_s))
    idle_s = float(env.get("BENCH_IDLE_S", config.idle_s))
    profile = float(env["BENCH_PROFILE_RATE"]) if env.get("BENCH_PROFILE_RATE") else None
    levels = env.get("BENCH_PEER_LEVELS")
    return Config(
        config.mode,
        rates,
        step_s,
        config.warmup_rate,
        warmup_s,
        idle_s,
        config.drain_timeout_s,
        config.floor_s,
        profile_rate=profile,
        peer_levels=tuple(int(x) for x in levels.split(",")) if levels else config.peer_levels,
        peer_step_s=float(env.get("BENCH_PEER_STEP_S", config.peer_step_s)),
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 1),
        "p95": round(pct(values, 95), 1),
        "p99": round(pct(values, 99), 1),
        "max": round(max(values), 1),
    }


def per(numerator: float, denominator: float, digits: int = 3) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _per_db(counts: dict[str, int], completed: int) -> dict[str, float | None]:
    """Counts per database divided by the sagas, with their total ({} when not measured)."""
    if not counts:
        return {}
    return {**{db: per(v, completed, 2) for db, v in counts.items()}, "total": per(sum(counts.values()), completed, 2)}


def step_figures(
    cfg: Config,
    rate: float,
    load: dict[str, Any],
    d: dict[str, Any],
    drain_s: float,
    query_finals: dict[str, QueryFinal],
    write_finals: dict[str, WriteFinal],
    timeline: dict[str, list[float]],
) -> dict[str, Any]:
    """One step's figures from the load generator's records, what the observers saw and what the
    machine spent (`d`: `resources.deltas`); appends the step's points to `timeline`."""
    start, duration = float(load["start"]), float(load["duration"])
    skip = min(1.0, duration / 5)
    w0, w1 = start + skip, start + duration
    accepted: list[tuple[str, str, float]] = []  # (order_id, kind, sent)
    errors: Counter[str] = Counter()
    post_ms: list[float] = []
    late_ms: list[float] = []
    accepted_in_window = 0
    for kind, planned, sent, done, status, error, oid in zip(
        load["kind"], load["planned"], load["sent"], load["done"], load["status"], load["error"], load["order_id"]
    ):
        late_ms.append((sent - planned) * 1000)
        if status == 202:
            accepted.append((oid, kind, sent))
            post_ms.append((done - sent) * 1000)
            timeline["accepted"].append(done)
            if w0 <= done < w1:
                accepted_in_window += 1
        else:
            errors[error or f"http {status}"] += 1
    lat: dict[str, list[float]] = {
        k: []
        for k in (
            "write_confirmed",
            "published_confirmed",
            "query_confirmed",
            "query_rejected",
            "query_cancelled",
            "query_final",
        )
    }
    outcomes: Counter[str] = Counter()
    completed = completed_in_window = 0
    for oid, kind, sent in accepted:
        q = query_finals.get(oid)
        w = write_finals.get(oid)
        if q is None:
            outcomes["not_final_after_drain"] += 1
            continue
        completed += 1
        timeline["completed"].append(q.visible)
        if w0 <= q.visible < w1:
            completed_in_window += 1
        expected = EXPECTED_STATUS[kind]
        outcomes[q.status if q.status == expected else f"{kind}->{q.status} (unexpected)"] += 1
        lat["query_final"].append((q.visible - sent) * 1000)
        lat[f"query_{q.status.lower()}"].append((q.visible - sent) * 1000)
        if w is not None and w.status == OrderStatus.CONFIRMED:
            timeline["confirmed_write"].append(w.recorded)
            lat["write_confirmed"].append((w.recorded - sent) * 1000)
            lat["published_confirmed"].append((w.received - sent) * 1000)
    finals = [query_finals[oid].visible for oid, _, _ in accepted if oid in query_finals]
    if finals and not outcomes["not_final_after_drain"]:
        drain_s = max(0.0, max(finals) - (start + duration))  # last arrival → last saga final
    n_req = len(load["status"])
    window = w1 - w0
    completed_per_s = completed_in_window / window
    latency = {
        "placed_to_confirmed_write_ms": summary(lat["write_confirmed"]),
        "placed_to_confirmed_query_ms": summary(lat["query_confirmed"]),
        "placed_to_confirmed_published_ms": summary(lat["published_confirmed"]),
        "placed_to_rejected_query_ms": summary(lat["query_rejected"]),
        "placed_to_cancelled_query_ms": summary(lat["query_cancelled"]),
        "placed_to_final_query_ms": summary(lat["query_final"]),
        "post_orders_response_ms": summary(post_ms),
    }
    p99_query = (latency["placed_to_confirmed_query_ms"] or {}).get("p99")
    error_count = sum(errors.values())
    checks = {
        "completed_ratio_ok": completed_per_s >= cfg.keep_up_ratio * rate,
        "p99_query_ok": p99_query is not None and p99_query < cfg.p99_bound_ms,
        "errors_ok": error_count <= cfg.max_error_ratio * max(1, n_req),
        "drained_ok": outcomes["not_final_after_drain"] == 0,
    }
    cpu_per_saga = {k: per(v, completed, 5) for k, v in d["cpu_s"].items()}
    system_cpu = sum(v for k, v in d["cpu_s"].items() if k in PROCESSES)
    cpu_per_saga["system_total"] = per(system_cpu, completed, 5)
    event_topics = {t: v for t, v in d["messages"].items() if t != OFFSETS_TOPIC}
    samples = [s for s in load["samples"] if "seen" in s and s["order_id"] in query_finals]
    sse_minus_poll = [(query_finals[s["order_id"]].visible - s["seen"]) * 1000 for s in samples]
    return {
        "rate_per_s": rate,
        "duration_s": duration,
        "window": {"start": start, "end": start + duration, "measured_from_s": skip},
        "requests": n_req,
        "accepted": len(accepted),
        "accepted_per_s": round(accepted_in_window / window, 1),
        "completed": completed,
        "completed_sagas_per_s": round(completed_per_s, 1),
        "completed_ratio": round(completed_per_s / rate, 3),
        "keeps_up": all(checks.values()),
        "checks": checks,
        "errors": dict(errors),
        "error_count": error_count,
        "outcomes": dict(outcomes),
        "drain_s": round(drain_s, 2),  # from the last planned arrival until the last saga was final
        "latency": latency,
        "generator": {
            "lateness_ms": summary(late_ms),
            "late_over_10ms_ratio": round(sum(1 for v in late_ms if v > 10) / max(1, len(late_ms)), 4),
            "connections_opened": load["connections_opened"],
        },
        "query_sse_vs_longpoll_ms": {
            "sampled": len(samples),
            "p50": round(pct(sse_minus_poll, 50), 1) if samples else None,
            "p95": round(pct(sse_minus_poll, 95), 1) if samples else None,
            "meaning": "SSE receive time minus the time a GET /orders/{id}?min_version=2 long-poll "
            "returned the final status, for a sample of happy orders (> 0: SSE saw it later)",
        },
        "backlog_at_end_of_arrivals": load.get("backlog_at_end_of_arrivals", {}),
        "cpu_s": {k: round(v, 3) for k, v in d["cpu_s"].items()},
        "cpu_cores": {k: round(v / d["wall_s"], 3) for k, v in d["cpu_s"].items()},
        "machine_busy_cores": round(d["machine_busy_cores"], 2),
        "other_load_cores": round(d["other_load_cores"], 2),
        "cpu_s_per_saga": cpu_per_saga,
        "commits_per_saga": {
            **{db: per(v, completed, 2) for db, v in d["commits"].items()},
            "total": per(sum(d["commits"].values()), completed, 2),
        },
        "write_xacts_per_saga": per(d["write_xacts"], completed, 2),
        "statements_per_saga": _per_db(d.get("statements", {}), completed),
        "data_statements_per_saga": _per_db(d.get("data_statements", {}), completed),
        "rollbacks": d["rollbacks"],
        "kafka_messages_per_saga": {
            **{t: per(v, completed, 2) for t, v in event_topics.items() if v},
            "total": per(sum(event_topics.values()), completed, 2),
        },
        "offset_commit_records_per_saga": per(d["messages"].get(OFFSETS_TOPIC, 0), completed, 2),
        "sampled_for_step_s": round(d["wall_s"], 2),
    }


def peer_figures(peer: dict[str, Any] | None, ours: float) -> dict[str, Any] | None:
    """The peer's headline, with ratio = our saturation / the peer's (None when it did not run)."""
    if not peer or "saturation_per_s" not in peer:
        return peer
    theirs = peer["saturation_per_s"]
    return {
        "name": peer["name"],
        "version": peer["version"],
        "saturation_per_s": theirs,
        "p50_ms": peer["p50_ms"],
        "p99_ms": peer["p99_ms"],
        "ratio": per(ours, theirs, 2),
        **{k: v for k, v in peer.items() if k not in ("name", "version", "saturation_per_s", "p50_ms", "p99_ms")},
    }


def headline(result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    steps = result["steps"]
    good = [s for s in steps if s["keeps_up"]]
    best = max(good, key=lambda s: s["rate_per_s"]) if good else None
    sat_sagas = best["completed_sagas_per_s"] if best else 0.0
    at_100 = next((s for s in steps if s["rate_per_s"] == TARGETS["latency_at_rate_per_s"]), None)
    p99_write = ((at_100 or {}).get("latency", {}).get("placed_to_confirmed_write_ms") or {}).get("p99")
    p99_query = ((at_100 or {}).get("latency", {}).get("placed_to_confirmed_query_ms") or {}).get("p99")
    last = steps[-1] if steps else None
    costed = best or (steps[0] if steps else {})  # nothing kept up: the lowest rate's costs
    cpu = costed.get("cpu_s_per_saga", {})
    ms = {k: round(v * 1000, 2) for k, v in cpu.items() if v is not None}
    return {
        "costs_at_rate_per_s": costed.get("rate_per_s"),
        "cpu_ms_per_saga": ms.get("system_total"),
        "cpu_ms_per_saga_by_process": {k: v for k, v in ms.items() if k in PROCESSES},
        "bench_client_cpu_ms_per_saga": ms.get("bench_client"),
        "commits_per_saga": costed.get("commits_per_saga"),
        "statements_per_saga": costed.get("statements_per_saga"),
        "data_statements_per_saga": costed.get("data_statements_per_saga"),
        "at_saturation_note": "CPU, commits and statements per saga of the saturation step (incl. its drain; "
        "the lowest rate's when no step kept up), at costs_at_rate_per_s; "
        "cpu_ms_per_saga sums the system's processes (services, Kafka, PostgreSQL), the load generator "
        "and the bench's observers are bench_client_cpu_ms_per_saga",
        "peer": peer_figures(result.get("peer"), sat_sagas),
        "saturation_rate_per_s": best["rate_per_s"] if best else None,
        "saturation_sagas_per_s": sat_sagas,
        "max_completed_sagas_per_s": max((s["completed_sagas_per_s"] for s in steps), default=0.0),
        "escalation_stopped_at": (None if last is None or last["keeps_up"] else last["rate_per_s"]),
        "p99_placed_to_confirmed_ms": {
            f"{s['rate_per_s']:g}": (s["latency"]["placed_to_confirmed_write_ms"] or {}).get("p99") for s in steps
        },
        "p99_placed_to_confirmed_query_ms": {
            f"{s['rate_per_s']:g}": (s["latency"]["placed_to_confirmed_query_ms"] or {}).get("p99") for s in steps
        },
        "targets": targets(
            sat_sagas, ms.get("system_total"), p99_write, p99_query, result.get("peer"), result.get("idle")
        ),
    }


#: The performance goals `make bench` reports against (never test assertions).
TARGETS: dict[str, float] = {
    "sustained_sagas_per_s": 300,
    "cpu_ms_per_saga": 6.0,
    "idle_cores": 0.1,
    "latency_at_rate_per_s": 100,
    "p99_write_ms": 100,
    "p99_query_ms": 150,
    "peer_ratio": 5.0,
}


def targets(
    sat_sagas: float,
    cpu_ms: float | None,
    p99_write: float | None,
    p99_query: float | None,
    peer: dict[str, Any] | None,
    idle: dict[str, Any] | None,
) -> dict[str, Any]:
    """Each goal, the figure measured for it and whether it was met."""
    idle_cores = sum(v for k, v in ((idle or {}).get("cpu_cores") or {}).items() if k in PROCESSES) if idle else None
    ratio = (peer_figures(peer, sat_sagas) or {}).get("ratio")
    measured: dict[str, tuple[float | None, bool]] = {
        "sustained_sagas_per_s": (sat_sagas, sat_sagas >= TARGETS["sustained_sagas_per_s"]),
        "cpu_ms_per_saga": (cpu_ms, cpu_ms is not None and cpu_ms <= TARGETS["cpu_ms_per_saga"]),
        "idle_cores": (idle_cores, idle_cores is not None and idle_cores <= TARGETS["idle_cores"]),
        "p99_write_ms": (p99_write, p99_write is not None and p99_write <= TARGETS["p99_write_ms"]),
        "p99_query_ms": (p99_query, p99_query is not None and p99_query <= TARGETS["p99_query_ms"]),
        "peer_ratio": (ratio, ratio is not None and ratio >= TARGETS["peer_ratio"]),
    }
    return {
        "goals": TARGETS,
        "measured": {k: v for k, (v, _) in measured.items()},
        "met": {k: ok for k, (_, ok) in measured.items()},
        "note": "goals, not assertions; latency goals at latency_at_rate_per_s orders/s",
    }

"""What the benchmark prints and records beside its figures: progress, the summary table, the
method text of the results file, and py-spy profiles of the services."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


class Display:
    """One updating line on a terminal; plain lines every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last_plain = 0.0

    def update(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K" + text)
            sys.stdout.flush()
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            print(text, flush=True)

    def line(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        print(text, flush=True)
        self._last_plain = time.monotonic()


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def summarise_profile(raw: Path, samples_per_s: int, duration_s: float) -> dict[str, Any]:
    """Top frames of a py-spy `raw` (collapsed stacks) file: self time and project inclusive time."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (", 1) for f in stack.split(";")]
        names = []
        for parts in frames:
            func = parts[0]
            where = parts[1].rsplit(":", 1)[0] if len(parts) > 1 else ""
            names.append(f"{func} ({_short(where)})")
        if names:
            self_time[names[-1]] += count
        for name in set(names):
            if "services/" in name or "shared/" in name:
                inclusive[name] += count
    expected = samples_per_s * duration_s
    return {
        "samples": total,
        "busy_share_of_one_core": round(total / expected, 3) if expected else None,
        "top_self": [{"frame": f, "share": round(c / total, 3)} for f, c in self_time.most_common(15)] if total else [],
        "top_inclusive_project": [{"frame": f, "share": round(c / total, 3)} for f, c in inclusive.most_common(15)]
        if total
        else [],
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


METHOD = {
    "load": "open loop: bench/load.py in its own process sends request i at start + i/rate on a keep-alive "
    "connection (a new one when all are busy), never waiting for earlier answers; lateness = actual "
    "send - planned time is reported per step",
    "mix": "fixed and interleaved: in every 20 requests 18 happy (tok_visa, FR/DE/GB/US), 1 tok_decline "
    "(→ REJECTED), 1 country AQ (→ CANCELLED)",
    "placed_time": "the wall-clock time the POST /orders request was written to the socket",
    "write_side": "a group-less Kafka consumer on order.events takes the CloudEvents `time` of "
    "order.confirmed/rejected/cancelled (set by the order service when it appends the fact, "
    "just before the commit); placed_to_confirmed_write = that time - placed time. "
    "placed_to_confirmed_published = when the bench consumed it from Kafka - placed time",
    "query_side": "one SSE connection to the query service's GET /stream, which sends a fact after the "
    "view transaction that applied it committed (fact_feed is written in the same "
    "transaction, read after its NOTIFY); placed_to_confirmed_query = SSE receive time - "
    "placed time. Cross-check: every 50th order (a happy one) is long-polled with GET "
    "/orders/{id}?min_version=2 (returns right after that commit); see query_sse_vs_longpoll_ms",
    "completed_sagas_per_s": "orders of the step whose final status for their mix (happy→CONFIRMED, "
    "declined→REJECTED, AQ→CANCELLED) became visible in the query view within the "
    "load window, the first second excluded (pipeline fill), per second",
    "saturation": "the highest offered rate whose step keeps up: completed sagas/s >= 95 % of the offered "
    "rate, p99 placed→CONFIRMED in the query view < 1 s, errors <= 1 %, and every accepted "
    "saga final within the drain timeout; escalation stops at the first step that does not",
    "drain": "after each step the bench waits until every accepted order is final in the query view "
    "before the next step (a drained system)",
    "cpu": "psutil CPU seconds (user+system) of each process and its descendants, over the step incl. its "
    "drain, divided by the sagas completed in the step; PostgreSQL = postmaster + live backends + "
    "exited backends (children_* of the postmaster); bench_client = this process + the load generator",
    "commits": "pg_stat_database.xact_commit deltas per database (a backend may report its last second of "
    "statistics late, so per-step figures are approximate; run_totals are exact because they are "
    "read after the services stopped); write_xacts = cluster-wide transaction ids consumed "
    "(transactions that wrote), exact",
    "backlog": "each service's /metrics when the arrivals end: consumer_lag_messages summed per consumer "
    "(messages behind the partition ends) and outbox_backlog (rows the relay saw at its last pass)",
    "statements": "pg_stat_statements (preloaded by the bench's own PostgreSQL start, track=top): calls of "
    "top-level statements per database, i.e. what each service sends (a PL/pgSQL function call counts "
    "once); data_statements leave out BEGIN/COMMIT/ROLLBACK",
    "at_saturation": "cpu_ms_per_saga, its split per process, commits and statements per saga are the "
    "saturation step's; bench_client (the load generator and the bench's observers) is reported apart",
    "peer": "bench/peer.py in its own process once our services stopped: the same five write transactions "
    "as a DBOS Transact workflow (async datasource, default isolation) on the same PostgreSQL, closed "
    "loop, concurrency doubled until the throughput stops growing; its saturation is the best step with "
    "p99 < 1 s; ratio = our saturation_sagas_per_s / the peer's",
    "messages": "Kafka end-offset deltas per topic (idempotent, non-transactional producers: one offset per "
    "message); __consumer_offsets (offset commits) reported separately",
}


def print_summary(result: dict[str, Any]) -> None:
    print()
    hdr = (
        f"{'rate/s':>7} {'acc/s':>7} {'done/s':>7} {'ratio':>6} | {'write p50':>9} {'p95':>6} {'p99':>6} {'max':>6} | "
        f"{'query p50':>9} {'p95':>6} {'p99':>6} {'max':>6} | {'err':>4} {'late99':>6} | "
        f"{'cpu ms/saga':>11} {'commits':>7} {'msgs':>5} | ok"
    )
    print(hdr)
    print("-" * len(hdr))
    for s in result["steps"]:
        w = s["latency"]["placed_to_confirmed_write_ms"] or {}
        q = s["latency"]["placed_to_confirmed_query_ms"] or {}
        cpu = s["cpu_s_per_saga"].get("system_total")
        late = (s["generator"]["lateness_ms"] or {}).get("p99")

        def f(v: Any, width: int) -> str:
            return f"{v:>{width}}" if v is not None else f"{'-':>{width}}"

        print(
            f"{s['rate_per_s']:>7g} {s['accepted_per_s']:>7} {s['completed_sagas_per_s']:>7} {s['completed_ratio']:>6.2f} | "
            f"{f(w.get('p50'), 9)} {f(w.get('p95'), 6)} {f(w.get('p99'), 6)} {f(w.get('max'), 6)} | "
            f"{f(q.get('p50'), 9)} {f(q.get('p95'), 6)} {f(q.get('p99'), 6)} {f(q.get('max'), 6)} | "
            f"{s['error_count']:>4} {f(late, 6)} | {f(round(cpu * 1000, 2) if cpu else None, 11)} "
            f"{f(s['commits_per_saga']['total'], 7)} {f(s['kafka_messages_per_saga']['total'], 5)} | "
            f"{'yes' if s['keeps_up'] else 'NO'}"
        )
    by_process = ", ".join(f"{k} {v}" for k, v in (result.get("cpu_ms_per_saga_by_process") or {}).items())
    print()
    print(
        f"at saturation ({result.get('costs_at_rate_per_s')}/s): {result.get('cpu_ms_per_saga')} CPU ms per saga ({by_process}); "
        f"load generator + observers {result.get('bench_client_cpu_ms_per_saga')} ms"
    )
    for label, key in (("commits", "commits_per_saga"), ("statements", "statements_per_saga")):
        figures = result.get(key) or {}
        print(f"{label} per saga: " + (", ".join(f"{k} {v}" for k, v in figures.items()) or "not measured"))
    peer = result.get("peer") or {}
    if "saturation_per_s" in peer:
        print(
            f"peer {peer['name']} {peer['version']}: {peer['saturation_per_s']} workflows/s at concurrency "
            f"{peer.get('best_concurrency')} (p50 {peer['p50_ms']} ms, p99 {peer['p99_ms']} ms); ours / peer = {peer['ratio']}"
        )
    elif peer:
        print(f"peer: did not run ({peer.get('error')})")
    fl = result["floor"]
    th = fl["theoretical_max_sagas_per_s"]
    sp = fl["system_spends_per_saga"]
    t = result["targets"]
    print()
    print(
        f"saturation: {result['saturation_sagas_per_s']} completed sagas/s at {result['saturation_rate_per_s']} orders/s offered "
        f"(max measured {result['max_completed_sagas_per_s']}/s)"
    )
    goals, measured, met = t["goals"], t["measured"], t["met"]
    print(
        "goals: "
        + "; ".join(f"{k} {measured[k]} (goal {goals[k]}): {'met' if met[k] else 'not met'}" for k in met)
        + f" [latency at {goals['latency_at_rate_per_s']:g}/s]"
    )
    print(
        f"per saga: {sp['postgres_commits']} PostgreSQL commits ({sp['postgres_write_xacts']} writing), "
        f"{sp['kafka_messages']} Kafka messages (+{sp['kafka_offset_commit_records']} offset commits)"
    )
    print(
        f"floor: Kafka {fl['kafka_messages_per_s']} msgs/s produce→consume ({fl['kafka']['message_bytes']} B), "
        f"PostgreSQL {fl['postgres_commits_per_s']} single-row commits/s ({fl['postgres']['connections']} conns)"
    )
    if wake := fl.get("wakeups"):
        free, pinned = wake["placed_by_the_scheduler"], wake["both_on_one_core"]
        print(
            f"wake-ups: a round trip between two processes {free['round_trip_us']} µs and {free['cpu_us_per_round_trip_each_side']} µs "
            f"CPU each side as scheduled, {pinned['round_trip_us']} µs and {pinned['cpu_us_per_round_trip_each_side']} µs on one core"
        )
    print(
        f"theoretical max sagas/s: {th['if_only_kafka_messages_mattered']} (Kafka messages), "
        f"{th['if_only_postgres_commits_mattered']} (all commits), {th['if_only_postgres_write_commits_mattered']} (writing commits)"
    )

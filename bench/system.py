"""Whole-system benchmark: `make bench` (full) and `make bench-quick` (< 2 minutes).

Starts its own Kafka, PostgreSQL and the four services on free ports in a temporary directory
(never a running stack), everything co-located on this machine, then:

1. warms up (long enough for the broker's JIT to settle: a cold broker spent half its CPU
   compiling, hence C1-only by default, see KAFKA_JIT_OPTS in infra/), measures the idle cost
   of the running system;
2. offers POST /orders open-loop (bench/load.py: each request at its planned time, in a separate
   process) at increasing rates, a fixed duration each, with a fixed mix of outcomes (90 % happy,
   5 % `tok_decline` → REJECTED, 5 % country `AQ` → CANCELLED); after each step it waits until
   every accepted order is final in the query view (a drained system) before the next one, and
   stops escalating at the first step that does not keep up;
3. per step: accepted orders/s, completed sagas/s, placed→final latencies on the write side and
   in the query view, errors, generator lateness, CPU seconds per saga of every process
   (PostgreSQL including its backends), PostgreSQL commits and Kafka messages per saga;
4. the floor: raw Kafka produce→consume messages/s and raw PostgreSQL single-row commits/s,
   measured in the same run once the services are stopped, and the theoretical saga rates
   they allow given the commits and messages the system spends per saga.

Writes bench/results/latest.json and latest.png, prints a summary table.

Environment: BENCH_RATES (comma-separated orders/s), BENCH_STEP_S (seconds per rate),
BENCH_WARMUP_S (seconds of warm-up), BENCH_RESULTS_DIR (default bench/results),
BENCH_PROFILE_RATE (py-spy the four services during the step at this rate; results go to
bench/results/profiled-*.json/png and profile-<service>.txt, not latest.*).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import floor, plot
from bench.load import EXPECTED_STATUS, HAPPY, kind_of
from bench.observe import FeedWatcher, OrderEventsWatcher, backlog, partitions_of
from infra.stack import LocalStack, free_ports

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).with_name("results"))
SERVICES = ("order", "payment", "shipping", "query")
DATABASES = ("order", "payment", "shipping", "query")
PROCESSES = (*SERVICES, "kafka", "postgres")
TOPICS = ("order.events", "payment.events", "shipping.events", "payment.commands", "shipping.commands")
OFFSETS_TOPIC = "__consumer_offsets"
SERVICE_ENV = {"LOG_LEVEL": "WARNING"}


# --------------------------------------------------------------------------- configuration


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

    @property
    def out_prefix(self) -> str:
        return "profiled" if self.profile_rate else "latest"


def make_config(quick: bool) -> Config:
    if quick:
        config = Config("quick", [10, 25, 50, 75, 100, 150, 200, 300, 400, 800], step_s=4, warmup_rate=40, warmup_s=12, idle_s=1,
                        drain_timeout_s=10, floor_s=2)
    else:
        config = Config("full", [10, 15, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600], step_s=15,
                        warmup_rate=40, warmup_s=30, idle_s=3, drain_timeout_s=40, floor_s=6)
    env = os.environ
    rates = [float(r) for r in env["BENCH_RATES"].split(",")] if env.get("BENCH_RATES") else config.rates
    step_s = float(env.get("BENCH_STEP_S", config.step_s))
    warmup_s = float(env.get("BENCH_WARMUP_S", config.warmup_s))
    profile = float(env["BENCH_PROFILE_RATE"]) if env.get("BENCH_PROFILE_RATE") else None
    return Config(config.mode, rates, step_s, config.warmup_rate, warmup_s, config.idle_s,
                  config.drain_timeout_s, config.floor_s, profile_rate=profile)


# --------------------------------------------------------------------------- statistics


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"n": len(values), "p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1),
            "p99": round(pct(values, 99), 1), "max": round(max(values), 1)}


def per(numerator: float, denominator: float, digits: int = 3) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


# --------------------------------------------------------------------------- resources


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


class Resources:
    """CPU of our processes, PostgreSQL commit counters and Kafka end offsets, on demand."""

    def __init__(self, stack: LocalStack, pids: dict[str, int]) -> None:
        self.stack = stack
        self.pids = pids
        self.admin: asyncpg.Connection | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []

    async def open(self) -> None:
        self.admin = await asyncpg.connect(self.stack.pg_admin_dsn())
        consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        self.consumer = consumer
        known = await partitions_of(self.stack.kafka_bootstrap, [*TOPICS, *(t + ".dlq" for t in TOPICS), OFFSETS_TOPIC])
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
        return ({r["datname"]: int(r["xact_commit"]) for r in rows},
                {r["datname"]: int(r["xact_rollback"]) for r in rows}, int(xid))

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
        busy = float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))
        return Snapshot(time.time(), self.cpu() if with_cpu else {}, busy, commits, rollbacks, xid, await self.offsets())

    async def message_sizes(self, per_partition: int = 200) -> dict[str, float]:
        """Mean value size of the latest messages of each of the system's topics."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False)
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
        "messages": {t: after.offsets.get(t, 0) - before.offsets.get(t, 0) for t in after.offsets},
    }


# --------------------------------------------------------------------------- progress display


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


# --------------------------------------------------------------------------- profiling


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
        "top_inclusive_project": [{"frame": f, "share": round(c / total, 3)} for f, c in inclusive.most_common(15)] if total else [],
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    config: Config
    stack: LocalStack
    tmp: Path
    resources: Resources
    writes: OrderEventsWatcher
    feed: FeedWatcher
    display: Display
    next_index: int = 0
    timeline: dict[str, list[float]] = field(
        default_factory=lambda: {"origin": [], "accepted": [], "completed": [], "confirmed_write": []})
    completed_all: int = 0

    @property
    def order_url(self) -> str:
        return self.stack.service_url("order")

    @property
    def query_url(self) -> str:
        return self.stack.service_url("query")

    async def offer(self, rate: float, duration: float, label: str, *, sample: bool,
                    backlog_at: float | None = None) -> dict[str, Any]:
        """Run the load generator for one step; return its per-request records (and, with
        `backlog_at`, each service's unprocessed backlog that many seconds into the step)."""
        out = self.tmp / f"load-{self.next_index}.json"
        args = [sys.executable, "-m", "bench.load", "--url", self.order_url, "--rate", str(rate),
                "--duration", str(duration), "--first-index", str(self.next_index), "--out", str(out)]
        if sample:
            args += ["--query-url", self.query_url, "--sample-every", str(self.config.sample_every),
                     "--sample-wait-s", str(self.config.drain_timeout_s)]
        total = int(round(rate * duration))
        self.next_index += total + (20 - total % 20) % 20  # keep every step's mix aligned
        with (self.tmp / "load.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log)
            assert proc.stdout is not None
            finals_before = len(self.feed.finals)
            started = time.monotonic()
            backlogs: dict[str, dict[str, float]] = {}
            scrape: asyncio.Task[None] | None = None
            if backlog_at is not None:
                scrape = asyncio.create_task(self.scrape_backlogs(started + backlog_at, backlogs))
            async for raw in proc.stdout:
                line = orjson.loads(raw)
                if line.get("done"):
                    continue
                elapsed = min(duration, time.monotonic() - started)
                self.display.update(
                    f"[{label}] {elapsed:5.1f}/{duration:g}s  sent {line['sent']:>6}  accepted {line['ok']:>6}  "
                    f"errors {line['err']:>4}  final(query) {len(self.feed.finals) - finals_before:>6}  "
                    f"in flight {line['inflight']:>4}  conns {line['conns']:>4}  late max {line['late_max_ms']} ms")
            code = await proc.wait()
            if scrape is not None:
                await scrape
        if code != 0:
            raise RuntimeError(f"load generator exited with {code}; see {self.tmp / 'load.log'}")
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        result["backlog_at_end_of_arrivals"] = backlogs
        return result

    async def scrape_backlogs(self, when: float, into: dict[str, dict[str, float]]) -> None:
        """Each service's consumer lag and outbox backlog when the arrivals end: which stage queues."""
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        async with httpx.AsyncClient() as client:
            for name in SERVICES:
                into[name] = await backlog(client, self.stack.service_url(name))

    async def drain(self, order_ids: list[str], label: str) -> float:
        """Wait until every order is final in the query view (and seen on order.events)."""
        waiting = set(order_ids)
        started = time.monotonic()
        while True:
            waiting = {o for o in waiting if o not in self.feed.finals or o not in self.writes.finals}
            elapsed = time.monotonic() - started
            if not waiting or elapsed > self.config.drain_timeout_s:
                return elapsed
            self.display.update(f"[{label}] draining: {len(waiting)} sagas not final yet ({elapsed:.1f}s)")
            await asyncio.sleep(0.1)

    async def step(self, rate: float) -> dict[str, Any]:
        cfg = self.config
        label = f"{rate:g}/s"
        profiling = cfg.profile_rate is not None and rate == cfg.profile_rate
        before = await self.resources.snapshot()
        spies: list[tuple[str, asyncio.subprocess.Process, Path]] = []
        if profiling:
            spies = await self.start_profilers(cfg.step_s)
        load = await self.offer(rate, cfg.step_s, label, sample=True, backlog_at=cfg.step_s)
        drain_s = await self.drain([o for o, s in zip(load["order_id"], load["status"]) if s == 202], label)
        await asyncio.sleep(0.5)  # let trailing facts (e.g. payment.captured in the views) settle
        after = await self.resources.snapshot()
        result = self.measure(rate, load, before, after, drain_s)
        if spies:
            result["profile"] = await self.finish_profilers(spies, cfg.step_s)
        return result

    def measure(self, rate: float, load: dict[str, Any], before: Snapshot, after: Snapshot,
                drain_s: float) -> dict[str, Any]:
        cfg = self.config
        start, duration = float(load["start"]), float(load["duration"])
        skip = min(1.0, duration / 5)
        w0, w1 = start + skip, start + duration
        accepted: list[tuple[str, str, float]] = []  # (order_id, kind, sent)
        errors: Counter[str] = Counter()
        post_ms: list[float] = []
        late_ms: list[float] = []
        accepted_in_window = 0
        for kind, planned, sent, done, status, error, oid in zip(
                load["kind"], load["planned"], load["sent"], load["done"], load["status"], load["error"], load["order_id"]):
            late_ms.append((sent - planned) * 1000)
            if status == 202:
                accepted.append((oid, kind, sent))
                post_ms.append((done - sent) * 1000)
                self.timeline["accepted"].append(done)
                if w0 <= done < w1:
                    accepted_in_window += 1
            else:
                errors[error or f"http {status}"] += 1
        lat: dict[str, list[float]] = {k: [] for k in (
            "write_confirmed", "published_confirmed", "query_confirmed", "query_rejected", "query_cancelled", "query_final")}
        outcomes: Counter[str] = Counter()
        completed = completed_in_window = 0
        for oid, kind, sent in accepted:
            q = self.feed.finals.get(oid)
            w = self.writes.finals.get(oid)
            if q is None:
                outcomes["not_final_after_drain"] += 1
                continue
            completed += 1
            self.timeline["completed"].append(q.visible)
            if w0 <= q.visible < w1:
                completed_in_window += 1
            expected = EXPECTED_STATUS[kind]
            outcomes[q.status if q.status == expected else f"{kind}->{q.status} (unexpected)"] += 1
            lat["query_final"].append((q.visible - sent) * 1000)
            lat[f"query_{q.status.lower()}"].append((q.visible - sent) * 1000)
            if w is not None and w.status == "CONFIRMED":
                self.timeline["confirmed_write"].append(w.recorded)
                lat["write_confirmed"].append((w.recorded - sent) * 1000)
                lat["published_confirmed"].append((w.received - sent) * 1000)
        self.completed_all += completed
        finals = [self.feed.finals[oid].visible for oid, _, _ in accepted if oid in self.feed.finals]
        if finals and not outcomes["not_final_after_drain"]:
            drain_s = max(0.0, max(finals) - (start + duration))  # last arrival → last saga final
        d = deltas(before, after)
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
        samples = [s for s in load["samples"] if "seen" in s and s["order_id"] in self.feed.finals]
        sse_minus_poll = [(self.feed.finals[s["order_id"]].visible - s["seen"]) * 1000 for s in samples]
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
            "commits_per_saga": {**{db: per(v, completed, 2) for db, v in d["commits"].items()},
                                 "total": per(sum(d["commits"].values()), completed, 2)},
            "write_xacts_per_saga": per(d["write_xacts"], completed, 2),
            "rollbacks": d["rollbacks"],
            "kafka_messages_per_saga": {**{t: per(v, completed, 2) for t, v in event_topics.items() if v},
                                        "total": per(sum(event_topics.values()), completed, 2)},
            "offset_commit_records_per_saga": per(d["messages"].get(OFFSETS_TOPIC, 0), completed, 2),
            "sampled_for_step_s": round(d["wall_s"], 2),
        }

    async def start_profilers(self, duration: float) -> list[tuple[str, asyncio.subprocess.Process, Path]]:
        spy = py_spy()
        if spy is None:
            self.display.line("py-spy not found: no profile (pip install py-spy into the venv)")
            return []
        out = []
        for name in SERVICES:
            pid = self.resources.pids.get(name)
            if pid is None:
                continue
            path = RESULTS / f"profile-{name}.txt"
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(int(duration + 1)), "--rate", "50",
                "--nonblocking", "--format", "raw", "--output", str(path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            out.append((name, proc, path))
        return out

    async def finish_profilers(self, spies: list[tuple[str, asyncio.subprocess.Process, Path]],
                               duration: float) -> dict[str, Any]:
        profile: dict[str, Any] = {}
        for name, proc, path in spies:
            await proc.wait()
            if path.exists():
                profile[name] = {"raw": _shown(path), **summarise_profile(path, 50, int(duration + 1))}
            else:
                profile[name] = {"error": f"py-spy exited {proc.returncode}"}
        return profile


async def measure_system(run: Run) -> dict[str, Any]:
    cfg = run.config
    res = run.resources
    await res.open()
    await run.writes.start()
    await run.feed.start()

    # Warm-up (not reported): pools, consumer fetch sessions, code paths.
    run.display.line(f"warm-up: {cfg.warmup_rate:g}/s for {cfg.warmup_s:g}s")
    warm = await run.offer(cfg.warmup_rate, cfg.warmup_s, "warm-up", sample=False)
    await run.drain([o for o, s in zip(warm["order_id"], warm["status"]) if s == 202], "warm-up")
    await asyncio.sleep(0.5)

    # The running system's own idle cost.
    before = await res.snapshot()
    await asyncio.sleep(cfg.idle_s)
    d = deltas(before, await res.snapshot())
    idle = {
        "seconds": round(d["wall_s"], 2),
        "cpu_cores": {k: round(v / d["wall_s"], 3) for k, v in d["cpu_s"].items()},
        "commits_per_s": round(sum(d["commits"].values()) / d["wall_s"], 1),
        "kafka_messages_per_s": round(sum(v for t, v in d["messages"].items() if t != OFFSETS_TOPIC) / d["wall_s"], 1),
        "other_load_cores": round(d["other_load_cores"], 2),
    }
    run.display.line(f"idle: system uses {sum(v for k, v in idle['cpu_cores'].items() if k in PROCESSES):.2f} cores, "
                     f"{idle['commits_per_s']} commits/s; other load on the machine {idle['other_load_cores']} cores")

    run_start = await res.snapshot(with_cpu=False)
    run.timeline["origin"].append(time.time())
    steps: list[dict[str, Any]] = []
    for rate in cfg.rates:
        step = await run.step(rate)
        steps.append(step)
        lat = step["latency"]
        w = (lat["placed_to_confirmed_write_ms"] or {}).get("p99")
        q = (lat["placed_to_confirmed_query_ms"] or {}).get("p99")
        queues = [(f"{svc}:{k}", v) for svc, b in step["backlog_at_end_of_arrivals"].items() for k, v in b.items() if v]
        worst = max(queues, key=lambda kv: kv[1], default=None)
        run.display.line(
            f"[{rate:g}/s] accepted {step['accepted_per_s']}/s, completed {step['completed_sagas_per_s']} sagas/s "
            f"({step['completed_ratio']:.0%}), p99 placed→confirmed write {w} ms / query {q} ms, "
            f"errors {step['error_count']}, drain {step['drain_s']}s"
            + (f", largest queue at end of arrivals {worst[0]} {worst[1]:g}" if worst else "")
            + ("" if step["keeps_up"] else f"  → saturated ({', '.join(k for k, v in step['checks'].items() if not v)})"))
        if not step["keeps_up"]:
            break

    # Message sizes of what the system actually sent, then stop the services: their
    # backends exit and flush their statistics, so the run's commit totals are exact.
    sizes = await res.message_sizes()
    run_end_online = await res.snapshot(with_cpu=False)
    await run.feed.stop()
    await run.writes.stop()
    run.display.line("stopping the services; measuring the floor (raw Kafka, raw PostgreSQL)")
    await asyncio.to_thread(run.stack.stop_services)
    await asyncio.sleep(0.5)
    run_end = await res.snapshot(with_cpu=False)
    total = deltas(run_start, run_end)
    total_messages = {t: run_end_online.offsets.get(t, 0) - run_start.offsets.get(t, 0) for t in TOPICS}
    completed = run.completed_all
    msg_count = sum(total_messages.values())
    mean_size = (sum(total_messages[t] * sizes.get(t, 0.0) for t in TOPICS) / msg_count) if msg_count else 500.0
    run_totals: dict[str, Any] = {
        "completed_sagas": completed,
        "commits_per_saga": {**{db: per(v, completed, 2) for db, v in total["commits"].items()},
                             "total": per(sum(total["commits"].values()), completed, 2)},
        "write_xacts_per_saga": per(total["write_xacts"], completed, 2),
        "kafka_messages_per_saga": {**{t: per(v, completed, 2) for t, v in total_messages.items()},
                                    "total": per(msg_count, completed, 2)},
        "offset_commit_records_per_saga": per(total["messages"].get(OFFSETS_TOPIC, 0), completed, 2),
        "mean_message_bytes": {**sizes, "weighted": round(mean_size, 1)},
        "note": "from the first step to after the services stopped (their backends flushed their "
                "statistics), idle gaps and drains included; divided by all completed sagas of the steps",
    }

    kafka = await floor.kafka_floor(run.stack.kafka_bootstrap, message_bytes=int(mean_size), partitions=6,
                                    duration_s=cfg.floor_s)
    pg = await floor.postgres_floor(run.stack.pg_admin_dsn(), run.stack.pg_dsn, connections=cfg.pg_floor_connections,
                                    row_bytes=int(mean_size), duration_s=cfg.floor_s)
    await res.close()
    commits = run_totals["commits_per_saga"]["total"]
    xacts = run_totals["write_xacts_per_saga"]
    msgs = run_totals["kafka_messages_per_saga"]["total"]
    floor_result = {
        "kafka": kafka,
        "postgres": pg,
        "kafka_messages_per_s": kafka["produce_consume_per_s"],
        "postgres_commits_per_s": pg["commits_per_s"],
        "system_spends_per_saga": {"postgres_commits": commits, "postgres_write_xacts": xacts, "kafka_messages": msgs,
                                   "kafka_offset_commit_records": run_totals["offset_commit_records_per_saga"]},
        "theoretical_max_sagas_per_s": {
            "if_only_kafka_messages_mattered": per(kafka["produce_consume_per_s"], msgs or 0, 1),
            "if_only_postgres_commits_mattered": per(pg["commits_per_s"], commits or 0, 1),
            "if_only_postgres_write_commits_mattered": per(pg["commits_per_s"], xacts or 0, 1),
        },
        "note": "floors are measured on the same Kafka and PostgreSQL after the services stopped, so "
                "nothing else of the system competes; the bench client itself shares the 2 cores",
    }
    return {"idle": idle, "steps": steps, "run_totals": run_totals, "floor": floor_result}


def _shown(path: Path) -> str:
    """A results path as printed: relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def headline(result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    steps = result["steps"]
    good = [s for s in steps if s["keeps_up"]]
    best = max(good, key=lambda s: s["rate_per_s"]) if good else None
    sat_sagas = best["completed_sagas_per_s"] if best else 0.0
    at_50 = next((s for s in steps if s["rate_per_s"] == 50), None)
    p99_50 = ((at_50 or {}).get("latency", {}).get("placed_to_confirmed_write_ms") or {}).get("p99")
    p99_50_q = ((at_50 or {}).get("latency", {}).get("placed_to_confirmed_query_ms") or {}).get("p99")
    last = steps[-1] if steps else None
    return {
        "saturation_rate_per_s": best["rate_per_s"] if best else None,
        "saturation_sagas_per_s": sat_sagas,
        "max_completed_sagas_per_s": max((s["completed_sagas_per_s"] for s in steps), default=0.0),
        "escalation_stopped_at": (None if last is None or last["keeps_up"] else last["rate_per_s"]),
        "p99_placed_to_confirmed_ms": {f"{s['rate_per_s']:g}": (s["latency"]["placed_to_confirmed_write_ms"] or {}).get("p99") for s in steps},
        "p99_placed_to_confirmed_query_ms": {f"{s['rate_per_s']:g}": (s["latency"]["placed_to_confirmed_query_ms"] or {}).get("p99") for s in steps},
        "targets": {
            "sustained_sagas_per_s_goal": 300,
            "sustained_sagas_per_s": sat_sagas,
            "sustained_met": sat_sagas >= 300,
            "p99_placed_to_confirmed_at_50_per_s_goal_ms": 100,
            "p99_placed_to_confirmed_at_50_per_s_ms": {"write": p99_50, "query": p99_50_q},
            "p99_at_50_met": {"write": p99_50 is not None and p99_50 <= 100,
                              "query": p99_50_q is not None and p99_50_q <= 100},
            "note": "goals, not assertions",
        },
    }


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
    "messages": "Kafka end-offset deltas per topic (idempotent, non-transactional producers: one offset per "
                "message); __consumer_offsets (offset commits) reported separately",
}


def print_summary(result: dict[str, Any]) -> None:
    print()
    hdr = (f"{'rate/s':>7} {'acc/s':>7} {'done/s':>7} {'ratio':>6} | {'write p50':>9} {'p95':>6} {'p99':>6} {'max':>6} | "
           f"{'query p50':>9} {'p95':>6} {'p99':>6} {'max':>6} | {'err':>4} {'late99':>6} | "
           f"{'cpu ms/saga':>11} {'commits':>7} {'msgs':>5} | ok")
    print(hdr)
    print("-" * len(hdr))
    for s in result["steps"]:
        w = s["latency"]["placed_to_confirmed_write_ms"] or {}
        q = s["latency"]["placed_to_confirmed_query_ms"] or {}
        cpu = s["cpu_s_per_saga"].get("system_total")
        late = (s["generator"]["lateness_ms"] or {}).get("p99")

        def f(v: Any, width: int) -> str:
            return f"{v:>{width}}" if v is not None else f"{'-':>{width}}"

        print(f"{s['rate_per_s']:>7g} {s['accepted_per_s']:>7} {s['completed_sagas_per_s']:>7} {s['completed_ratio']:>6.2f} | "
              f"{f(w.get('p50'), 9)} {f(w.get('p95'), 6)} {f(w.get('p99'), 6)} {f(w.get('max'), 6)} | "
              f"{f(q.get('p50'), 9)} {f(q.get('p95'), 6)} {f(q.get('p99'), 6)} {f(q.get('max'), 6)} | "
              f"{s['error_count']:>4} {f(late, 6)} | {f(round(cpu * 1000, 2) if cpu else None, 11)} "
              f"{f(s['commits_per_saga']['total'], 7)} {f(s['kafka_messages_per_saga']['total'], 5)} | "
              f"{'yes' if s['keeps_up'] else 'NO'}")
    fl = result["floor"]
    th = fl["theoretical_max_sagas_per_s"]
    sp = fl["system_spends_per_saga"]
    t = result["targets"]
    print()
    print(f"saturation: {result['saturation_sagas_per_s']} completed sagas/s at {result['saturation_rate_per_s']} orders/s offered "
          f"(max measured {result['max_completed_sagas_per_s']}/s); goal >= 300: {'met' if t['sustained_met'] else 'not met'}")
    p50 = t["p99_placed_to_confirmed_at_50_per_s_ms"]
    print(f"p99 placed→CONFIRMED at 50/s: write {p50['write']} ms, query view {p50['query']} ms (goal <= 100 ms)")
    print(f"per saga: {sp['postgres_commits']} PostgreSQL commits ({sp['postgres_write_xacts']} writing), "
          f"{sp['kafka_messages']} Kafka messages (+{sp['kafka_offset_commit_records']} offset commits)")
    print(f"floor: Kafka {fl['kafka_messages_per_s']} msgs/s produce→consume ({fl['kafka']['message_bytes']} B), "
          f"PostgreSQL {fl['postgres_commits_per_s']} single-row commits/s ({fl['postgres']['connections']} conns)")
    print(f"theoretical max sagas/s: {th['if_only_kafka_messages_mattered']} (Kafka messages), "
          f"{th['if_only_postgres_commits_mattered']} (all commits), {th['if_only_postgres_write_commits_mattered']} (writing commits)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the < 2 minute version (make bench-quick)")
    cfg = make_config(parser.parse_args().quick)
    display = Display()
    load_at_start = os.getloadavg()
    began = time.time()
    display.line(f"make bench ({cfg.mode}): rates {', '.join(f'{r:g}' for r in cfg.rates)} orders/s, "
                 f"{cfg.step_s:g}s each; load average at start {load_at_start[0]:.2f} on {os.cpu_count()} cores")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-system-") as tmp_name:
        tmp = Path(tmp_name)
        kafka_port, controller_port, pg_port, *service_ports = free_ports(7)
        stack = LocalStack(tmp, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
        ports = dict(zip(SERVICES, service_ports))
        env = {name: dict(SERVICE_ENV) for name in SERVICES}
        env["query"]["SSE_MAX_STREAM_S"] = "3600"
        try:
            t0 = time.monotonic()
            stack.start()
            started = stack.start_services(SERVICES, cwd=ROOT, ports=ports, env=env)
            missing = set(SERVICES) - set(started)
            if missing:
                raise SystemExit(f"make bench: services not available: {', '.join(sorted(missing))}")
            stack.wait_healthy(SERVICES, timeout_s=120)
            display.line(f"stack up in {time.monotonic() - t0:.1f}s (Kafka :{kafka_port}, PostgreSQL :{pg_port}, "
                         + ", ".join(f"{n} :{p}" for n, p in ports.items()) + ")")
            pids = stack.live_pids()
            resources = Resources(stack, {n: pids[n] for n in PROCESSES if n in pids})
            run = Run(cfg, stack, tmp, resources, OrderEventsWatcher(stack.kafka_bootstrap),
                      FeedWatcher(stack.service_url("query")), display)
            import uvloop

            measured = uvloop.run(measure_system(run))
            versions = uvloop.run(_versions(stack))
        finally:
            stack.purge()  # stop everything by PID, then remove the data (incl. a PostgreSQL shadow dir)
    result: dict[str, Any] = {
        "benchmark": "whole system (make bench)",
        "mode": cfg.mode,
        "started_at": datetime.fromtimestamp(began, timezone.utc).isoformat(),
        "duration_s": round(time.time() - began, 1),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load_at_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "stack_start_s": stack.timings,
                    "python": platform.python_version(), "platform": platform.platform(), **versions},
        "settings": {"rates_planned": cfg.rates, "step_s": cfg.step_s, "drain_timeout_s": cfg.drain_timeout_s,
                     "service_env": env, "floor_s": cfg.floor_s, "pg_floor_connections": cfg.pg_floor_connections},
        "method": METHOD,
    }
    result.update(headline(measured, cfg))
    result.update(measured)
    timeline = run.timeline
    json_path = RESULTS / f"{cfg.out_prefix}.json"
    png_path = RESULTS / f"{cfg.out_prefix}.png"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    plot.render(result, timeline, png_path)
    print_summary(result)
    print(f"\nwritten: {_shown(json_path)}, {_shown(png_path)} "
          f"(run took {result['duration_s']}s)")


async def _versions(stack: LocalStack) -> dict[str, Any]:
    conn = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        return {
            "postgres": await conn.fetchval("SHOW server_version"),
            "postgres_synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "postgres_fsync": await conn.fetchval("SHOW fsync"),
        }
    finally:
        await conn.close()


if __name__ == "__main__":
    main()

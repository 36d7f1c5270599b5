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
BENCH_WARMUP_S (seconds of warm-up), BENCH_IDLE_S (seconds of the idle measurement),
BENCH_RESULTS_DIR (default bench/results),
BENCH_PEER_LEVELS (comma-separated concurrencies of the peer, bench/peer.py), BENCH_PEER_STEP_S,
BENCH_PROFILE_RATE (py-spy the four services during the step at this rate; results go to
bench/results/profiled-*.json/png and profile-<service>.txt, not latest.*), BENCH_TRACING=1
(tracing on in every service, exported over OTLP/HTTP to a receiver in this process that
drops the spans; results go to bench/results/<prefix>-tracing.json/png: compare its CPU
seconds per saga with a run without it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from bench import floor, peer, plot
from bench.figures import Config, headline, make_config, per, step_figures
from bench.observe import FeedWatcher, OrderEventsWatcher, backlog
from bench.report import METHOD, Display, print_summary, py_spy, summarise_profile
from bench.resources import OFFSETS_TOPIC, PG_STAT_STATEMENTS, PROCESSES, SERVICES, TOPICS, Resources, deltas
from bench.tracing import OtlpSink
from infra.settings import InfraSettings
from infra.stack import LocalStack, free_ports
from infra.tokens import stack_auth

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).with_name("results"))
SERVICE_ENV = {"LOG_LEVEL": "WARNING"}
STATS_SETTLE_S = 11.0  # PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s) and a margin


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
        default_factory=lambda: {"origin": [], "accepted": [], "completed": [], "confirmed_write": []}
    )
    completed_all: int = 0

    @property
    def order_url(self) -> str:
        return self.stack.service_url("order")

    @property
    def query_url(self) -> str:
        return self.stack.service_url("query")

    async def offer(
        self, rate: float, duration: float, label: str, *, sample: bool, backlog_at: float | None = None
    ) -> dict[str, Any]:
        """Run the load generator for one step; return its per-request records (and, with
        `backlog_at`, each service's unprocessed backlog that many seconds into the step)."""
        out = self.tmp / f"load-{self.next_index}.json"
        args = [
            sys.executable,
            "-m",
            "bench.load",
            "--url",
            self.order_url,
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--first-index",
            str(self.next_index),
            "--out",
            str(out),
            "--auth-dir",
            str(self.stack.run_dir / "auth"),
        ]
        if sample:
            args += [
                "--query-url",
                self.query_url,
                "--sample-every",
                str(self.config.sample_every),
                "--sample-wait-s",
                str(self.config.drain_timeout_s),
            ]
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
                    f"in flight {line['inflight']:>4}  conns {line['conns']:>4}  late max {line['late_max_ms']} ms"
                )
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
        calls_before = await self.resources.calls_by_statement()
        spies: list[tuple[str, asyncio.subprocess.Process, Path]] = []
        if profiling:
            spies = await self.start_profilers(cfg.step_s)
        load = await self.offer(rate, cfg.step_s, label, sample=True, backlog_at=cfg.step_s)
        drain_s = await self.drain([o for o, s in zip(load["order_id"], load["status"]) if s == 202], label)
        await asyncio.sleep(0.5)  # let trailing facts (e.g. payment.captured in the views) settle
        after = await self.resources.snapshot()
        calls_after = await self.resources.calls_by_statement()
        result = step_figures(
            cfg, rate, load, deltas(before, after), drain_s, self.feed.finals, self.writes.finals, self.timeline
        )
        self.completed_all += result["completed"]
        if result["completed"]:
            per_saga = {"per_s": "per_saga", "exec_ms_per_s": "exec_ms_per_saga"}
            for key, by_time in (("top_statements_per_saga", False), ("top_statements_by_exec_time", True)):
                result[key] = [
                    {
                        per_saga.get(k, k): round(v / result["completed"], 3) if k in per_saga else v
                        for k, v in r.items()
                    }
                    for r in statement_rates(calls_before, calls_after, 1.0, top=25, by_time=by_time)
                ]
        if spies:
            result["profile"] = await self.finish_profilers(spies, cfg.step_s)
        return result

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
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(duration + 1)),
                "--rate",
                "50",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out.append((name, proc, path))
        return out

    async def finish_profilers(
        self, spies: list[tuple[str, asyncio.subprocess.Process, Path]], duration: float
    ) -> dict[str, Any]:
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

    # The running system's own idle cost, once the warm-up's statistics are in: a PostgreSQL
    # backend reports its last second of counts up to 10 s after it went idle.
    await asyncio.sleep(STATS_SETTLE_S)
    before = await res.snapshot()
    calls_before = await res.calls_by_statement()
    await asyncio.sleep(cfg.idle_s)
    calls_after = await res.calls_by_statement()
    d = deltas(before, await res.snapshot())
    idle = {
        "seconds": round(d["wall_s"], 2),
        "cpu_cores": {k: round(v / d["wall_s"], 3) for k, v in d["cpu_s"].items()},
        "commits_per_s": round(sum(d["commits"].values()) / d["wall_s"], 1),
        "commits_per_s_by_database": {db: round(v / d["wall_s"], 2) for db, v in d["commits"].items()},
        "kafka_messages_per_s": round(sum(v for t, v in d["messages"].items() if t != OFFSETS_TOPIC) / d["wall_s"], 1),
        "other_load_cores": round(d["other_load_cores"], 2),
        "statements_per_s": statement_rates(calls_before, calls_after, d["wall_s"]),
    }
    run.display.line(
        f"idle: system uses {sum(v for k, v in idle['cpu_cores'].items() if k in PROCESSES):.2f} cores, "
        f"{idle['commits_per_s']} commits/s; other load on the machine {idle['other_load_cores']} cores"
    )

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
            + (
                ""
                if step["keeps_up"]
                else f"  → saturated ({', '.join(k for k, v in step['checks'].items() if not v)})"
            )
        )
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
        "commits_per_saga": {
            **{db: per(v, completed, 2) for db, v in total["commits"].items()},
            "total": per(sum(total["commits"].values()), completed, 2),
        },
        "write_xacts_per_saga": per(total["write_xacts"], completed, 2),
        "kafka_messages_per_saga": {
            **{t: per(v, completed, 2) for t, v in total_messages.items()},
            "total": per(msg_count, completed, 2),
        },
        "offset_commit_records_per_saga": per(total["messages"].get(OFFSETS_TOPIC, 0), completed, 2),
        "mean_message_bytes": {**sizes, "weighted": round(mean_size, 1)},
        "note": "from the first step to after the services stopped (their backends flushed their "
        "statistics), idle gaps and drains included; divided by all completed sagas of the steps",
    }

    kafka = await floor.kafka_floor(
        run.stack.kafka_bootstrap, message_bytes=int(mean_size), partitions=6, duration_s=cfg.floor_s
    )
    pg = await floor.postgres_floor(
        run.stack.pg_admin_dsn(),
        run.stack.pg_dsn,
        connections=cfg.pg_floor_connections,
        row_bytes=int(mean_size),
        duration_s=cfg.floor_s,
    )
    wakeups = await asyncio.to_thread(floor.wakeup_floor_apart)
    await res.close()
    peer = await run_peer(run)
    commits = run_totals["commits_per_saga"]["total"]
    xacts = run_totals["write_xacts_per_saga"]
    msgs = run_totals["kafka_messages_per_saga"]["total"]
    floor_result = {
        "kafka": kafka,
        "postgres": pg,
        "kafka_messages_per_s": kafka["produce_consume_per_s"],
        "postgres_commits_per_s": pg["commits_per_s"],
        "wakeups": wakeups,
        "system_spends_per_saga": {
            "postgres_commits": commits,
            "postgres_write_xacts": xacts,
            "kafka_messages": msgs,
            "kafka_offset_commit_records": run_totals["offset_commit_records_per_saga"],
        },
        "theoretical_max_sagas_per_s": {
            "if_only_kafka_messages_mattered": per(kafka["produce_consume_per_s"], msgs or 0, 1),
            "if_only_postgres_commits_mattered": per(pg["commits_per_s"], commits or 0, 1),
            "if_only_postgres_write_commits_mattered": per(pg["commits_per_s"], xacts or 0, 1),
        },
        "note": "floors are measured on the same Kafka and PostgreSQL after the services stopped, so "
        "nothing else of the system competes; the bench client itself shares the 2 cores",
    }
    return {"idle": idle, "steps": steps, "run_totals": run_totals, "floor": floor_result, "peer": peer}


async def run_peer(run: Run) -> dict[str, Any]:
    """The peer (bench/peer.py, DBOS Transact) in its own process on the same PostgreSQL, once
    our services are stopped; its figures, or the reason it did not run."""
    cfg = run.config
    run.display.line(f"the peer: DBOS Transact, concurrency {', '.join(map(str, cfg.peer_levels))}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.peer",
        "--admin-dsn",
        run.stack.pg_admin_dsn(),
        "--dsn",
        run.stack.pg_dsn(peer.DATABASE),
        "--levels",
        ",".join(map(str, cfg.peer_levels)),
        "--step-s",
        str(cfg.peer_step_s),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        return {"error": f"bench.peer exited {proc.returncode}", "stderr_tail": err.decode(errors="replace")[-2000:]}
    figures: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return figures


def statement_rates(
    before: dict[tuple[str, str], tuple[int, float]],
    after: dict[tuple[str, str], tuple[int, float]],
    seconds: float,
    top: int = 20,
    *,
    by_time: bool = False,
) -> list[dict[str, Any]]:
    """Statements sent between two counts, per second, most frequent first (idle: what keeps it
    awake), or (`by_time`) those PostgreSQL spent the most execution time on first."""
    counted = []
    for key, (calls, exec_ms) in after.items():
        calls_before, exec_before = before.get(key, (0, 0.0))
        counted.append((calls - calls_before, exec_ms - exec_before, key))
    counted.sort(key=lambda c: -(c[1] if by_time else c[0]))
    return [
        {
            "database": db,
            "statement": " ".join(query.split())[:160],
            "per_s": round(n / seconds, 2),
            "exec_ms_per_s": round(ms / seconds, 2),
        }
        for n, ms, (db, query) in counted[:top]
        if n > 0
    ]


def _shown(path: Path) -> str:
    """A results path as printed: relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the < 2 minute version (make bench-quick)")
    cfg = make_config(parser.parse_args().quick)
    display = Display()
    load_at_start = os.getloadavg()
    began = time.time()
    display.line(
        f"make bench ({cfg.mode}): rates {', '.join(f'{r:g}' for r in cfg.rates)} orders/s, "
        f"{cfg.step_s:g}s each; load average at start {load_at_start[0]:.2f} on {os.cpu_count()} cores"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    traced = os.environ.get("BENCH_TRACING") == "1"
    with contextlib.ExitStack() as exits, tempfile.TemporaryDirectory(prefix="bench-system-") as tmp_name:
        sink = exits.enter_context(OtlpSink()) if traced else None
        tmp = Path(tmp_name)
        kafka_port, controller_port, pg_port, *service_ports = free_ports(7)
        infra = InfraSettings()
        infra = infra.model_copy(update={"pg_settings": {**infra.pg_settings, **PG_STAT_STATEMENTS}})
        stack = LocalStack(tmp, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port, settings=infra)
        ports = dict(zip(SERVICES, service_ports))
        env = {name: dict(SERVICE_ENV) for name in SERVICES}
        env["query"]["SSE_MAX_STREAM_S"] = "3600"
        if sink is not None:
            for name in SERVICES:
                env[name]["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        try:
            t0 = time.monotonic()
            stack.start()
            started = stack.start_services(SERVICES, cwd=ROOT, ports=ports, env=env)
            missing = set(SERVICES) - set(started)
            if missing:
                raise SystemExit(f"make bench: services not available: {', '.join(sorted(missing))}")
            stack.wait_healthy(SERVICES, timeout_s=120)
            display.line(
                f"stack up in {time.monotonic() - t0:.1f}s (Kafka :{kafka_port}, PostgreSQL :{pg_port}, "
                + ", ".join(f"{n} :{p}" for n, p in ports.items())
                + ")"
            )
            pids = stack.live_pids()
            resources = Resources(stack, {n: pids[n] for n in PROCESSES if n in pids})
            run = Run(
                cfg,
                stack,
                tmp,
                resources,
                OrderEventsWatcher(stack.kafka_bootstrap),
                FeedWatcher(stack.service_url("query"), stack_auth(stack.run_dir)),
                display,
            )
            import uvloop

            measured = uvloop.run(measure_system(run))
            versions = uvloop.run(_versions(stack))
        finally:
            stack.purge()  # stop everything by PID, then remove the data (incl. a PostgreSQL shadow dir)
    result: dict[str, Any] = {
        "benchmark": "whole system (make bench)",
        "mode": cfg.mode,
        "started_at": datetime.fromtimestamp(began, UTC).isoformat(),
        "duration_s": round(time.time() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load_at_start],
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "stack_start_s": stack.timings,
            "python": platform.python_version(),
            "platform": platform.platform(),
            **versions,
        },
        "settings": {
            "rates_planned": cfg.rates,
            "step_s": cfg.step_s,
            "drain_timeout_s": cfg.drain_timeout_s,
            "service_env": env,
            "floor_s": cfg.floor_s,
            "pg_floor_connections": cfg.pg_floor_connections,
        },
        "method": METHOD,
    }
    if sink is not None:
        result["tracing"] = {"otlp_exports": sink.requests, "otlp_bytes": sink.bytes}
    result.update(headline(measured, cfg))
    result.update({k: v for k, v in measured.items() if k != "peer"})  # the peer is in the headline
    timeline = run.timeline
    prefix = f"{cfg.out_prefix}-tracing" if traced else cfg.out_prefix
    json_path = RESULTS / f"{prefix}.json"
    png_path = RESULTS / f"{prefix}.png"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    plot.render(result, timeline, png_path)
    print_summary(result)
    print(f"\nwritten: {_shown(json_path)}, {_shown(png_path)} (run took {result['duration_s']}s)")


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

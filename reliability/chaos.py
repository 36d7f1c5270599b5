"""`make chaos`: faults under a running load, each followed by recovery and the audit.

Everything runs on a **private** LocalStack (Kafka + PostgreSQL on free ports in a temp dir)
and the four services started as processes on free ports, never on the user's `make up`
stack. The order service runs with a short saga step timeout (`--saga-timeout-s`, default 5 s)
so timeouts and compensations happen within a run.

For each fault: open-loop load (`reliability.load`: default 50 orders/s, 90 % happy, 5 %
declined, 5 % unserved) starts; after `--pre-s` the fault is injected and lasts `--fault-s`;
the load continues `--post-s` after the fault ended, then stops; the harness waits until every
order placed so far is settled and the audit (`reliability.audit`, grace 0 = every lag check
on) passes, or `--recovery-timeout-s` elapses. Recorded per fault:

* placed     — POST /orders answered 202 during the fault's load;
* lost       — placed but missing from the order log, or still PENDING when recovery ended
               (must be 0);
* duplicates — new duplicate effects the audit found (two captures, two shipments, a reply
               applied twice by the saga …; must be 0);
* recovery_s — from the end of the fault until all placed orders were settled and the audit
               passed (None: it never did within the timeout).

The faults (`--faults`, comma-separated; default all):

  kill-order / kill-payment / kill-shipping / kill-query   SIGKILL the service, restart it
  kill-order-replica   a second order replica (same DB, other port) shares the load; SIGKILL
                       the first replica (likely the relay leader), restart it
  kill-kafka           SIGKILL the broker, restart it on the same data
  pg-immediate         PostgreSQL immediate shutdown (no checkpoint, crash recovery), restart
  sigstop-payment / sigstop-shipping   SIGSTOP the service for `--sigstop-s` (> the saga
                       timeout), then SIGCONT: the saga times out and compensates, the late
                       answers arrive afterwards
  rewind-offsets       stop payment, shipping, order and query; delete their stored positions
                       (`consumer_positions`) AND commit Kafka offset 0 for their groups;
                       restart: everything is redelivered (the inboxes must absorb it)
  poison               into every topic: garbage bytes and a well-formed CloudEvent with bad
                       data; each must land in `<topic>.dlq` (by the consumers it is poison
                       for) and the consumers must move past it
  pg-latency / pg-reset / pg-blackhole / kafka-latency / kafka-reset / kafka-blackhole
                       through `reliability.faultproxy`, between ONE service (`--proxied`,
                       default order) and PostgreSQL / Kafka: 300 ms latency each way,
                       every connection reset, or a silent network, for `--fault-s`

Proxying Kafka: a client connects to the address the broker advertises, so the private broker
gets a second listener (PROXIED) whose advertised address is the proxy port
(`ProxiedKafkaBroker`); only the proxied service bootstraps through it, everything else uses
the normal listener, so the fault is between that one service and Kafka.

Results: a table on stdout and `reliability/results/chaos-latest.json`. Exit 1 if any fault
lost an order, duplicated an effect or never recovered.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from infra.kafka_broker import KafkaBroker
from infra.procs import ServiceProcess
from infra.services import SERVICE_ENV, SERVICES
from infra.settings import InfraSettings
from infra.stack import LocalStack, free_ports
from reliability.audit import AuditConfig, AuditReport, run_audit
from reliability.faultproxy import Mode, ProxyThread
from reliability.load import LoadResult, Mix, OrderLoad

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SERVICE_NAMES = ("order", "payment", "shipping", "query")

ALL_FAULTS = (
    "kill-order", "kill-payment", "kill-shipping", "kill-query", "kill-order-replica",
    "kill-kafka", "pg-immediate", "sigstop-payment", "sigstop-shipping", "rewind-offsets", "poison",
    "pg-latency", "pg-reset", "pg-blackhole", "kafka-latency", "kafka-reset", "kafka-blackhole",
)
#: What `make test` runs (tests/reliability/test_chaos_reduced.py).
REDUCED_FAULTS = ("kill-order", "kill-kafka", "pg-immediate", "poison")

#: Consumer groups (= stored-position names) of the write services, and what they read.
WRITE_CONSUMERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "payment": ("payment.commands", ("payment.commands",)),
    "shipping": ("shipping.commands", ("shipping.commands",)),
    "order": ("order.saga", ("payment.events", "shipping.events")),
}
QUERY_TOPICS = ("order.events", "payment.events", "shipping.events")


# ====================================================================== the private stack


class ProxiedKafkaBroker(KafkaBroker):
    """The stack's broker plus a PROXIED listener advertised at a fault proxy's port."""

    def __init__(self, run_dir: Path, *, port: int, controller_port: int, proxied_port: int,
                 advertised_proxy_port: int, settings: InfraSettings | None = None) -> None:
        super().__init__(run_dir, port=port, controller_port=controller_port, settings=settings)
        self.proxied_port = proxied_port
        self.advertised_proxy_port = advertised_proxy_port

    def server_properties(self) -> str:
        props = dict(line.split("=", 1) for line in super().server_properties().splitlines() if "=" in line)
        props["listeners"] = (f"PLAINTEXT://127.0.0.1:{self.port},PROXIED://127.0.0.1:{self.proxied_port},"
                              f"CONTROLLER://127.0.0.1:{self.controller_port}")
        props["advertised.listeners"] = (f"PLAINTEXT://127.0.0.1:{self.port},"
                                         f"PROXIED://127.0.0.1:{self.advertised_proxy_port}")
        props["listener.security.protocol.map"] = "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT"
        return "".join(f"{k}={v}\n" for k, v in props.items())


@dataclass
class ChaosConfig:
    rate: float = 50.0
    pre_s: float = 3.0
    fault_s: float = 5.0
    post_s: float = 3.0
    sigstop_s: float = 9.0
    saga_timeout_s: float = 5.0
    pending_slack_s: float = 30.0
    recovery_timeout_s: float = 150.0
    latency_ms: float = 300.0
    faults: tuple[str, ...] = ALL_FAULTS
    mix: Mix = field(default_factory=Mix)
    cancel_ratio: float = 0.02
    proxied: str = "order"
    out: Path | None = RESULTS / "chaos-latest.json"
    run_dir: Path | None = None
    keep: bool = False
    seed: int | None = None


@dataclass
class FaultResult:
    fault: str
    description: str
    placed: int = 0
    sent: int = 0
    refused: int = 0  # not 202: errors, timeouts, 5xx (those orders were never acknowledged)
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    recovery_s: float | None = None
    audit_ok: bool = False
    violations: dict[str, int] = field(default_factory=dict)
    sample_violations: list[str] = field(default_factory=list)
    fault_started_s: float = 0.0  # since the load started
    fault_ended_s: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost == 0 and self.duplicates == 0 and self.recovery_s is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


DESCRIPTIONS = {
    "kill-order": "SIGKILL the order service, restart it",
    "kill-payment": "SIGKILL the payment service, restart it",
    "kill-shipping": "SIGKILL the shipping service, restart it",
    "kill-query": "SIGKILL the query service, restart it",
    "kill-order-replica": "two order replicas share the load; SIGKILL one, restart it",
    "kill-kafka": "SIGKILL the Kafka broker, restart it",
    "pg-immediate": "PostgreSQL immediate shutdown, restart",
    "sigstop-payment": "SIGSTOP payment longer than the saga timeout, then SIGCONT",
    "sigstop-shipping": "SIGSTOP shipping longer than the saga timeout, then SIGCONT",
    "rewind-offsets": "stored positions deleted + Kafka group offsets set to 0 (mass redelivery)",
    "poison": "garbage + bad-data CloudEvent into every topic: DLQ'd, consumers move on",
    "pg-latency": "latency between {svc} and PostgreSQL",
    "pg-reset": "connection resets between {svc} and PostgreSQL",
    "pg-blackhole": "blackhole between {svc} and PostgreSQL",
    "kafka-latency": "latency between {svc} and Kafka",
    "kafka-reset": "connection resets between {svc} and Kafka",
    "kafka-blackhole": "blackhole between {svc} and Kafka",
}


def _log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ChaosHarness:
    """The private stack, the services, the proxies, and one method per fault."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config.run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chaos-")
            run_dir = Path(self._tmp.name)
        else:
            run_dir = config.run_dir
        (kafka_port, controller_port, pg_port, proxied_kafka_port, kafka_proxy_port,
         o, p, s, q, replica) = free_ports(10)
        self.stack = LocalStack(run_dir, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
        self.stack.kafka = ProxiedKafkaBroker(
            self.stack.run_dir, port=kafka_port, controller_port=controller_port,
            proxied_port=proxied_kafka_port, advertised_proxy_port=kafka_proxy_port, settings=self.stack.settings,
        )
        self.kafka_proxy_port = kafka_proxy_port
        self.proxied_kafka_port = proxied_kafka_port
        self.ports = {"order": o, "payment": p, "shipping": s, "query": q}
        self.replica_port = replica
        self.pg_proxy: ProxyThread | None = None
        self.kafka_proxy: ProxyThread | None = None
        self.env: dict[str, dict[str, str]] = {}
        self.placed_all: list[str] = []
        self.duplicates_seen = 0
        self.timings: dict[str, float] = {}
        self.replica: ServiceProcess | None = None
        #: Set by a fault that needs more than the audit to call itself recovered (e.g. poison:
        #: every poison message dead-lettered); consumed by `_recover`.
        self.verify: Callable[[FaultResult], Awaitable[bool]] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        t = time.monotonic()
        _log(f"starting a private stack in {self.stack.run_dir}")
        self.stack.start()
        for db in ("order", "payment", "shipping", "query"):
            self.stack.create_database(db)
        self.timings["stack_s"] = round(time.monotonic() - t, 2)
        self.pg_proxy = ProxyThread("127.0.0.1", self.stack.pg_port, name="pg")
        self.kafka_proxy = ProxyThread("127.0.0.1", self.proxied_kafka_port, listen_port=self.kafka_proxy_port,
                                       name="kafka")
        common = {"LOG_LEVEL": "WARNING", "RELAY_POLL_INTERVAL_S": "0.2"}
        for name in SERVICE_NAMES:
            self.env[name] = dict(common)
        self.env["order"]["SAGA_STEP_TIMEOUT_S"] = str(self.config.saga_timeout_s)
        proxied = self.env[self.config.proxied]
        proxied["DATABASE_URL"] = self._pg_dsn_via(self.pg_proxy.port, self.config.proxied)
        proxied["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{self.kafka_proxy.port}"
        t = time.monotonic()
        self.stack.start_services([], ports=self.ports)  # registers the ports; starts nothing
        for name in SERVICE_NAMES:
            self.service(name).start()
        self.stack.wait_healthy(SERVICE_NAMES, timeout_s=120)
        self.timings["services_s"] = round(time.monotonic() - t, 2)
        _log(f"stack up in {self.timings['stack_s']}s, services healthy in {self.timings['services_s']}s")

    def stop(self) -> None:
        if self.replica is not None:
            self.replica.stop()
        for proxy in (self.pg_proxy, self.kafka_proxy):
            if proxy is not None:
                proxy.close()
        try:
            self.stack.stop_services()
        finally:
            if self.config.keep:
                self.stack.stop()
                _log(f"kept the run dir {self.stack.run_dir}")
            else:
                self.stack.purge()
                if self._tmp is not None:
                    self._tmp.cleanup()

    def _pg_dsn_via(self, port: int, db: str) -> str:
        return self.stack.pg_dsn(db).replace(f":{self.stack.pg_port}/", f":{port}/")

    def service(self, name: str) -> ServiceProcess:
        proc = self.stack.service_process(name, cwd=ROOT, env=self.env[name])
        if os.environ.get("CHAOS_TASKDUMP"):  # debugging: SIGUSR1 dumps the service's asyncio tasks
            return ServiceProcess(name, "reliability._taskdump", run_dir=self.stack.run_dir, env=proc.env,
                                  args=[proc.module], cwd=ROOT, ports=proc.ports)
        return proc

    def audit_config(self) -> AuditConfig:
        return AuditConfig(
            order_dsn=self.stack.pg_dsn("order"),
            payment_dsn=self.stack.pg_dsn("payment"),
            shipping_dsn=self.stack.pg_dsn("shipping"),
            query_dsn=self.stack.pg_dsn("query"),
            kafka_bootstrap=self.stack.kafka_bootstrap,
            query_url=self.stack.service_url("query"),
            saga_timeout_s=self.config.saga_timeout_s,
            pending_slack_s=self.config.pending_slack_s,
            grace_s=0.0,
            views="http",
            kafka_timeout_s=60.0,
        )

    async def wait_healthy(self, names: Iterable[str], timeout_s: float = 120.0) -> None:
        await asyncio.to_thread(self.stack.wait_healthy, list(names), timeout_s)

    # ------------------------------------------------------------------ one fault

    async def run_fault(self, fault: str) -> FaultResult:
        result = FaultResult(fault, DESCRIPTIONS[fault].format(svc=self.config.proxied))
        inject = self._injector(fault)
        urls = [self.stack.service_url("order")]
        if fault == "kill-order-replica":
            urls.append(await self._start_replica())
        load = OrderLoad(urls, rate=self.config.rate, mix=self.config.mix, cancel_ratio=self.config.cancel_ratio,
                         seed=self.config.seed, customer_prefix=f"chaos-{fault}")
        stop_load = asyncio.Event()
        load_task = asyncio.create_task(load.run(stop=stop_load))
        started = time.monotonic()
        fault_end = started
        try:
            await asyncio.sleep(self.config.pre_s)
            result.fault_started_s = round(time.monotonic() - started, 2)
            _log(f"{fault}: injecting ({result.description})")
            await inject(result)
            fault_end = time.monotonic()
            result.fault_ended_s = round(fault_end - started, 2)
            await asyncio.sleep(self.config.post_s)
        except Exception as exc:
            result.error = f"injecting the fault failed: {exc!r}"
            _log(f"{fault}: {result.error}")
        finally:
            stop_load.set()
            load_result = await load_task
        self._record_load(result, load_result)
        await self._recover(result, fault_end, load_result)
        if fault == "kill-order-replica":
            await self._stop_replica()
        return result

    def _record_load(self, result: FaultResult, load: LoadResult) -> None:
        summary = load.summary()
        result.load = summary
        result.sent = summary["sent"]
        result.placed = summary["placed"]
        result.refused = result.sent - result.placed
        self.placed_all.extend(load.placed_ids())

    async def _recover(self, result: FaultResult, fault_end: float, load: LoadResult) -> None:
        """Poll until every placed order is settled and the audit passes (or the timeout)."""
        deadline = fault_end + self.config.recovery_timeout_s
        placed = load.placed_ids()
        report: AuditReport | None = None
        verify_extra, self.verify = self.verify, None
        while True:
            now = time.monotonic()
            try:
                healthy = await self._all_healthy()
                unsettled = await self._unsettled(placed) if healthy else None
                if healthy and unsettled == 0:
                    extra_ok = True
                    if verify_extra is not None:
                        extra_ok = await verify_extra(result)
                    report = await run_audit(self.audit_config(), self.placed_all)
                    if report.ok and extra_ok:
                        result.recovery_s = round(time.monotonic() - fault_end, 2)
                        break
            except Exception as exc:  # a service or the DB is still coming back
                result.details["last_poll_error"] = repr(exc)
            if now > deadline:
                break
            await asyncio.sleep(1.0)
        if report is None:
            try:
                report = await run_audit(self.audit_config(), self.placed_all)
            except Exception as exc:
                result.error = result.error or f"audit could not run: {exc!r}"
        if report is not None:
            result.audit_ok = report.ok
            result.violations = report.by_check()
            result.sample_violations = [str(v) for v in report.violations[:10]]
            dup = len(report.duplicate_effects)
            result.duplicates = max(dup - self.duplicates_seen, 0)
            self.duplicates_seen = max(dup, self.duplicates_seen)
            result.details["topic_duplicates"] = report.info.get("topic_duplicates")
            result.details["dlq"] = report.info.get("dlq")
        lost = await self._lost(placed)
        result.lost = len(lost)
        result.lost_ids = lost[:10]
        try:
            result.details["outcomes"] = await self._outcomes(placed)
        except Exception as exc:
            result.details["outcomes"] = repr(exc)
        state = "recovered" if result.recovery_s is not None else "NOT recovered"
        _log(f"{result.fault}: {state} in {result.recovery_s}s; placed {result.placed}, lost {result.lost}, "
             f"duplicates {result.duplicates}, violations {result.violations}")

    async def _all_healthy(self) -> bool:
        async with httpx.AsyncClient(timeout=3) as client:
            for name in SERVICE_NAMES:
                try:
                    r = await client.get(self.stack.service_url(name) + "/health")
                except httpx.HTTPError:
                    return False
                if r.status_code != 200:
                    return False
        return True

    async def _statuses(self, order_ids: Sequence[str]) -> dict[str, str]:
        conn = await asyncpg.connect(self.stack.pg_dsn("order"), timeout=5)
        try:
            rows = await conn.fetch(
                """SELECT DISTINCT ON (stream_id) stream_id, type FROM events
                   WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, version DESC""",
                list(order_ids),
            )
        finally:
            await conn.close()
        return {r["stream_id"]: r["type"] for r in rows}

    async def _unsettled(self, order_ids: Sequence[str]) -> int:
        statuses = await self._statuses(order_ids)
        return sum(1 for oid in order_ids if statuses.get(oid, "order.placed") == "order.placed")

    async def _outcomes(self, order_ids: Sequence[str]) -> dict[str, int]:
        """How the fault's orders ended: status (and reason for REJECTED / CANCELLED)."""
        conn = await asyncpg.connect(self.stack.pg_dsn("order"), timeout=5)
        try:
            rows = await conn.fetch(
                """SELECT DISTINCT ON (stream_id) type, data->>'reason' AS reason FROM events
                   WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, version DESC""",
                list(order_ids),
            )
        finally:
            await conn.close()
        counts: dict[str, int] = {}
        for r in rows:
            label = str(r["type"]).removeprefix("order.").upper() + (f":{r['reason']}" if r["reason"] else "")
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    async def _lost(self, order_ids: Sequence[str]) -> list[str]:
        try:
            statuses = await self._statuses(order_ids)
        except Exception:
            return []  # cannot tell: the audit result says why
        return [oid for oid in order_ids if statuses.get(oid, "order.placed") == "order.placed"]

    # ------------------------------------------------------------------ the faults

    def _injector(self, fault: str) -> Callable[[FaultResult], Awaitable[None]]:
        if fault.startswith("kill-") and fault[5:] in SERVICE_NAMES:
            return lambda r: self._kill_service(fault[5:], r)
        table: dict[str, Callable[[FaultResult], Awaitable[None]]] = {
            "kill-order-replica": lambda r: self._kill_service("order", r),
            "kill-kafka": self._kill_kafka,
            "pg-immediate": self._pg_immediate,
            "sigstop-payment": lambda r: self._sigstop("payment", r),
            "sigstop-shipping": lambda r: self._sigstop("shipping", r),
            "rewind-offsets": self._rewind,
            "poison": self._poison,
        }
        if fault in table:
            return table[fault]
        target, _, mode = fault.partition("-")
        if target in ("pg", "kafka") and mode in ("latency", "reset", "blackhole"):
            return lambda r: self._proxy_fault(target, mode, r)
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(ALL_FAULTS)}")

    async def _kill_service(self, name: str, result: FaultResult) -> None:
        proc = self.service(name)
        pid = proc.pid()
        await asyncio.to_thread(proc.kill)
        result.details["killed_pid"] = pid
        await asyncio.sleep(self.config.fault_s)
        proc.start()
        t = time.monotonic()
        await self.wait_healthy([name])
        result.details["restart_healthy_s"] = round(time.monotonic() - t, 2)

    async def _start_replica(self) -> str:
        svc = next(s for s in SERVICES if s.name == "order")
        env = {**SERVICE_ENV(self.stack, svc), **self.env["order"], "HTTP_PORT": str(self.replica_port),
               "ORDER_PORT": str(self.replica_port)}
        self.replica = ServiceProcess("order-replica", svc.module, run_dir=self.stack.run_dir, env=env, cwd=ROOT,
                                      ports=[self.replica_port])
        self.replica.start()
        url = f"http://127.0.0.1:{self.replica_port}"
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                try:
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"order replica not healthy:\n{self.replica.log_tail()}")
                await asyncio.sleep(0.2)
        return url

    async def _stop_replica(self) -> None:
        if self.replica is not None:
            await asyncio.to_thread(self.replica.stop)
            self.replica = None

    async def _kill_kafka(self, result: FaultResult) -> None:
        await asyncio.to_thread(self.stack.kill_kafka)
        await asyncio.sleep(self.config.fault_s)
        t = time.monotonic()
        await asyncio.to_thread(self.stack.start_kafka)
        result.details["kafka_restart_s"] = round(time.monotonic() - t, 2)

    async def _pg_immediate(self, result: FaultResult) -> None:
        await asyncio.to_thread(self.stack.stop_postgres, "immediate")
        await asyncio.sleep(self.config.fault_s)
        t = time.monotonic()
        await asyncio.to_thread(self.stack.start_postgres)
        result.details["postgres_restart_s"] = round(time.monotonic() - t, 2)

    async def _sigstop(self, name: str, result: FaultResult) -> None:
        proc = self.service(name)
        if not proc.send_signal(signal.SIGSTOP):
            raise RuntimeError(f"{name} is not running")
        result.details["stopped_s"] = self.config.sigstop_s
        try:
            await asyncio.sleep(self.config.sigstop_s)
        finally:
            proc.send_signal(signal.SIGCONT)

    async def _proxy_fault(self, target: str, mode: str, result: FaultResult) -> None:
        proxy = self.pg_proxy if target == "pg" else self.kafka_proxy
        assert proxy is not None
        result.details["proxied_service"] = self.config.proxied
        latency = self.config.latency_ms if mode == "latency" else 0.0
        await asyncio.to_thread(proxy.set_mode, Mode(mode), latency)
        try:
            await asyncio.sleep(self.config.fault_s)
        finally:
            await asyncio.to_thread(proxy.set_mode, Mode.PASS)
        result.details["proxy"] = await asyncio.to_thread(proxy.state)

    async def _rewind(self, result: FaultResult) -> None:
        """Stop the consumers' services, forget every position (DB and Kafka), restart."""
        query_consumer = await self._query_consumer()
        plan: list[tuple[str, str, str, tuple[str, ...]]] = [
            (svc, self.stack.pg_dsn(svc), group, topics) for svc, (group, topics) in WRITE_CONSUMERS.items()
        ]
        plan.append(("query", self.stack.pg_dsn("query"), query_consumer, QUERY_TOPICS))
        procs = {svc: self.service(svc) for svc, *_ in plan}
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs.values()))
        rewound: dict[str, int] = {}
        for svc, dsn, group, topics in plan:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                deleted = await conn.execute("DELETE FROM consumer_positions WHERE consumer = $1", group)
            finally:
                await conn.close()
            partitions = await commit_offsets_to_zero(self.stack.kafka_bootstrap, group, topics)
            rewound[group] = partitions
            result.details.setdefault("positions_deleted", {})[group] = deleted
        result.details["kafka_partitions_rewound"] = rewound
        for proc in procs.values():
            proc.start()
        await self.wait_healthy(procs)

        async def verify(r: FaultResult) -> bool:
            """The restarted consumers re-read everything and dropped it as duplicates (inbox)."""
            dropped = {svc: await self._duplicates_dropped(svc) for svc in procs}
            r.details["redelivered_duplicates_dropped"] = dropped
            return all(n > 0 for n in dropped.values())

        self.verify = verify

    async def _duplicates_dropped(self, service: str) -> int:
        """consumer_messages_total{outcome="duplicate"} of a service since it started."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(self.stack.service_url(service) + "/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("consumer_messages_total{") and 'outcome="duplicate"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def _query_consumer(self) -> str:
        conn = await asyncpg.connect(self.stack.pg_dsn("query"), timeout=10)
        try:
            name: str | None = await conn.fetchval("SELECT consumer FROM view_generations WHERE state = 'current'")
        finally:
            await conn.close()
        if name is None:
            raise RuntimeError("the query service has no current view generation")
        return name

    async def _poison(self, result: FaultResult) -> None:
        query_consumer = await self._query_consumer()
        injected = await inject_poison(self.stack.kafka_bootstrap)
        expected = expected_dead_letterers(query_consumer)
        result.details["poison_injected"] = len(injected)

        async def verify(r: FaultResult) -> bool:
            found = await dead_lettered_by(self.stack.kafka_bootstrap)
            missing = []
            for p in injected:
                who = found.get((p.topic, p.partition, p.offset), set())
                wanted = expected[p.topic] if p.kind == "garbage" else expected_bad_data(p.topic, query_consumer)
                if not wanted <= who:
                    missing.append(f"{p.kind}@{p.topic}:{p.partition}:{p.offset} DLQ'd by {sorted(who)}, "
                                   f"expected {sorted(wanted)}")
            moved_on = await self._moved_past(injected, query_consumer)
            r.details["poison_not_dead_lettered"] = missing
            r.details["poison_positions_not_past"] = moved_on
            return not missing and not moved_on

        self.verify = verify
        await asyncio.sleep(self.config.fault_s)

    async def _moved_past(self, injected: Sequence[Poison], query_consumer: str) -> list[str]:
        """Every consumer of a poisoned partition has a stored position past the poison."""
        dbs = {"payment.commands": "payment", "shipping.commands": "shipping", "order.saga": "order",
               query_consumer: "query"}
        not_past: list[str] = []
        positions: dict[tuple[str, str, int], int] = {}
        for group, db in dbs.items():
            conn = await asyncpg.connect(self.stack.pg_dsn(db), timeout=10)
            try:
                for row in await conn.fetch("SELECT topic, partition, next_offset FROM consumer_positions "
                                            "WHERE consumer = $1", group):
                    positions[(group, row["topic"], row["partition"])] = row["next_offset"]
            finally:
                await conn.close()
        readers = expected_dead_letterers(query_consumer)
        for p in injected:
            for group in readers[p.topic]:
                if positions.get((group, p.topic, p.partition), -1) <= p.offset:
                    not_past.append(f"{group} not past {p.topic}:{p.partition}:{p.offset}")
        return not_past


# ====================================================================== poison and offsets


@dataclass(frozen=True)
class Poison:
    kind: str  # garbage | bad-data
    topic: str
    partition: int
    offset: int


def expected_dead_letterers(query_consumer: str) -> dict[str, set[str]]:
    """Every consumer group that reads each topic (garbage bytes are poison to all of them)."""
    return {
        "order.events": {query_consumer},
        "payment.events": {"order.saga", query_consumer},
        "shipping.events": {"order.saga", query_consumer},
        "payment.commands": {"payment.commands"},
        "shipping.commands": {"shipping.commands"},
    }


def expected_bad_data(topic: str, query_consumer: str) -> set[str]:
    """Who must dead-letter the well-formed-but-bad CloudEvent of `poison_documents`.

    Commands: the participant (a command it cannot parse). Facts: the query views (a fact
    that names no order cannot be placed). The saga ignores facts about no known order by
    design (topics are shared), so it is not required to dead-letter those.
    """
    if topic == "payment.commands":
        return {"payment.commands"}
    if topic == "shipping.commands":
        return {"shipping.commands"}
    return {query_consumer}


def poison_documents(topic: str) -> dict[str, Any]:
    """A well-formed CloudEvent whose data the topic's consumers cannot use."""
    now = datetime.now(timezone.utc).isoformat()
    command = topic.endswith(".commands")
    event_type = {"order.events": "order.confirmed", "payment.events": "payment.captured",
                  "shipping.events": "shipment.dispatched", "payment.commands": "payment.capture",
                  "shipping.commands": "shipment.schedule"}[topic]
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/chaos/poison",
        "type": event_type,
        "subject": f"poison-{uuid.uuid4().hex[:8]}",
        "time": now,
        "datacontenttype": "application/json",
        "sequence": "0" if command else "1",
        "schemaversion": "1",
        # commands: no payment_id / shipment_id / address; facts: no order_id, no correlation id
        "data": {"poison": True, "amount_cents": "not a number"},
    }


async def inject_poison(bootstrap: str, topics: Sequence[str] = (*QUERY_TOPICS, "payment.commands",
                                                                  "shipping.commands")) -> list[Poison]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    injected: list[Poison] = []
    try:
        for topic in topics:
            key = f"poison-{uuid.uuid4().hex[:8]}".encode()
            garbage = b"\xff\xfe\x00 not a cloudevent {" + os.urandom(16)
            for kind, value in (("garbage", garbage), ("bad-data", orjson.dumps(poison_documents(topic)))):
                meta = await producer.send_and_wait(topic, value, key=key)
                injected.append(Poison(kind, topic, meta.partition, meta.offset))
    finally:
        await producer.stop()
    return injected


async def dead_lettered_by(bootstrap: str) -> dict[tuple[str, int, int], set[str]]:
    """(origin topic, partition, offset) → the consumers that dead-lettered that message."""
    from reliability.audit import read_topics

    dlqs = [t + ".dlq" for t in (*QUERY_TOPICS, "payment.commands", "shipping.commands")]
    out: dict[tuple[str, int, int], set[str]] = {}
    for records in (await read_topics(bootstrap, dlqs)).values():
        for r in records:
            try:
                entry = orjson.loads(r.value or b"")
                origin = entry["origin"]
                key = (str(origin["topic"]), int(origin["partition"]), int(origin["offset"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            out.setdefault(key, set()).add(str(entry.get("consumer")))
    return out


async def commit_offsets_to_zero(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Commit offset 0 on every partition of `topics` for an (idle) consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from reliability.audit import topic_partitions

    counts = await topic_partitions(bootstrap, topics)
    tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    return len(tps)


# ====================================================================== the run


def render_table(results: Sequence[FaultResult]) -> str:
    header = f"{'fault':<20} {'placed':>7} {'refused':>8} {'lost':>5} {'dup':>4} {'recovery_s':>11}  {'audit':<6} notes"
    lines = [header, "-" * len(header)]
    for r in results:
        recovery = f"{r.recovery_s:.1f}" if r.recovery_s is not None else "never"
        notes = r.error or (", ".join(f"{k}={v}" for k, v in r.violations.items()) if r.violations else "")
        lines.append(f"{r.fault:<20} {r.placed:>7} {r.refused:>8} {r.lost:>5} {r.duplicates:>4} {recovery:>11}  "
                     f"{'pass' if r.audit_ok else 'FAIL':<6} {notes}")
    total_placed = sum(r.placed for r in results)
    total_lost = sum(r.lost for r in results)
    total_dup = sum(r.duplicates for r in results)
    lines.append("-" * len(header))
    lines.append(f"{'total':<20} {total_placed:>7} {sum(r.refused for r in results):>8} {total_lost:>5} {total_dup:>4}")
    return "\n".join(lines)


async def run_chaos(config: ChaosConfig, harness: ChaosHarness | None = None) -> dict[str, Any]:
    """Start the private stack (unless given), run every fault, write the JSON, return it."""
    own = harness is None
    harness = harness or ChaosHarness(config)
    started = time.monotonic()
    results: list[FaultResult] = []
    report: dict[str, Any] = {}
    try:
        if own:
            await asyncio.to_thread(harness.start)
        for fault in config.faults:
            try:
                await harness.wait_healthy(SERVICE_NAMES, timeout_s=120)
                results.append(await harness.run_fault(fault))
            except Exception as exc:
                r = FaultResult(fault, DESCRIPTIONS.get(fault, fault), error=repr(exc))
                results.append(r)
                _log(f"{fault}: harness error {exc!r}")
    finally:
        report = {
            "started_at": datetime.now(timezone.utc).isoformat(),
            "ok": bool(results) and all(r.ok for r in results) and len(results) == len(config.faults),
            "config": {k: (str(v) if isinstance(v, (Path, Mix)) else v) for k, v in asdict(config).items()},
            "timings": {**harness.timings, "total_s": round(time.monotonic() - started, 2)},
            "faults": [r.to_dict() for r in results],
            "totals": {
                "placed": sum(r.placed for r in results),
                "lost": sum(r.lost for r in results),
                "duplicates": sum(r.duplicates for r in results),
            },
        }
        if own:
            await asyncio.to_thread(harness.stop)
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    d = ChaosConfig()
    parser = argparse.ArgumentParser(prog="python -m reliability chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(ALL_FAULTS),
                        help=f"comma-separated (default all): {', '.join(ALL_FAULTS)}; 'reduced' = {','.join(REDUCED_FAULTS)}")
    parser.add_argument("--rate", type=float, default=d.rate, help=f"orders/s offered during each fault (default {d.rate})")
    parser.add_argument("--pre-s", type=float, default=d.pre_s, help="load before the fault starts")
    parser.add_argument("--fault-s", type=float, default=d.fault_s, help="how long a fault lasts (down time, proxy mode)")
    parser.add_argument("--post-s", type=float, default=d.post_s, help="load after the fault ended")
    parser.add_argument("--sigstop-s", type=float, default=d.sigstop_s, help="SIGSTOP duration (> saga timeout)")
    parser.add_argument("--saga-timeout-s", type=float, default=d.saga_timeout_s, help="SAGA_STEP_TIMEOUT_S of the run")
    parser.add_argument("--recovery-timeout-s", type=float, default=d.recovery_timeout_s)
    parser.add_argument("--latency-ms", type=float, default=d.latency_ms)
    parser.add_argument("--mix", default="90,5,5", help="happy,decline,unserved shares")
    parser.add_argument("--cancel-ratio", type=float, default=d.cancel_ratio, help="share of placed orders cancelled")
    parser.add_argument("--proxied", choices=SERVICE_NAMES, default=d.proxied,
                        help="the service whose PostgreSQL and Kafka connections go through the fault proxies")
    parser.add_argument("--out", type=Path, default=d.out, help="JSON report path")
    parser.add_argument("--run-dir", type=Path, default=None, help="run dir of the private stack (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, data) afterwards")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = REDUCED_FAULTS if args.faults == "reduced" else tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        print(f"unknown faults: {unknown}; known: {', '.join(ALL_FAULTS)}", file=sys.stderr)
        return 2
    config = ChaosConfig(
        rate=args.rate, pre_s=args.pre_s, fault_s=args.fault_s, post_s=args.post_s, sigstop_s=args.sigstop_s,
        saga_timeout_s=args.saga_timeout_s, recovery_timeout_s=args.recovery_timeout_s, latency_ms=args.latency_ms,
        faults=faults, mix=Mix.parse(args.mix), cancel_ratio=args.cancel_ratio, proxied=args.proxied,
        out=args.out, run_dir=args.run_dir, keep=args.keep, seed=args.seed,
    )
    report = asyncio.run(run_chaos(config))
    results = [FaultResult(**{k: v for k, v in f.items() if k != "ok"}) for f in report["faults"]]
    print(render_table(results))
    print(f"report: {config.out}  ({report['timings'].get('total_s')}s)")
    print("CHAOS PASSED" if report["ok"] else "CHAOS FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The private stack, its services and proxies, and one fault's run: load, fault, recovery, audit."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import asyncpg
import httpx

from infra.kafka_broker import KafkaBroker
from infra.procs import ServiceProcess
from infra.services import SERVICE_ENV, SERVICES
from infra.settings import InfraSettings
from infra.stack import LocalStack, free_ports
from infra.tokens import stack_auth
from reliability.audit import AuditConfig, AuditReport, run_audit
from reliability.audit.model import ORDER_STATUS
from reliability.chaos import faults_broker
from reliability.chaos.config import DESCRIPTIONS, SERVICE_NAMES, ChaosConfig, FaultResult, log
from reliability.chaos.faults import injector
from reliability.faultproxy import ProxyThread
from reliability.load import LoadResult, OrderLoad
from shared.contract import OrderCancelled, OrderPlaced, OrderRejected, decode_data

ROOT = Path(__file__).resolve().parent.parent.parent

#: The latest fact of each order stream among a set of ids.
_LATEST_SQL = """SELECT DISTINCT ON (stream_id) stream_id, type, schema_version, data::text AS data FROM events
                 WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, version DESC"""


class ProxiedKafkaBroker(KafkaBroker):
    """The stack's broker plus a PROXIED listener advertised at a fault proxy's port."""

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int,
        controller_port: int,
        proxied_port: int,
        advertised_proxy_port: int,
        settings: InfraSettings | None = None,
    ) -> None:
        super().__init__(run_dir, port=port, controller_port=controller_port, settings=settings)
        self.proxied_port = proxied_port
        self.advertised_proxy_port = advertised_proxy_port

    def server_properties(self) -> str:
        props = dict(line.split("=", 1) for line in super().server_properties().splitlines() if "=" in line)
        props["listeners"] = (
            f"PLAINTEXT://127.0.0.1:{self.port},PROXIED://127.0.0.1:{self.proxied_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}"
        )
        props["advertised.listeners"] = (
            f"PLAINTEXT://127.0.0.1:{self.port},PROXIED://127.0.0.1:{self.advertised_proxy_port}"
        )
        props["listener.security.protocol.map"] = "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT"
        return "".join(f"{k}={v}\n" for k, v in props.items())


class ChaosHarness:
    """The private stack, the services, the proxies; the faults themselves are in `faults`."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config.run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chaos-")
            self._base_dir = Path(self._tmp.name)
        else:
            self._base_dir = config.run_dir
        o, p, s, q, replica = free_ports(5)
        #: Kafka nodes of the current stack: what the first fault needs (a broker fault, 3).
        self.brokers = faults_broker.brokers_for(config.faults[0]) if config.faults else 1
        self.stacks_started = 0
        self.stack = self._new_stack(self._base_dir)
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

    def _new_stack(self, run_dir: Path) -> LocalStack:
        """One broker with a PROXIED listener for the proxy faults, or a cluster of `self.brokers`."""
        if self.brokers > 1:
            ports = free_ports(2 * self.brokers + 1)
            n = self.brokers
            return LocalStack(run_dir, kafka_ports=ports[:n], controller_ports=ports[n : 2 * n], pg_port=ports[-1])
        kafka_port, controller_port, pg_port, self.proxied_kafka_port, self.kafka_proxy_port = free_ports(5)
        stack = LocalStack(run_dir, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
        stack.kafka = ProxiedKafkaBroker(
            stack.run_dir,
            port=kafka_port,
            controller_port=controller_port,
            proxied_port=self.proxied_kafka_port,
            advertised_proxy_port=self.kafka_proxy_port,
            settings=stack.settings,
        )
        return stack

    def use_brokers(self, brokers: int) -> None:
        """Replace the stack (and its services) by one with `brokers` Kafka nodes; the orders of
        the old stack are not audited again."""
        if brokers == self.brokers:
            return
        log(f"switching to a private stack with {brokers} Kafka broker(s)")
        self._stop_stack()
        self.brokers = brokers
        self.stack = self._new_stack(self._base_dir / f"stack-{self.stacks_started + 1}")
        self.placed_all = []
        self.duplicates_seen = 0
        self.start()

    def start(self) -> None:
        t = time.monotonic()
        log(f"starting a private stack in {self.stack.run_dir} ({self.brokers} Kafka broker(s))")
        self.stacks_started += 1
        self.stack.start()
        for db in ("order", "payment", "shipping", "query"):
            self.stack.create_database(db)
        self.timings["stack_s"] = round(time.monotonic() - t, 2)
        self.pg_proxy = ProxyThread("127.0.0.1", self.stack.pg_port, name="pg")
        self.kafka_proxy = None
        if self.brokers == 1:  # the proxy faults run on one broker only
            self.kafka_proxy = ProxyThread(
                "127.0.0.1", self.proxied_kafka_port, listen_port=self.kafka_proxy_port, name="kafka"
            )
        common = {"LOG_LEVEL": "WARNING", "RELAY_POLL_INTERVAL_S": "0.2"}
        for name in SERVICE_NAMES:
            self.env[name] = dict(common)
        self.env["order"]["SAGA_STEP_TIMEOUT_S"] = str(self.config.saga_timeout_s)
        proxied = self.env[self.config.proxied]
        proxied["DATABASE_URL"] = self._pg_dsn_via(self.pg_proxy.port, self.config.proxied)
        if self.kafka_proxy is not None:
            proxied["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{self.kafka_proxy.port}"
        t = time.monotonic()
        self.stack.start_services([], ports=self.ports)  # registers the ports; starts nothing
        for name in SERVICE_NAMES:
            self.service(name).start()
        self.stack.wait_healthy(SERVICE_NAMES, timeout_s=120)
        self.timings["services_s"] = round(time.monotonic() - t, 2)
        log(f"stack up in {self.timings['stack_s']}s, services healthy in {self.timings['services_s']}s")

    def stop(self) -> None:
        try:
            self._stop_stack()
        finally:
            if not self.config.keep and self._tmp is not None:
                self._tmp.cleanup()

    def _stop_stack(self) -> None:
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
                log(f"kept the run dir {self.stack.run_dir}")
            else:
                self.stack.purge()

    def _pg_dsn_via(self, port: int, db: str) -> str:
        return self.stack.pg_dsn(db).replace(f":{self.stack.pg_port}/", f":{port}/")

    def service(self, name: str) -> ServiceProcess:
        proc = self.stack.service_process(name, cwd=ROOT, env=self.env[name])
        if os.environ.get("CHAOS_TASKDUMP"):  # debugging: SIGUSR1 dumps the service's asyncio tasks
            return ServiceProcess(
                name,
                "reliability._taskdump",
                run_dir=self.stack.run_dir,
                env=proc.env,
                args=[proc.module],
                cwd=ROOT,
                ports=proc.ports,
            )
        return proc

    def audit_config(self) -> AuditConfig:
        return AuditConfig(
            order_dsn=self.stack.pg_dsn("order"),
            payment_dsn=self.stack.pg_dsn("payment"),
            shipping_dsn=self.stack.pg_dsn("shipping"),
            query_dsn=self.stack.pg_dsn("query"),
            kafka_bootstrap=self.stack.kafka_bootstrap,
            query_url=self.stack.service_url("query"),
            auth_dir=str(self.stack.run_dir / "auth"),
            saga_timeout_s=self.config.saga_timeout_s,
            pending_slack_s=self.config.pending_slack_s,
            grace_s=0.0,
            views="http",
            kafka_timeout_s=60.0,
        )

    async def wait_healthy(self, names: Iterable[str], timeout_s: float = 120.0) -> None:
        await asyncio.to_thread(self.stack.wait_healthy, list(names), timeout_s)

    def injector(self, fault: str) -> Callable[[FaultResult], Awaitable[None]]:
        if fault in faults_broker.FAULTS:
            return faults_broker.injector(self, fault)
        return injector(self, fault)

    # ------------------------------------------------------------------ one fault

    async def run_fault(self, fault: str) -> FaultResult:
        if faults_broker.brokers_for(fault) != self.brokers:
            await asyncio.to_thread(self.use_brokers, faults_broker.brokers_for(fault))
        result = FaultResult(fault, DESCRIPTIONS[fault].format(svc=self.config.proxied))
        inject = self.injector(fault)
        urls = [self.stack.service_url("order")]
        if fault == "kill-order-replica":
            urls.append(await self.start_replica())
        load = OrderLoad(
            urls,
            rate=self.config.rate,
            mix=self.config.mix,
            cancel_ratio=self.config.cancel_ratio,
            seed=self.config.seed,
            customer_prefix=f"chaos-{fault}",
            auth=stack_auth(self.stack.run_dir),
        )
        stop_load = asyncio.Event()
        load_task = asyncio.create_task(load.run(stop=stop_load))
        started = time.monotonic()
        fault_end = started
        try:
            await asyncio.sleep(self.config.pre_s)
            result.fault_started_s = round(time.monotonic() - started, 2)
            log(f"{fault}: injecting ({result.description})")
            await inject(result)
            fault_end = time.monotonic()
            result.fault_ended_s = round(fault_end - started, 2)
            await asyncio.sleep(self.config.post_s)
        except Exception as exc:
            result.error = f"injecting the fault failed: {exc!r}"
            log(f"{fault}: {result.error}")
        finally:
            stop_load.set()
            load_result = await load_task
        self._record_load(result, load_result)
        await self._recover(result, fault_end, load_result)
        if fault == "kill-order-replica":
            await self.stop_replica()
        return result

    def _record_load(self, result: FaultResult, load: LoadResult) -> None:
        summary = load.summary()
        result.load = summary
        result.sent = summary["sent"]
        result.placed = summary["placed"]
        result.refused = result.sent - result.placed
        answered = sorted(a.finished_at for a in load.placed)
        gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
        result.details["longest_202_gap_s"] = round(max(gaps, default=0.0), 3)
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
        log(
            f"{result.fault}: {state} in {result.recovery_s}s; placed {result.placed}, lost {result.lost}, "
            f"duplicates {result.duplicates}, violations {result.violations}"
        )

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

    async def _latest(self, order_ids: Sequence[str]) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.stack.pg_dsn("order"), timeout=5)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(_LATEST_SQL, list(order_ids))
        finally:
            await conn.close()
        return rows

    async def _still_placed(self, order_ids: Sequence[str]) -> list[str]:
        """The orders whose latest fact is still the placing one, or that are not in the log at all."""
        latest = {r["stream_id"]: r["type"] for r in await self._latest(order_ids)}
        return [oid for oid in order_ids if latest.get(oid, OrderPlaced.TYPE) == OrderPlaced.TYPE]

    async def _unsettled(self, order_ids: Sequence[str]) -> int:
        return len(await self._still_placed(order_ids))

    async def _outcomes(self, order_ids: Sequence[str]) -> dict[str, int]:
        """How the fault's orders ended: status (and reason for REJECTED / CANCELLED)."""
        counts: dict[str, int] = {}
        for r in await self._latest(order_ids):
            fact = decode_data(r["type"], r["schema_version"], r["data"])
            label = ORDER_STATUS.get(type(fact), fact.TYPE)
            if isinstance(fact, OrderRejected | OrderCancelled):
                label += f":{fact.reason}"
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    async def _lost(self, order_ids: Sequence[str]) -> list[str]:
        try:
            return await self._still_placed(order_ids)
        except Exception:
            return []  # cannot tell: the audit result says why

    # ------------------------------------------------------------------ the second order replica

    async def start_replica(self) -> str:
        svc = next(s for s in SERVICES if s.name == "order")
        env = {
            **SERVICE_ENV(self.stack, svc),
            **self.env["order"],
            "HTTP_PORT": str(self.replica_port),
            "ORDER_PORT": str(self.replica_port),
        }
        self.replica = ServiceProcess(
            "order-replica", svc.module, run_dir=self.stack.run_dir, env=env, cwd=ROOT, ports=[self.replica_port]
        )
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

    async def stop_replica(self) -> None:
        if self.replica is not None:
            await asyncio.to_thread(self.replica.stop)
            self.replica = None

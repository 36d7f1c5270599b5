"""LocalStack: the real Kafka broker(s) and PostgreSQL server as local processes, by PID.

Used by the test session (one stack on free ports in a temp dir) and by `python -m infra up`
(the README's ports, run dir `.run/`). Everything it starts is recorded in `<run_dir>/pids/` and
stopped by exactly that PID; logs go to `<run_dir>/logs/`. Kafka is one node (`kafka`) or, with
`kafka_brokers=3` (`KAFKA_BROKERS=3 make up`), a 3-node KRaft cluster (`kafka-1` .. `kafka-3`).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType

from infra._aio import run_sync
from infra.kafka_broker import KafkaBroker
from infra.kafka_cluster import KafkaCluster, cluster_ports, in_threads, is_broker_name
from infra.postgres import ADMIN_ROLE, APP_PASSWORD, APP_ROLE, PostgresServer, create_database, service_role
from infra.procs import ManagedProcess, PidRecord, ServiceProcess, list_records
from infra.services import SERVICE_ENV, SERVICES, ServiceDef
from infra.settings import InfraSettings

__all__ = ["LocalStack", "ManagedProcess", "ServiceProcess", "free_port", "free_ports"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


#: Where free ports are chosen: below Linux's ephemeral range (32768-60999), which the kernel
#: hands to OUTGOING connections. A port bound with port 0 comes from that range, so a Kafka
#: or PostgreSQL client connecting in the seconds before the service binds could take it as its
#: local port ("address already in use"); below it, only a listener can hold a port.
PORT_RANGE = (20000, 32000)


def free_ports(n: int) -> list[int]:
    """n distinct ports on 127.0.0.1 that nothing holds right now, chosen at random in PORT_RANGE
    (sockets held open together so they cannot repeat)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", random.randrange(*PORT_RANGE)))
            except OSError:  # taken: draw again
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalStack:
    """Kafka (KRaft, one node or a cluster) + PostgreSQL under one run dir; idempotent start, stop by PID.

    `kafka_brokers` > 1 runs a cluster on `kafka_ports` / `controller_ports` (default: from
    `kafka_port` / `controller_port` upwards in steps of 2) with the replication of
    `settings.replication()` (3 / 2 for three nodes).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        kafka_port: int = 9092,
        controller_port: int = 9093,
        pg_port: int = 5432,
        settings: InfraSettings | None = None,
        kafka_brokers: int = 1,
        kafka_ports: Sequence[int] | None = None,
        controller_ports: Sequence[int] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self._service_ports: dict[str, int] = {}
        self.settings = settings or InfraSettings()
        if kafka_ports is None or controller_ports is None:
            kafka_ports, controller_ports = cluster_ports(kafka_port, controller_port, kafka_brokers)
        self.kafka_port = kafka_ports[0]
        self.controller_port = controller_ports[0]
        self.pg_port = pg_port
        self.kafka_replication = self.settings.replication(len(kafka_ports))
        self.kafka: KafkaBroker | KafkaCluster
        if len(kafka_ports) == 1:
            self.kafka = KafkaBroker(
                self.run_dir,
                port=self.kafka_port,
                controller_port=self.controller_port,
                settings=self.settings,
                replication=self.kafka_replication,
            )
        else:
            self.kafka = KafkaCluster(
                self.run_dir,
                ports=kafka_ports,
                controller_ports=controller_ports,
                settings=self.settings,
                replication=self.kafka_replication,
            )
        self.postgres = PostgresServer(self.run_dir, port=pg_port, settings=self.settings)
        self.timings: dict[str, float] = {}  # seconds each start step took (for reports)

    @classmethod
    def from_settings(cls, settings: InfraSettings | None = None) -> LocalStack:
        """The `make up` stack: ports, brokers and run dir from the environment (KAFKA_PORT,
        KAFKA_BROKERS, PG_PORT, RUN_DIR)."""
        s = settings or InfraSettings()
        return cls(
            s.run_dir,
            kafka_port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            pg_port=s.pg_port,
            settings=s,
            kafka_brokers=s.kafka_brokers,
        )

    # ---- addresses
    @property
    def kafka_bootstrap(self) -> str:
        """Every broker's address, comma-separated (one address for a single node)."""
        return self.kafka.bootstrap

    @property
    def kafka_brokers(self) -> list[KafkaBroker]:
        return list(self.kafka.brokers) if isinstance(self.kafka, KafkaCluster) else [self.kafka]

    def kafka_env(self) -> dict[str, str]:
        """The replication a service creates missing topics with (shared.settings names)."""
        rf, min_isr = self.kafka_replication
        return {"KAFKA_REPLICATION_FACTOR": str(rf), "KAFKA_MIN_INSYNC_REPLICAS": str(min_isr)}

    def pg_dsn(self, database: str) -> str:
        """DSN of the non-superuser operator role `app` (a member of every service role: tests,
        the audit, scratch databases)."""
        return f"postgresql://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{self.pg_port}/{database}"

    def service_dsn(self, service: str, database: str) -> str:
        """DSN of a service's own login role (infra/postgres.py: least privilege)."""
        role = service_role(service)
        return f"postgresql://{role}:{role}@127.0.0.1:{self.pg_port}/{database}"

    def pg_admin_dsn(self, database: str = "postgres") -> str:
        """Superuser DSN (creating databases, inspecting; never for services)."""
        pw = self.settings.pg_admin_password
        return f"postgresql://{ADMIN_ROLE}:{pw}@127.0.0.1:{self.pg_port}/{database}"

    # ---- PostgreSQL
    def start_postgres(self) -> None:
        t = time.monotonic()
        self.postgres.start()
        self.timings["postgres_ready_s"] = round(time.monotonic() - t, 3)

    def stop_postgres(self, mode: str = "fast") -> None:
        self.postgres.stop(mode)

    def create_database(self, name: str, owner: str = APP_ROLE) -> bool:
        """Create an extra database owned by `app` (e.g. a throw-away one per test); idempotent."""
        import asyncpg

        async def go() -> bool:
            conn = await asyncpg.connect(self.pg_admin_dsn())
            try:
                return await create_database(conn, name, owner)
            finally:
                await conn.close()

        return run_sync(go)

    # ---- Kafka
    def start_kafka(self) -> None:
        t = time.monotonic()
        self.kafka.start()
        self.timings["kafka_ready_s"] = round(time.monotonic() - t, 3)

    def stop_kafka(self) -> None:
        """Stop every node, including nodes of another topology left in this run dir (e.g. a
        cluster started with KAFKA_BROKERS=3 and stopped without it), by their PID files."""
        self.kafka.stop()
        strays = [r for r in list_records(self.run_dir) if is_broker_name(r.name) and r.alive()]
        in_threads([partial(ManagedProcess(r.name, r.argv, run_dir=self.run_dir).stop, timeout=60.0) for r in strays])

    def kill_kafka(self) -> None:
        """SIGKILL the broker(s) (fault tests); start_kafka() recovers on the same data."""
        self.kafka.kill()

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one node of the cluster (a single node: the whole of Kafka)."""
        if isinstance(self.kafka, KafkaCluster):
            self.kafka.kill_broker(node_id)
        else:
            self.kafka.kill()

    def start_broker(self, node_id: int) -> None:
        """Restart one node on its data and wait until the cluster lists it again."""
        if isinstance(self.kafka, KafkaCluster):
            self.kafka.start_broker(node_id)
        else:
            self.start_kafka()

    # ---- services (`make up`)
    def service_defs(self) -> list[ServiceDef]:
        return list(SERVICES)

    def start_services(
        self,
        names: Iterable[str] | None = None,
        *,
        cwd: Path | None = None,
        ports: Mapping[str, int] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> list[str]:
        """Start the services whose module exists; return the names started (or already running).

        `ports` overrides a service's HTTP port (tests use free ports); `env` adds settings per
        service (e.g. {"order": {"SAGA_STEP_TIMEOUT_S": "3"}}).
        """
        wanted = set(names) if names is not None else None
        self._service_ports.update(ports or {})
        started: list[str] = []
        for svc in self.service_defs():
            if wanted is not None and svc.name not in wanted:
                continue
            proc = self.service_process(svc.name, cwd=cwd, env=(env or {}).get(svc.name))
            if proc.module_exists():
                proc.start()
                started.append(svc.name)
        return started

    def service_port(self, name: str) -> int:
        if name in self._service_ports:
            return self._service_ports[name]
        return next(s for s in self.service_defs() if s.name == name).port()

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.service_port(name)}"

    def service_process(
        self, name: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """The managed process of one service (to start, stop, SIGKILL or SIGSTOP it by PID)."""
        svc = next(s for s in self.service_defs() if s.name == name)
        port = self.service_port(name)
        full_env = {
            **self.kafka_env(),
            **SERVICE_ENV(self, svc),
            "HTTP_PORT": str(port),
            svc.port_env: str(port),
            **(env or {}),
        }
        return ServiceProcess(svc.name, svc.module, run_dir=self.run_dir, env=full_env, cwd=cwd, ports=[port])

    def wait_healthy(self, names: Iterable[str], timeout_s: float = 90.0) -> None:
        """Poll each service's GET /health until 200; raise with the log tail if one never is."""
        import httpx

        deadline = time.monotonic() + timeout_s
        for name in names:
            url = self.service_url(name) + "/health"
            while True:
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    log_path = self.service_process(name).log_path
                    tail = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
                    raise TimeoutError(f"{name} not healthy at {url} within {timeout_s}s; log tail:\n{tail}")
                time.sleep(0.1)

    def stop_services(self) -> None:
        for rec in list_records(self.run_dir):
            if rec.name != "postgres" and not is_broker_name(rec.name):
                ManagedProcess(rec.name, rec.argv, run_dir=self.run_dir).stop(timeout=15.0)

    # ---- everything
    def start(self) -> None:
        """Start PostgreSQL and Kafka concurrently; on any failure stop both and re-raise."""
        errors: list[BaseException] = []

        def pg() -> None:
            try:
                self.start_postgres()
            except BaseException as exc:
                errors.append(exc)

        t = time.monotonic()
        pg_thread = threading.Thread(target=pg, name="start-postgres", daemon=True)
        pg_thread.start()
        try:
            self.start_kafka()
        except BaseException as exc:
            errors.append(exc)
        pg_thread.join()
        self.timings["stack_ready_s"] = round(time.monotonic() - t, 3)
        if errors:
            self.stop()
            raise errors[0]

    def stop(self) -> None:
        """Stop services, Kafka, PostgreSQL (each attempted even if another fails)."""
        errors: list[BaseException] = []
        for step in (self.stop_services, self.stop_kafka, self.stop_postgres):
            try:
                step()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def purge(self) -> None:
        """Stop everything and delete the data (including a PostgreSQL shadow dir)."""
        self.stop()
        self.postgres.purge()

    def records(self) -> list[PidRecord]:
        return list_records(self.run_dir)

    def live_pids(self) -> dict[str, int]:
        """Name -> PID of every process of this stack that is still alive."""
        return {r.name: r.pid for r in self.records() if r.alive()}

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

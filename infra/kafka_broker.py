"""A Kafka node (KRaft: broker + controller in one JVM) run from Maven jars.

One node is the whole cluster of `make up` by default; `infra.kafka_cluster` runs three of these
as one cluster (KAFKA_BROKERS=3).

Why Maven: the broker is a plain set of jars on Maven Central, so `mvn` (which CI and every
developer machine has) fetches exactly the pinned version in infra/kafka/pom.xml into a cache
directory once; no tarball download, no Docker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from infra._aio import run_sync
from infra.procs import POLL_S, ManagedProcess, tail
from infra.settings import InfraSettings

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM_PATH = KAFKA_DIR / "pom.xml"
LOG4J2_CONFIG = KAFKA_DIR / "log4j2.properties"
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
_COMPLETE = ".complete"

log = logging.getLogger("infra.kafka")


def kafka_version() -> str:
    """The broker version pinned in infra/kafka/pom.xml."""
    m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM_PATH.read_text())
    if not m:
        raise RuntimeError(f"no <kafka.version> in {POM_PATH}")
    return m.group(1).strip()


def _pom_digest() -> str:
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()[:12]


def default_lib_dir() -> Path:
    """Jar cache outside the work tree, so fresh clones on the same machine reuse it."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "events-first" / f"kafka-{kafka_version()}-{_pom_digest()}" / "lib"


def jars_present(lib_dir: Path) -> bool:
    marker = lib_dir / _COMPLETE
    return marker.is_file() and marker.read_text().strip() == _pom_digest()


def ensure_jars(lib_dir: Path | None = None) -> Path:
    """Fetch the broker's runtime classpath with Maven once; skipped when the cache is complete.

    Concurrent callers (parallel test sessions, `make -j`) serialize on a lock file, and the
    jars land in a temp dir that is renamed into place, so a half-copied cache is never used.
    """
    lib_dir = Path(lib_dir or default_lib_dir())
    if jars_present(lib_dir):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "Maven (mvn) is required to fetch the Kafka broker jars; install it "
            "(e.g. apt-get install maven) or set KAFKA_LIB_DIR to a jar directory"
        )
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(lib_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_present(lib_dir):
            return lib_dir
        tmp = lib_dir.parent / f"lib.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"mvn failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
        if not list(tmp.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"mvn produced no broker jar in {tmp}")
        (tmp / _COMPLETE).write_text(_pom_digest())
        shutil.rmtree(lib_dir, ignore_errors=True)
        tmp.rename(lib_dir)
    return lib_dir


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Java 17+ is required to run the Kafka broker (java not on PATH)")
    return java


def random_cluster_id() -> str:
    """Same shape as Kafka's Uuid.randomUuid(): url-safe base64 of 16 random bytes, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class KafkaBroker:
    """Broker + controller on 127.0.0.1, data under `<run_dir>/<name>`, log `<run_dir>/logs/<name>.log`.

    Alone (the defaults) it is a one-node cluster named `kafka`. As a member of a cluster it gets
    its node id, the quorum's voters, the cluster's replication (factor, min.insync.replicas) for
    Kafka's internal topics, and the cluster id file every member is formatted with.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int,
        controller_port: int,
        settings: InfraSettings | None = None,
        node_id: int = 1,
        name: str = "kafka",
        voters: str | None = None,
        replication: tuple[int, int] = (1, 1),
        cluster_id_file: Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.settings = settings or InfraSettings()
        self.node_id = node_id
        self.name = name
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.replication = replication
        self.home = self.run_dir / name
        self.data_dir = self.home / "data"
        self.props_path = self.home / "server.properties"
        self.log_path = self.run_dir / "logs" / f"{name}.log"
        self.cluster_id_file = cluster_id_file or self.home / "cluster.id"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lib_dir(self) -> Path:
        return Path(self.settings.kafka_lib_dir) if self.settings.kafka_lib_dir else default_lib_dir()

    def server_properties(self) -> str:
        """Tuned for dev/tests: the cluster's replication everywhere (1 alone), no auto-created topics."""
        rf, min_isr = (str(n) for n in self.replication)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            # Static quorum: the voter set lives in the config, not in the log, so the same
            # data dir can be restarted on other ports.
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "6",
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted broker cannot register until the controller has
            # expired the dead incarnation's session (default 9 s); 3 s keeps fault tests quick.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # One network and one request thread, for a broker that shares a small machine with
            # everything else: 2 + 4 threads bought nothing at 300 orders/s (make bench), cost an
            # idle system 0.085 cores instead of 0.07, and at 10/s the broker spent 16.3 instead
            # of 12.5 ms of CPU per saga (fewer hand-offs between its threads).
            "num.network.threads": "1",
            "num.io.threads": "1",
            "num.recovery.threads.per.data.dir": "2",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _jvm_args(self) -> list[str]:
        return [
            java_executable(),
            *self.settings.kafka_heap_opts.split(),
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.run_dir / 'logs'}",
            *self.settings.kafka_jit_opts.split(),
            *self.settings.kafka_jvm_opts.split(),
            "-cp",
            str(self.lib_dir / "*"),
        ]

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            self.name,
            [*self._jvm_args(), BROKER_MAIN, str(self.props_path)],
            run_dir=self.run_dir,
            env=dict(os.environ),
            cwd=self.home,
            log_path=self.log_path,
            ports=[self.port, self.controller_port],
        )

    def is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def format_storage(self) -> None:
        """Write meta.properties + the bootstrap checkpoint (KRaft's `kafka-storage format`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cid_file = self.cluster_id_file
        if not cid_file.exists():
            cid_file.write_text(random_cluster_id())
        cmd = [
            *self._jvm_args(),
            STORAGE_TOOL_MAIN,
            "format",
            "-t",
            cid_file.read_text().strip(),
            "-c",
            str(self.props_path),
            "--ignore-formatted",
        ]
        log_file = self.run_dir / "logs" / f"{self.name}-storage.log"
        with log_file.open("ab") as out:
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.home)
        if res.returncode != 0 or not self.is_formatted():
            raise RuntimeError(f"Kafka storage format failed ({res.returncode}):\n{tail(log_file)}")

    def start(self) -> None:
        """Fetch jars if needed, format if needed, start (unless running), wait ready, ensure topics."""
        ensure_jars(self.lib_dir)
        self.wait_ready(self.launch())

    def launch(self) -> ManagedProcess:
        """Format if needed and start the process unless it runs; do not wait (a cluster's
        members must all be started before any of them can be ready)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        proc = self.process()
        if not proc.is_alive():
            proc.forget()
            self.props_path.write_text(self.server_properties())
            if not self.is_formatted():
                self.format_storage()
            proc.start()
        return proc

    def wait_ready(self, proc: ManagedProcess) -> None:
        deadline = time.monotonic() + self.settings.kafka_ready_timeout_s
        run_sync(
            lambda: wait_ready_and_topics(self.bootstrap, [proc], deadline, brokers=1, replication=self.replication)
        )

    def _tracked(self) -> ManagedProcess:
        """Handle on the PID file only (stopping needs neither java nor the jars)."""
        return ManagedProcess(self.name, [], run_dir=self.run_dir, log_path=self.log_path)

    def is_alive(self) -> bool:
        return self._tracked().is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL if it takes longer than `timeout`."""
        self._tracked().stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._tracked().kill()


def dead_error(proc: ManagedProcess, what: str) -> RuntimeError:
    return RuntimeError(f"{what}; last lines of {proc.log_path}:\n{proc.log_tail(60)}")


async def wait_ready_and_topics(
    bootstrap: str, procs: Sequence[ManagedProcess], deadline: float, *, brokers: int, replication: tuple[int, int]
) -> None:
    """Poll every ~100 ms: TCP connect, a metadata call that lists `brokers` brokers, then topics
    (created with `replication`) with leaders, and the group / transaction coordinators."""
    from shared.topics import ensure_topics, topic_specs

    with quiet_aiokafka():
        while len(await registered_brokers(bootstrap)) < brokers:
            _check_alive(procs, deadline, "Kafka exited during start-up", "Kafka not ready in time")
            await asyncio.sleep(POLL_S)

        rf, min_isr = replication
        wanted = {s.name: s.partitions for s in topic_specs()}
        last_error: Exception | None = None
        while True:
            try:
                await asyncio.wait_for(ensure_topics(bootstrap, replication_factor=rf, min_insync_replicas=min_isr), 30)
                if await _topics_have_leaders(bootstrap, wanted) and await _coordinators_ready(bootstrap):
                    return
            except Exception as exc:
                last_error = exc
            _check_alive(
                procs,
                deadline,
                "Kafka exited while creating topics",
                f"topics not ready in time (last error: {last_error!r})",
            )
            await asyncio.sleep(POLL_S)


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """Connection refusals while a node boots or is down are expected: keep them out of the logs."""
    quiet = logging.getLogger("aiokafka")
    old_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(old_level)


def _check_alive(procs: Sequence[ManagedProcess], deadline: float, dead: str, late: str) -> None:
    for proc in procs:
        if not proc.is_alive():
            raise dead_error(proc, f"{dead} ({proc.name})")
    if time.monotonic() > deadline:
        raise dead_error(procs[0], late)


async def registered_brokers(bootstrap: str) -> set[int]:
    """Node ids of the brokers the cluster's metadata lists now (empty while none answers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not any(port_open(int(addr.rsplit(":", 1)[1])) for addr in bootstrap.split(",")):
        return set()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        info = await asyncio.wait_for(admin.describe_cluster(), 5)
        return {int(b["node_id"]) for b in info.get("brokers", [])}
    except Exception:
        return set()
    finally:
        await _close_quietly(admin)


async def _topics_have_leaders(bootstrap: str, wanted: dict[str, int]) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        found = {t["topic"]: t for t in await admin.describe_topics(list(wanted))}
    finally:
        await _close_quietly(admin)
    for name, partitions in wanted.items():
        t = found.get(name)
        if t is None or t["error_code"] != 0 or len(t["partitions"]) != partitions:
            return False
        if any(p["leader"] < 0 or p["error_code"] != 0 for p in t["partitions"]):
            return False
    return True


async def _coordinators_ready(bootstrap: str) -> bool:
    """Make the broker create __consumer_offsets and __transaction_state now.

    Why: both are created lazily on the first FindCoordinator; doing it here keeps the first
    consumer group / transactional producer of a test from paying (and timing out on) it.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.find_coordinator("events-first-warmup", 0)
        await admin.find_coordinator("events-first-warmup", 1)
        return True
    except Exception:
        return False
    finally:
        await _close_quietly(admin)


async def _close_quietly(admin: object) -> None:
    try:
        await admin.close()  # type: ignore[attr-defined]
    except Exception:
        pass

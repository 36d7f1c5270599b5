"""A KRaft cluster of N combined broker + controller nodes on 127.0.0.1 (`KAFKA_BROKERS=3`).

Why combined nodes: on a 2-core machine three extra controller JVMs would cost more than they
teach; every node votes in the static quorum (`controller.quorum.voters`), so the cluster keeps
a controller majority and its partition leaders while any one node is down. Each node has its
own ports, data dir (`<run_dir>/kafka-<n>/`), log (`<run_dir>/logs/kafka-<n>.log`) and PID file;
all are formatted with one cluster id (`<run_dir>/kafka-cluster.id`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from infra._aio import run_sync
from infra.kafka_broker import (
    KafkaBroker,
    dead_error,
    ensure_jars,
    quiet_aiokafka,
    random_cluster_id,
    registered_brokers,
    wait_ready_and_topics,
)
from infra.procs import POLL_S, ManagedProcess
from infra.settings import InfraSettings

T = TypeVar("T")

#: PID-file names of Kafka nodes: `kafka` (one node) or `kafka-<n>` (a cluster's node n).
BROKER_NAME = re.compile(r"^kafka(-\d+)?$")


def is_broker_name(name: str) -> bool:
    return bool(BROKER_NAME.match(name))


def cluster_ports(first_port: int, first_controller_port: int, brokers: int) -> tuple[list[int], list[int]]:
    """The default ports of a cluster: node n on first + 2(n-1), so 9092/9093, 9094/9095, ..."""
    return (
        [first_port + 2 * i for i in range(brokers)],
        [first_controller_port + 2 * i for i in range(brokers)],
    )


class KafkaCluster:
    """N KafkaBroker nodes started, stopped and waited for together; one node at a time for faults."""

    def __init__(
        self,
        run_dir: Path,
        *,
        ports: Sequence[int],
        controller_ports: Sequence[int],
        settings: InfraSettings | None = None,
        replication: tuple[int, int] | None = None,
    ) -> None:
        if len(ports) != len(controller_ports) or len(ports) < 2:
            raise ValueError(f"a cluster needs 2+ nodes with one controller port each: {ports} / {controller_ports}")
        self.run_dir = Path(run_dir).resolve()
        self.settings = settings or InfraSettings()
        self.replication = replication or self.settings.replication(len(ports))
        voters = ",".join(f"{n}@127.0.0.1:{c}" for n, c in enumerate(controller_ports, start=1))
        self.brokers = [
            KafkaBroker(
                self.run_dir,
                port=port,
                controller_port=controller,
                settings=self.settings,
                node_id=n,
                name=f"kafka-{n}",
                voters=voters,
                replication=self.replication,
                cluster_id_file=self.run_dir / "kafka-cluster.id",
            )
            for n, (port, controller) in enumerate(zip(ports, controller_ports, strict=True), start=1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node, so a client bootstraps while any one of them is down."""
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def log_path(self) -> Path:
        return self.brokers[0].log_path

    def broker(self, node_id: int) -> KafkaBroker:
        return next(b for b in self.brokers if b.node_id == node_id)

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.kafka_ready_timeout_s

    def start(self) -> None:
        """Start every node that is not running (formatting new ones concurrently), then wait for
        all of them to be registered and for the topics to exist with the cluster's replication."""
        ensure_jars(self.brokers[0].lib_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cid = self.run_dir / "kafka-cluster.id"
        if not cid.exists():
            cid.write_text(random_cluster_id())
        procs = in_threads([b.launch for b in self.brokers])
        deadline = self._deadline()
        run_sync(
            lambda: wait_ready_and_topics(
                self.bootstrap, procs, deadline, brokers=len(self.brokers), replication=self.replication
            )
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Controlled shutdown of every node at once (SIGTERM; SIGKILL past `timeout`).

        Why at once: stopped one after another, the last node waits for a controller quorum
        that is already gone; together they all leave while the quorum still answers.
        """
        in_threads([partial(b.stop, timeout) for b in self.brokers])

    def kill(self) -> None:
        in_threads([b.kill for b in self.brokers])

    def is_alive(self) -> bool:
        return all(b.is_alive() for b in self.brokers)

    # ---- one node (faults)
    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one node; the others keep the quorum and take over its partition leaders."""
        self.broker(node_id).kill()

    def start_broker(self, node_id: int) -> None:
        """Restart one node on its data and wait until it is back in the cluster.

        Asked of the node itself: it opens its listener only once it has caught up with the
        metadata log, and lists itself only once the controller has unfenced it (the others may
        still list the dead incarnation for up to broker.session.timeout.ms).
        """
        broker = self.broker(node_id)
        proc = broker.launch()
        deadline = self._deadline()
        run_sync(lambda: _wait_registered(broker.bootstrap, node_id, proc, deadline))

    def wait_in_sync(self, topics: Sequence[str], timeout_s: float = 120.0) -> int:
        """Wait until every partition of `topics` has its full ISR again; return the partitions
        still under-replicated at the end (0 = in sync)."""
        deadline = time.monotonic() + timeout_s

        async def go() -> int:
            while True:
                try:
                    lagging = await under_replicated(self.bootstrap, topics)
                except Exception:
                    lagging = len(topics)  # no answer yet: count every topic as lagging
                if lagging == 0 or time.monotonic() > deadline:
                    return lagging
                await asyncio.sleep(POLL_S * 5)

        return run_sync(go)

    def quorum_leader(self) -> int | None:
        """Node id of the active controller, from the nodes' `quorum-state` files (the newest
        epoch wins): the node whose loss moves the controller and a third of the leaders."""
        best: tuple[int, int] | None = None
        for b in self.brokers:
            if not b.is_alive():  # a dead node's file still names the leader it last knew
                continue
            try:
                state = json.loads((b.data_dir / "__cluster_metadata-0" / "quorum-state").read_text())
            except (OSError, ValueError):
                continue
            leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
            if leader > 0 and (best is None or epoch > best[1]):
                best = (leader, epoch)
        return best[0] if best else None


async def under_replicated(bootstrap: str, topics: Sequence[str]) -> int:
    """Partitions of `topics` whose in-sync replicas are fewer than their replicas or that have no
    leader (a topic the metadata reports an error for counts as one). Raises when no broker answers."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    with quiet_aiokafka():
        try:
            await admin.start()
            described = await admin.describe_topics(list(topics))
        finally:
            try:
                await admin.close()
            except Exception:
                pass
    lagging = 0
    for t in described:
        if t["error_code"] != 0:
            lagging += 1
            continue
        lagging += sum(1 for p in t["partitions"] if set(p["isr"]) != set(p["replicas"]) or p["leader"] < 0)
    return lagging


async def _wait_registered(bootstrap: str, node_id: int, proc: ManagedProcess, deadline: float) -> None:
    with quiet_aiokafka():
        while node_id not in await registered_brokers(bootstrap):
            if not proc.is_alive():
                raise dead_error(proc, f"Kafka node {node_id} exited while restarting")
            if time.monotonic() > deadline:
                raise dead_error(proc, f"Kafka node {node_id} not registered again in time")
            await asyncio.sleep(POLL_S)


def in_threads(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls concurrently (JVM start-ups and shutdowns are slow); re-raise the first error."""
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]

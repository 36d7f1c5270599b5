"""A 3-broker KRaft cluster started by the project's infra: replication 3 / min ISR 2, and it
keeps taking acks=all writes and serving reads while one broker is SIGKILLed.

The test runs its OWN cluster on free ports in a temp dir (not the session `stack`), because it
kills a broker; everything it started is stopped by PID at the end, and checked to be gone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.kafka_cluster import KafkaCluster, under_replicated
from infra.stack import LocalStack, free_ports
from shared.contract import ALL_TOPICS, ORDER_EVENTS
from shared.kafka import make_admin, make_producer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BROKERS = 3
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Iterator[LocalStack]:
    ports = free_ports(2 * BROKERS + 1)
    stack = LocalStack(
        tmp_path / "run", kafka_ports=ports[:BROKERS], controller_ports=ports[BROKERS:-1], pg_port=ports[-1]
    )
    try:
        yield stack
    finally:
        records = stack.records()
        stack.stop_kafka()
        left = [r for r in records if r.alive()]
        assert not left, f"processes left behind: {left}"


async def _describe(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    admin = make_admin(bootstrap, client_id="cluster-test")
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions: list[dict[str, Any]] = described["partitions"]
    return partitions


async def _min_isr(bootstrap: str, topic: str) -> str:
    admin = make_admin(bootstrap, client_id="cluster-test")
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = {
        e["config_names"]: e["config_value"]
        for resp in responses
        for res in resp.to_object()["resources"]
        for e in res["config_entries"]
    }
    return str(entries["min.insync.replicas"])


async def _produce(bootstrap: str, values: list[bytes]) -> None:
    """acks=all through the kernel's producer factory (as the relay publishes)."""
    producer = make_producer(bootstrap, client_id="cluster-test")
    await producer.start()
    try:
        # A broker that was SIGKILLed still leads its partitions until the controller fences it
        # (broker.session.timeout.ms); the producer retries on the new leader within its timeout.
        await asyncio.gather(*[producer.send_and_wait(ORDER_EVENTS, v, key=v) for v in values])
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, wanted: set[bytes], timeout_s: float = 60.0) -> set[bytes]:
    """Through a consumer group (its coordinator may have moved), from the beginning."""
    consumer = AIOKafkaConsumer(
        ORDER_EVENTS,
        bootstrap_servers=bootstrap,
        group_id=f"cluster-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen: set[bytes] = set()
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not wanted <= seen and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen.update(r.value for r in records if r.value in wanted)
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


async def _eventually(
    read: Callable[[], Awaitable[list[dict[str, Any]]]],
    ok: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """`read()` until `ok` holds or the timeout passes; the last value read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    value = await read()
    while not ok(value) and loop.time() < deadline:
        await asyncio.sleep(0.2)
        value = await read()
    return value


async def test_three_brokers_replicate_and_survive_losing_one(cluster_stack: LocalStack) -> None:
    stack = cluster_stack
    await asyncio.to_thread(stack.start_kafka)
    cluster = stack.kafka
    assert isinstance(cluster, KafkaCluster)
    assert set(stack.live_pids()) == {"kafka-1", "kafka-2", "kafka-3"}
    assert stack.kafka_bootstrap.count(",") == BROKERS - 1, "the bootstrap list names every broker"
    assert stack.kafka_replication == (3, 2)

    # Every partition of an event topic has three replicas, all in sync; writes need two.
    partitions = await _describe(stack.kafka_bootstrap, ORDER_EVENTS)
    assert partitions and all(len(p["replicas"]) == 3 and set(p["isr"]) == set(p["replicas"]) for p in partitions)
    assert await _min_isr(stack.kafka_bootstrap, ORDER_EVENTS) == "2"
    offsets = await _describe(stack.kafka_bootstrap, "__consumer_offsets")
    assert offsets and all(len(p["replicas"]) == 3 for p in offsets), "group offsets are replicated too"

    before = [f"before-{uuid.uuid4().hex}".encode() for _ in range(30)]
    await _produce(stack.kafka_bootstrap, before)

    # SIGKILL the node that leads partition 0 (it leads others too, and may be the controller).
    victim = next(p["leader"] for p in partitions if p["partition"] == 0)
    await asyncio.to_thread(stack.kill_broker, victim)
    assert f"kafka-{victim}" not in stack.live_pids()

    during = [f"during-{uuid.uuid4().hex}".encode() for _ in range(30)]
    await _produce(stack.kafka_bootstrap, during)  # acks=all: two in-sync replicas suffice
    assert await _read_all(stack.kafka_bootstrap, set(before + during)) == set(before + during)
    # The controller fenced the dead node: it leads nothing and is out of every ISR (the
    # metadata reaches every broker shortly after, hence the bounded wait).
    now = await _eventually(
        lambda: _describe(stack.kafka_bootstrap, ORDER_EVENTS),
        lambda ps: all(p["leader"] != victim and victim not in p["isr"] and len(p["isr"]) == 2 for p in ps),
    )
    assert all(p["leader"] != victim and victim not in p["isr"] and len(p["isr"]) == 2 for p in now), now

    # Back on its data: it catches up and every partition has its three in-sync replicas again.
    await asyncio.to_thread(stack.start_broker, victim)
    assert await asyncio.to_thread(cluster.wait_in_sync, list(ALL_TOPICS), 90.0) == 0
    assert await under_replicated(stack.kafka_bootstrap, [ORDER_EVENTS]) == 0
    after = [f"after-{uuid.uuid4().hex}".encode() for _ in range(10)]
    await _produce(stack.kafka_bootstrap, after)
    assert await _read_all(stack.kafka_bootstrap, set(before + during + after)) == set(before + during + after)

    # Stopped by PID: all three nodes and their PID files are gone.
    await asyncio.to_thread(stack.stop_kafka)
    assert stack.live_pids() == {}
    assert not [r for r in stack.records() if r.name.startswith("kafka")]


def _free_run_of_ports(n: int) -> int:
    """A first port p with p .. p+n-1 all free now (the cluster's default ports step from it)."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + n >= 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {n} free ports")


_STACK_ENV = {
    "RUN_DIR",
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_BROKERS",
    "KAFKA_REPLICATION_FACTOR",
    "KAFKA_MIN_INSYNC_REPLICAS",
    "PG_PORT",
}


def test_cli_up_ps_logs_down_with_three_brokers(tmp_path: Path) -> None:
    """`KAFKA_BROKERS=3 python -m infra up`; `ps` and `logs` show the three nodes; `down` without
    KAFKA_BROKERS still stops all of them (by their PID files)."""
    base = _free_run_of_ports(2 * BROKERS)
    (pg_port,) = free_ports(1)
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in _STACK_ENV},
        "RUN_DIR": str(tmp_path / "run"),
        "KAFKA_PORT": str(base),
        "KAFKA_CONTROLLER_PORT": str(base + 1),
        "PG_PORT": str(pg_port),
    }

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra", *args],
            env={**env, **extra},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    stack = LocalStack(tmp_path / "run", kafka_port=base, controller_port=base + 1, pg_port=pg_port, kafka_brokers=3)
    try:
        up = cli("up", "--no-services", KAFKA_BROKERS="3")
        assert up.returncode == 0, up.stdout + up.stderr
        for n, port in enumerate((base, base + 2, base + 4), start=1):
            assert f"kafka-{n}" in up.stdout and f"127.0.0.1:{port}" in up.stdout, up.stdout
        assert "replication factor 3, min ISR 2" in up.stdout, up.stdout
        ps = cli("ps")
        assert ps.stdout.count("alive") == BROKERS + 1, ps.stdout
        assert all(f"kafka-{n}" in ps.stdout for n in range(1, BROKERS + 1)), ps.stdout
        logs = cli("logs", "kafka", "-n", "1")
        assert [f"kafka-{n}.log" in logs.stdout for n in range(1, BROKERS + 1)] == [True] * BROKERS, logs.stdout
        records = stack.records()
        down = cli("down")  # no KAFKA_BROKERS: the nodes are found by their PID files
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [r for r in records if r.alive()]
        assert "nothing started" in cli("ps").stdout
    finally:
        records = stack.records()
        stack.stop()
        assert not [r for r in records if r.alive()]

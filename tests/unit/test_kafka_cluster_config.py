"""The 3-broker cluster's configuration, without starting anything: settings, ports, each node's
server.properties, the stack's bootstrap list and service env, the topics' replication."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.cli import _log_files
from infra.kafka_broker import KafkaBroker
from infra.kafka_cluster import KafkaCluster, cluster_ports, is_broker_name
from infra.settings import InfraSettings, replication_for
from infra.stack import LocalStack
from shared.contract import ALL_TOPICS, EVENT_TOPICS
from shared.settings import ServiceSettings
from shared.topics import ensure_topics, topic_specs


def props(broker: KafkaBroker) -> dict[str, str]:
    return dict(line.split("=", 1) for line in broker.server_properties().splitlines())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BROKERS", "KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_replication_defaults_survive_one_broker_down_where_possible() -> None:
    assert replication_for(1) == (1, 1)
    assert replication_for(2) == (2, 1)
    assert replication_for(3) == (3, 2)
    assert replication_for(5) == (3, 2)
    assert replication_for(3, 3, 3) == (3, 3)
    with pytest.raises(ValueError):
        replication_for(1, 3)
    with pytest.raises(ValueError):
        replication_for(3, 2, 3)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert InfraSettings().kafka_brokers == 1 and InfraSettings().replication() == (1, 1)
    assert ServiceSettings().kafka_replication_factor == 1 and ServiceSettings().kafka_min_insync_replicas == 1
    monkeypatch.setenv("KAFKA_BROKERS", "3")
    assert InfraSettings().replication() == (3, 2)
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "3")
    assert InfraSettings().replication() == (3, 3)
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    assert (ServiceSettings().kafka_replication_factor, ServiceSettings().kafka_min_insync_replicas) == (3, 3)


def test_cluster_ports_step_by_two() -> None:
    assert cluster_ports(9092, 9093, 3) == ([9092, 9094, 9096], [9093, 9095, 9097])
    assert cluster_ports(9092, 9093, 1) == ([9092], [9093])


def test_each_node_has_its_id_ports_dir_and_log_and_all_share_the_quorum(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, ports=[1001, 1003, 1005], controller_ports=[1002, 1004, 1006])
    nodes = [props(b) for b in cluster.brokers]
    assert [p["node.id"] for p in nodes] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in nodes} == {"1@127.0.0.1:1002,2@127.0.0.1:1004,3@127.0.0.1:1006"}
    assert [p["listeners"] for p in nodes] == [
        f"PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}" for b, c in ((1001, 1002), (1003, 1004), (1005, 1006))
    ]
    assert len({p["log.dirs"] for p in nodes}) == 3
    assert len({b.log_path for b in cluster.brokers}) == 3
    assert len({b.cluster_id_file for b in cluster.brokers}) == 1, "one cluster id for every node"
    for p in nodes:
        assert p["process.roles"] == "broker,controller"
        for key in ("default.replication.factor", "offsets.topic.replication.factor"):
            assert p[key] == "3", key
        assert p["transaction.state.log.replication.factor"] == "3"
        for key in ("min.insync.replicas", "transaction.state.log.min.isr"):
            assert p[key] == "2", key
    assert cluster.bootstrap == "127.0.0.1:1001,127.0.0.1:1003,127.0.0.1:1005"
    assert [b.name for b in cluster.brokers] == ["kafka-1", "kafka-2", "kafka-3"]
    assert all(is_broker_name(b.name) for b in cluster.brokers)
    assert is_broker_name("kafka") and not is_broker_name("kafka-ui") and not is_broker_name("order")


def test_a_single_node_is_unchanged(tmp_path: Path) -> None:
    single = props(KafkaBroker(tmp_path, port=1001, controller_port=1002))
    assert single["node.id"] == "1" and single["controller.quorum.voters"] == "1@127.0.0.1:1002"
    assert single["offsets.topic.replication.factor"] == "1" and single["min.insync.replicas"] == "1"
    stack = LocalStack(tmp_path, kafka_port=1001, controller_port=1002, pg_port=1003)
    assert isinstance(stack.kafka, KafkaBroker) and stack.kafka.name == "kafka"
    assert stack.kafka_bootstrap == "127.0.0.1:1001"
    assert stack.kafka.home == stack.run_dir / "kafka"


def test_the_stack_of_make_up_with_three_brokers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "3")
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    stack = LocalStack.from_settings()
    assert isinstance(stack.kafka, KafkaCluster)
    assert stack.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert [b.node_id for b in stack.kafka_brokers] == [1, 2, 3]
    env = stack.service_process("order").env or {}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
    assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")


def test_make_logs_kafka_shows_every_node(tmp_path: Path) -> None:
    for name in ("kafka-1", "kafka-2", "kafka-3", "kafka-1-storage", "order"):
        (tmp_path / f"{name}.log").write_text("x")
    assert [p.name for p in _log_files(tmp_path, "kafka")] == ["kafka-1.log", "kafka-2.log", "kafka-3.log"]
    assert [p.name for p in _log_files(tmp_path, "order")] == ["order.log"]


def test_every_topic_carries_its_min_insync_replicas() -> None:
    assert all(s.configs["min.insync.replicas"] == "2" for s in topic_specs(6, 2))
    assert all(s.configs["min.insync.replicas"] == "1" for s in topic_specs())
    assert {s.name for s in topic_specs()} == set(ALL_TOPICS)


class RecordingAdmin:
    created: list[Any] = []

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, new_topics: list[Any], *_: Any, **__: Any) -> None:
        RecordingAdmin.created = list(new_topics)


async def test_ensure_topics_creates_with_the_replication_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.kafka.AIOKafkaAdminClient", RecordingAdmin)
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    await ensure_topics("k:1")
    created = {t.name: t for t in RecordingAdmin.created}
    assert set(created) == set(ALL_TOPICS)
    assert {t.replication_factor for t in created.values()} == {3}
    assert all(created[t].topic_configs["min.insync.replicas"] == "2" for t in EVENT_TOPICS)
    await ensure_topics("k:1", replication_factor=1, min_insync_replicas=1)  # explicit wins
    assert {t.replication_factor for t in RecordingAdmin.created} == {1}
    with pytest.raises(ValueError):
        await ensure_topics("k:1", replication_factor=1, min_insync_replicas=2)

"""The broker fault's wiring in the chaos harness, without starting anything: a run whose fault
needs a 3-broker cluster gets one, every other fault keeps the one proxied broker.

The fault itself runs with `python -m reliability chaos --faults kill-broker` (minutes: a cluster,
PostgreSQL and four services under load); its figures are in infra/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.kafka_cluster import KafkaCluster
from reliability.chaos import ALL_FAULTS, DESCRIPTIONS, ChaosConfig, ChaosHarness, ProxiedKafkaBroker, faults_broker


def harness(tmp_path: Path, faults: tuple[str, ...]) -> ChaosHarness:
    return ChaosHarness(ChaosConfig(faults=faults, run_dir=tmp_path, out=None))


def test_broker_faults_are_registered_with_a_description() -> None:
    assert set(faults_broker.FAULTS) <= set(ALL_FAULTS)
    assert all(DESCRIPTIONS[f] for f in faults_broker.FAULTS)
    assert faults_broker.brokers_for("kill-broker") == 3
    assert {faults_broker.brokers_for(f) for f in ALL_FAULTS if f not in faults_broker.FAULTS} == {1}
    with pytest.raises(ValueError):
        faults_broker.injector(ChaosHarness.__new__(ChaosHarness), "kill-kafka")


def test_a_broker_fault_first_gets_a_three_broker_stack(tmp_path: Path) -> None:
    h = harness(tmp_path, ("kill-broker", "kill-order"))
    assert h.brokers == 3
    assert isinstance(h.stack.kafka, KafkaCluster) and len(h.stack.kafka.brokers) == 3
    assert h.stack.kafka_replication == (3, 2)
    assert h.stack.kafka_bootstrap.count(",") == 2
    assert callable(h.injector("kill-broker"))


def test_other_faults_keep_the_proxied_single_broker(tmp_path: Path) -> None:
    h = harness(tmp_path, ("kill-order", "kill-broker"))
    assert h.brokers == 1
    assert isinstance(h.stack.kafka, ProxiedKafkaBroker)
    assert h.stack.kafka_replication == (1, 1)


def test_settle_summary() -> None:
    assert faults_broker._summary([]) == {"orders": 0}
    assert faults_broker._summary([0.3, 0.1, 0.2, 4.0]) == {"orders": 4, "p50": 0.3, "p99": 4.0, "max": 4.0}

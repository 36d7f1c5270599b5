"""What a chaos run does (faults, load, timings) and what it records per fault."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reliability.load import Mix
from shared.contract import PAYMENT_COMMANDS, PAYMENT_EVENTS, SHIPPING_COMMANDS, SHIPPING_EVENTS

RESULTS = Path(__file__).resolve().parent.parent / "results"
SERVICE_NAMES = ("order", "payment", "shipping", "query")

ALL_FAULTS = (
    "kill-order",
    "kill-payment",
    "kill-shipping",
    "kill-query",
    "kill-order-replica",
    "kill-kafka",
    "pg-immediate",
    "sigstop-payment",
    "sigstop-shipping",
    "rewind-offsets",
    "poison",
    "pg-latency",
    "pg-reset",
    "pg-blackhole",
    "kafka-latency",
    "kafka-reset",
    "kafka-blackhole",
    "sigterm-order",  # reliability/chaos/faults_sigterm.py, like the three below
    "sigterm-payment",
    "sigterm-shipping",
    "sigterm-query",
    "kill-broker",  # reliability/chaos/faults_broker.py, on a 3-broker stack of its own
)
#: What `make test` runs (tests/reliability/test_chaos_reduced.py).
REDUCED_FAULTS = ("kill-order", "kill-kafka", "pg-immediate", "poison")

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
    "sigterm-order": "SIGTERM the order service under load (graceful stop, exit 0), restart it",
    "sigterm-payment": "SIGTERM the payment service under load (graceful stop, exit 0), restart it",
    "sigterm-shipping": "SIGTERM the shipping service under load (graceful stop, exit 0), restart it",
    "sigterm-query": "SIGTERM the query service under load (graceful stop, exit 0), restart it",
    "kill-broker": "SIGKILL the controller node of a 3-broker Kafka cluster (RF 3, min ISR 2), restart it",
}

#: Consumer groups (= stored-position names) of the write services. The participants' groups
#: are named after the command topic they read; the saga's is its own.
PAYMENT_CONSUMER = PAYMENT_COMMANDS
SHIPPING_CONSUMER = SHIPPING_COMMANDS
SAGA_CONSUMER = "order.saga"
#: service → (its consumer group, the topics that group reads).
WRITE_CONSUMERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "payment": (PAYMENT_CONSUMER, (PAYMENT_COMMANDS,)),
    "shipping": (SHIPPING_CONSUMER, (SHIPPING_COMMANDS,)),
    "order": (SAGA_CONSUMER, (PAYMENT_EVENTS, SHIPPING_EVENTS)),
}


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


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

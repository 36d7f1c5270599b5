"""The audit reads history: its checks over facts and messages written by schema version 1.

tests/fixtures/v1/ holds every event-log row of the three write services and every topic
message of a settled stack run by the previous code (schema version 1 everywhere), and the
query service's answers. The audit, reading them through the contract's codec (which upcasts
version 1 payment facts and `saga.step_requested` facts), must find them clean, and so for a
mix of old and current versions (some orders' facts re-encoded by today's codec, as after an
upgrade); a deliberately broken copy must be flagged as exactly what was broken.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from reliability.audit import AuditConfig, AuditReport, Snapshot, TopicRecord, check, recorded_from_row
from shared.contract import (
    PAYMENT_EVENTS,
    Money,
    PaymentCaptured,
    PaymentFact,
    PaymentRefunded,
    SagaStepRequested,
    decode,
    decode_data,
    encode,
    encode_data,
)

V1 = Path(__file__).resolve().parent.parent / "fixtures" / "v1"
LOG_FILES = {"order": "order_events.jsonl", "payment": "payment_events.jsonl", "shipping": "shipping_events.jsonl"}
EXPECTED: dict[str, Any] = json.loads((V1 / "expected.json").read_text())
ORDER_IDS = sorted(EXPECTED["orders"])
CONFIG = AuditConfig(
    order_dsn="-",
    payment_dsn="-",
    shipping_dsn="-",
    query_dsn="-",
    kafka_bootstrap="-",
    query_url="-",
    saga_timeout_s=30.0,
    pending_slack_s=30.0,
    grace_s=0.0,
)

Rows = dict[str, list[dict[str, Any]]]  # log → rows of its `events` table, as captured
Messages = list[dict[str, Any]]  # topic messages, as captured


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (V1 / name).read_text().splitlines() if line.strip()]


def captured() -> tuple[Rows, Messages]:
    """A fresh copy of the captured rows and messages (tests change them)."""
    return {log: _jsonl(name) for log, name in LOG_FILES.items()}, _jsonl("topics.jsonl")


def snapshot_of(rows: Rows, messages: Messages) -> Snapshot:
    """What `reading.collect()` would have read from that stack: the rows go through the same
    decoding as the database's, the messages are the raw bytes, the views the query's answers."""
    logs = {
        log: [
            recorded_from_row(
                log, {**r, "occurred_at": datetime.fromisoformat(r["occurred_at"]), "data": json.dumps(r["data"])}
            )
            for r in sorted(log_rows, key=lambda r: r["position"])
        ]
        for log, log_rows in rows.items()
    }
    topics: dict[str, list[TopicRecord]] = defaultdict(list)
    for m in messages:
        topics[m["topic"]].append(TopicRecord(m["topic"], m["partition"], m["offset"], m["key"], m["value"].encode()))
    views = {oid: dict(o["query_service"]["GET /orders/{id}"]) for oid, o in EXPECTED["orders"].items()}
    return Snapshot(
        taken_at=datetime.fromisoformat(EXPECTED["captured_at"].replace("Z", "+00:00")),
        logs=logs,
        outbox_backlog={log: 0 for log in LOG_FILES},
        topics=dict(topics),
        views=views,
    )


def audit(rows: Rows, messages: Messages) -> AuditReport:
    return check(snapshot_of(rows, messages), CONFIG, expected_orders=ORDER_IDS)


def assert_clean(report: AuditReport) -> None:
    assert report.ok, report.render()
    journeys = Counter(
        {
            "confirmed": "CONFIRMED",
            "delivered": "DELIVERED",
            "shipped": "SHIPPED",
            "declined": "REJECTED",
            "over_limit": "REJECTED",
            "unserved": "CANCELLED",
            "cancelled_after_confirmed": "CANCELLED",
        }[o["journey"]]
        for o in EXPECTED["orders"].values()
    )
    info = report.info
    assert info["orders"] == 21 and info["orders_by_status"] == dict(sorted(journeys.items()))
    assert info["events"] == {"order": 360, "payment": 40, "shipping": 32}
    assert info["payments"] == 21 and info["shipments"] == 16
    assert set(info["topic_duplicates"].values()) == {0} and set(info["foreign_messages"].values()) == {0}
    assert set(info["dlq"].values()) == {0}


def reencoded(rows: Rows, messages: Messages, order_ids: set[str]) -> tuple[Rows, Messages]:
    """The facts and messages of `order_ids` as today's codec writes them (current versions)."""
    new_rows: Rows = {}
    for log, log_rows in rows.items():
        new_rows[log] = []
        for r in log_rows:
            if r["data"]["order_id"] in order_ids:
                fact = decode_data(r["type"], r["schema_version"], json.dumps(r["data"]))
                r = {**r, "schema_version": fact.VERSION, "data": json.loads(encode_data(fact))}
            new_rows[log].append(r)
    new_messages: Messages = []
    for m in messages:
        message = decode(m["value"].encode())
        if message.data.order_id in order_ids:
            m = {**m, "value": encode(message).decode()}
        new_messages.append(m)
    return new_rows, new_messages


def mixed() -> tuple[Rows, Messages]:
    """The first order of each journey re-encoded in the current versions (so the broken copies
    below break a re-encoded one), the others as version 1 wrote them."""
    rows, messages = captured()
    return reencoded(rows, messages, {str(ids[0]) for ids in EXPECTED["journeys"].values()})


# ---------------------------------------------------------------------- clean


def test_the_v1_fixtures_are_clean() -> None:
    rows, messages = captured()
    assert {r["schema_version"] for log_rows in rows.values() for r in log_rows} == {1}
    assert all('"schemaversion":"1"' in m["value"] for m in messages)
    snapshot = snapshot_of(rows, messages)
    # version 1 payment facts were read as the current version: the amount is one Money value
    payments = [e.data for e in snapshot.logs["payment"]]
    assert payments and all(isinstance(p, PaymentFact) and isinstance(p.amount, Money) for p in payments)
    assert_clean(check(snapshot, CONFIG, expected_orders=ORDER_IDS))


def test_a_mix_of_old_and_current_versions_is_clean() -> None:
    rows, messages = mixed()
    payment_versions = Counter(r["schema_version"] for r in rows["payment"])
    step_versions = Counter(r["schema_version"] for r in rows["order"] if r["type"] == SagaStepRequested.TYPE)
    assert payment_versions[1] > 0 and payment_versions[PaymentCaptured.VERSION] > 0, payment_versions
    assert step_versions[1] > 0 and step_versions[SagaStepRequested.VERSION] > 0, step_versions
    wire = Counter(json.loads(m["value"])["schemaversion"] for m in messages if m["topic"] == PAYMENT_EVENTS)
    assert wire["1"] > 0 and wire[str(PaymentCaptured.VERSION)] > 0, wire
    # nothing of the payment token is left in a re-encoded saga fact
    assert not any(
        "payment_token" in json.dumps(r["data"])
        for r in rows["order"]
        if r["schema_version"] == SagaStepRequested.VERSION
    )
    assert_clean(audit(rows, messages))


def test_everything_in_the_current_versions_is_clean() -> None:
    rows, messages = captured()
    assert_clean(audit(*reencoded(rows, messages, set(ORDER_IDS))))


# ---------------------------------------------------------------------- broken copies


def _order_of_journey(journey: str) -> str:
    return str(EXPECTED["journeys"][journey][0])


def _message_id(message: dict[str, Any]) -> str:
    return str(json.loads(message["value"])["id"])


def _row(rows: Rows, log: str, fact_type: str, order_id: str) -> dict[str, Any]:
    return next(r for r in rows[log] if r["type"] == fact_type and r["data"]["order_id"] == order_id)


def _captured_for_less(rows: Rows, messages: Messages) -> str:
    oid = _order_of_journey("delivered")
    data = _row(rows, "payment", PaymentCaptured.TYPE, oid)["data"]
    if "amount" in data:  # re-encoded: the current version
        data["amount"]["amount_cents"] -= 1
    else:  # as version 1 wrote it
        data["amount_cents"] -= 1
    return oid


def _captured_in_another_currency(rows: Rows, messages: Messages) -> str:
    oid = _order_of_journey("shipped")
    data = _row(rows, "payment", PaymentCaptured.TYPE, oid)["data"]
    if "amount" in data:
        data["amount"]["currency"] = "GBP"
    else:
        data["currency"] = "GBP"
    return oid


def _refund_lost(rows: Rows, messages: Messages) -> str:
    oid = _order_of_journey("cancelled_after_confirmed")
    refund = _row(rows, "payment", PaymentRefunded.TYPE, oid)
    rows["payment"].remove(refund)
    messages[:] = [m for m in messages if _message_id(m) != refund["event_id"]]
    return oid


def _command_id_rewritten(rows: Rows, messages: Messages) -> str:
    oid = _order_of_journey("confirmed")
    step = _row(rows, "order", SagaStepRequested.TYPE, oid)
    if "command" in step["data"]:  # version 1 copied the command
        step["data"]["command"]["command_id"] = "00000000-0000-4000-8000-00000000c0de"
    else:
        step["data"]["command_id"] = "00000000-0000-4000-8000-00000000c0de"
    return oid


def _payment_message_lost(rows: Rows, messages: Messages) -> str:
    oid = _order_of_journey("declined")
    declined = next(r for r in rows["payment"] if r["data"]["order_id"] == oid)
    messages[:] = [m for m in messages if _message_id(m) != declined["event_id"]]
    return oid


BREAKAGES: list[tuple[Callable[[Rows, Messages], str], set[str]]] = [
    (_captured_for_less, {"payment_amount_mismatch"}),
    (_captured_in_another_currency, {"payment_amount_mismatch"}),
    (_refund_lost, {"money_kept", "view_mismatch"}),
    (_command_id_rewritten, {"unpublished_command", "phantom_command"}),
    (_payment_message_lost, {"unpublished"}),
]


@pytest.mark.parametrize("versions", ["v1", "mixed"])
@pytest.mark.parametrize(("breakage", "expected"), BREAKAGES, ids=[b.__name__.strip("_") for b, _ in BREAKAGES])
def test_a_broken_copy_is_flagged(versions: str, breakage: Callable[[Rows, Messages], str], expected: set[str]) -> None:
    rows, messages = captured() if versions == "v1" else mixed()
    oid = breakage(rows, messages)
    report = audit(rows, messages)
    assert {v.check for v in report.violations} == expected, report.render()
    assert {v.order_id for v in report.violations} == {oid}, report.render()

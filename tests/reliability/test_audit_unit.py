"""The audit's checks on fabricated snapshots: a consistent system passes; each broken thing is
reported as exactly the violation it is, with its order id (topics: test_audit_topics.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from reliability import audit
from reliability.audit import Snapshot, check
from reliability.audit import cli as audit_cli
from shared.contract import (
    PAYMENT_EVENTS,
    Fact,
    MessageFormatError,
    OrderCancelled,
    OrderConfirmed,
    OrderRejected,
    OrderStatus,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentRefunded,
    SagaCompleted,
    SagaDeadlineSet,
    SagaOrderCommandIssued,
    ShipmentCancelled,
    ShipmentDispatched,
    ShipmentScheduled,
    decode_data,
)

from .fake_system import ADDRESS, NOW, FakeSystem, checks_of, config, consistent_system, money, only


@pytest.fixture
def system() -> FakeSystem:
    return consistent_system()


def test_a_consistent_system_passes(system: FakeSystem) -> None:
    young = system.order("PENDING", placed_at=NOW - timedelta(seconds=1))
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["orders"] == 6
    assert report.info["orders_by_status"]["PENDING"] == 1
    assert young in {e.subject for e in system.logs["order"]}
    assert report.info["topic_duplicates"][PAYMENT_EVENTS] == 0
    assert "AUDIT PASSED" in report.render()


# ---------------------------------------------------------------------- invariants


def test_confirmed_order_without_a_capture(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    captured = system.fact(f"pay-{oid}", PaymentCaptured)
    system.logs["payment"].remove(captured)
    system.drop_from_topic(captured)
    system.views[oid]["payment_status"] = "AUTHORIZED"
    only(check(system.snapshot(), config()), "payment_not_captured", oid)


def test_captured_amount_must_be_the_order_total(system: FakeSystem) -> None:
    oid = system.order("DELIVERED", total=5000)
    pay = f"pay-{oid}"
    # the payment was authorized and captured for less than the order's total
    for i, e in enumerate(system.logs["payment"]):
        if e.subject == pay:
            system.logs["payment"][i] = dataclasses.replace(e, data=msgspec.structs.replace(e.data, amount=money(4999)))
    only(check(system.snapshot(topics=False), config()), "payment_amount_mismatch", oid)
    # authorized for the total, but captured for less
    s = FakeSystem()
    oid = s.order("CONFIRMED", total=5000)
    captured = s.fact(f"pay-{oid}", PaymentCaptured)
    s.logs["payment"][s.logs["payment"].index(captured)] = dataclasses.replace(
        captured, data=msgspec.structs.replace(captured.data, amount=money(4999))
    )
    report = check(s.snapshot(topics=False), config())
    only(report, "payment_amount_mismatch", oid)
    assert "payment.captured 4999 EUR" in report.violations[0].message


def test_two_captures_are_a_duplicate_effect(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append("payment", f"pay-{oid}", PaymentCaptured(order_id=oid, payment_id=f"pay-{oid}", amount=money()))
    report = check(system.snapshot(views=False), config())
    only(report, "duplicate_capture", oid)
    assert len(report.duplicate_effects) == 1


def test_confirmed_order_needs_exactly_one_shipment(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append(
        "shipping", f"shp2-{oid}", ShipmentScheduled(order_id=oid, shipment_id=f"shp2-{oid}", address=ADDRESS)
    )
    report = check(system.snapshot(views=False), config())
    assert checks_of(report) == {"shipment_count", "duplicate_shipment"}, report.render()
    assert {v.order_id for v in report.violations} == {oid}


def test_shipped_order_with_a_shipment_still_scheduled(system: FakeSystem) -> None:
    oid = system.order("SHIPPED")
    dispatched = system.fact(f"shp-{oid}", ShipmentDispatched)
    system.logs["shipping"].remove(dispatched)
    system.drop_from_topic(dispatched)
    system.views[oid]["shipment_status"] = "SCHEDULED"
    only(check(system.snapshot(), config()), "shipment_status_mismatch", oid)


def test_cancelled_order_that_kept_the_money(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append("order", oid, OrderCancelled(order_id=oid, reason="cancelled_by_customer"))
    system.append("shipping", f"shp-{oid}", ShipmentCancelled(order_id=oid, shipment_id=f"shp-{oid}", reason="x"))
    system.views[oid].update(status="CANCELLED", version=3, shipment_status="CANCELLED")
    only(check(system.snapshot(), config()), "money_kept", oid)
    # refunded: the invariant holds again
    system.append(
        "payment",
        f"pay-{oid}",
        PaymentRefunded(order_id=oid, payment_id=f"pay-{oid}", amount=money(), reason="cancelled_by_customer"),
    )
    system.views[oid]["payment_status"] = "REFUNDED"
    assert check(system.snapshot(), config()).ok


def test_cancelled_order_with_an_active_shipment_or_a_held_authorization(system: FakeSystem) -> None:
    oid = system.order("CANCELLED")
    system.append(
        "shipping", f"shp2-{oid}", ShipmentScheduled(order_id=oid, shipment_id=f"shp2-{oid}", address=ADDRESS)
    )
    report = check(system.snapshot(views=False), config())
    assert checks_of(report) == {"active_shipment", "duplicate_shipment"}, report.render()

    s = FakeSystem()
    oid = s.order("REJECTED")
    s.append(
        "payment", f"pay-late-{oid}", PaymentAuthorized(order_id=oid, payment_id=f"pay-late-{oid}", amount=money())
    )
    report = check(s.snapshot(views=False), config())
    assert checks_of(report) == {"authorization_held", "duplicate_payment"}, report.render()


def test_final_order_without_a_reason(system: FakeSystem) -> None:
    # The contract refuses a reason-less rejection when it reads one …
    with pytest.raises(MessageFormatError):
        decode_data(OrderRejected.TYPE, OrderRejected.VERSION, b'{"order_id": "o-1", "reason": ""}')
    # … and the audit's own fold still does not take one for an ended order.
    oid = system.order("PENDING", placed_at=NOW - timedelta(seconds=1))
    system.append("order", oid, OrderRejected(order_id=oid, reason=""), publish=False)
    system.views[oid].update(status="REJECTED", version=2)
    only(check(system.snapshot(topics=False), config()), "missing_reason", oid)


def test_an_order_pending_past_the_saga_timeout(system: FakeSystem) -> None:
    old = system.order("PENDING", placed_at=NOW - timedelta(seconds=16))  # 5 s timeout + 10 s slack
    report = check(system.snapshot(), config())
    # its deadline (placed + 5 s) passed 11 s ago too: the scheduler did not fire it
    assert checks_of(report) == {"stuck_pending", "saga_overdue"}, report.render()
    assert {v.order_id for v in report.violations} == {old}
    assert check(system.snapshot(), config(pending_slack_s=60)).ok


def test_a_saga_deadline_nobody_fired(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.saga(SagaDeadlineSet(order_id=oid, deadline=NOW - timedelta(seconds=11)))
    only(check(system.snapshot(), config()), "saga_overdue", oid)


# ---------------------------------------------------------------------- duplicate effects


def test_a_reply_applied_twice_by_the_saga(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.reply(oid, system.fact(f"pay-{oid}", PaymentCaptured))
    report = check(system.snapshot(), config())
    only(report, "duplicate_reply_applied", oid)
    assert report.violations[0].is_duplicate_effect


@pytest.mark.parametrize(
    ("log", "stream", "fact", "expected"),
    [
        (
            "order",
            "{oid}",
            lambda oid: OrderConfirmed(order_id=oid, payment_id=f"pay-{oid}", shipment_id=f"shp-{oid}"),
            "duplicate_order_event",
        ),
        (
            "shipping",
            "shp-{oid}",
            lambda oid: ShipmentScheduled(order_id=oid, shipment_id=f"shp-{oid}", address=ADDRESS),
            "duplicate_shipment_event",
        ),
        (
            "order",
            "saga-{oid}",
            lambda oid: SagaCompleted(order_id=oid, status=OrderStatus.DELIVERED),
            "duplicate_saga_event",
        ),
    ],
)
def test_a_fact_recorded_twice(
    system: FakeSystem, log: str, stream: str, fact: Callable[[str], Fact], expected: str
) -> None:
    oid = system.order("DELIVERED")
    system.append(log, stream.format(oid=oid), fact(oid))
    report = check(system.snapshot(topics=False, views=False), config())
    assert expected in checks_of(report), report.render()
    assert all(v.order_id == oid for v in report.violations)


def test_an_order_command_issued_twice(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.saga(SagaOrderCommandIssued(order_id=oid, command="confirm", status=OrderStatus.CONFIRMED))
    only(check(system.snapshot(), config()), "duplicate_order_command", oid)


# ---------------------------------------------------------------------- log integrity


def test_a_placed_order_missing_from_the_log(system: FakeSystem) -> None:
    report = check(system.snapshot(), config(), expected_orders=["never-written"])
    only(report, "lost_order", "never-written")


def test_a_gap_in_a_stream(system: FakeSystem) -> None:
    oid = system.order("SHIPPED")
    confirmed = system.fact(oid, OrderConfirmed)
    system.logs["order"].remove(confirmed)
    system.drop_from_topic(confirmed)
    report = check(system.snapshot(topics=False, views=False), config())
    assert "stream_gap" in checks_of(report)


def test_payments_and_shipments_of_unknown_orders(system: FakeSystem) -> None:
    system.append("payment", "pay-x", PaymentAuthorized(order_id="ghost", payment_id="pay-x", amount=money(1)))
    system.append("shipping", "shp-x", ShipmentScheduled(order_id="ghost", shipment_id="shp-x", address=ADDRESS))
    report = check(system.snapshot(), config())
    assert checks_of(report) == {"orphan_payment", "orphan_shipment"}, report.render()
    assert {v.order_id for v in report.violations} == {"ghost"}


# ---------------------------------------------------------------------- views


def test_views_must_match_the_write_side(system: FakeSystem) -> None:
    oid = system.order("DELIVERED")
    system.views[oid]["status"] = "SHIPPED"
    system.views[oid]["version"] = 3
    report = check(system.snapshot(), config())
    only(report, "view_mismatch", oid)
    assert "status" in report.violations[0].message and "version" in report.violations[0].message


@pytest.mark.parametrize("field", ["total_cents", "currency", "payment_status", "shipment_status", "payment_id"])
def test_each_view_field_is_compared(system: FakeSystem, field: str) -> None:
    oid = system.order("CONFIRMED")
    system.views[oid][field] = "something else"
    only(check(system.snapshot(), config()), "view_mismatch", oid)


def test_missing_and_orphan_views(system: FakeSystem) -> None:
    oid = system.order("REJECTED")
    del system.views[oid]
    system.views["nobody"] = {"order_id": "nobody", "status": "PENDING", "version": 1}
    report = check(system.snapshot(), config())
    assert checks_of(report) == {"view_missing", "view_orphan"}, report.render()
    assert {v.order_id for v in report.violations} == {oid, "nobody"}


def test_lagging_views_of_fresh_orders_are_skipped_within_the_grace_period() -> None:
    s = FakeSystem(now=NOW)
    s.clock = NOW - timedelta(seconds=1)
    oid = s.order("CONFIRMED")
    s.views[oid].update(status="PENDING", version=1, payment_status="AUTHORIZED", shipment_status=None)
    assert not check(s.snapshot(), config(grace_s=0)).ok
    report = check(s.snapshot(), config(grace_s=5))
    assert report.ok, report.render()
    assert report.info["fresh_orders"] == 1


# ---------------------------------------------------------------------- CLI


def test_cli_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    s = FakeSystem()
    oid = s.order("CONFIRMED")
    snapshots = [s.snapshot()]

    async def fake_collect(_: audit.AuditConfig) -> Snapshot:
        return snapshots[-1]

    monkeypatch.setattr(audit_cli, "collect", fake_collect)
    assert audit.main([]) == 0
    assert "AUDIT PASSED" in capsys.readouterr().out

    s.views[oid]["status"] = "DELIVERED"
    snapshots.append(s.snapshot())
    assert audit.main(["--json"]) == 1
    body: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["violations"][0]["order_id"] == oid

    async def broken(_: audit.AuditConfig) -> Snapshot:
        raise ConnectionRefusedError("no database")

    monkeypatch.setattr(audit_cli, "collect", broken)
    assert audit.main([]) == 2


def test_config_defaults_follow_make_up_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AUDIT_ORDER_DSN",
        "AUDIT_KAFKA_BOOTSTRAP",
        "KAFKA_BOOTSTRAP_SERVERS",
        "AUDIT_QUERY_URL",
        "PG_PORT",
        "KAFKA_PORT",
        "QUERY_PORT",
        "SAGA_STEP_TIMEOUT_S",
        "AUDIT_SAGA_TIMEOUT_S",
    ):
        monkeypatch.delenv(name, raising=False)
    c = audit.AuditConfig.from_env()
    assert c.order_dsn == "postgresql://app:app@127.0.0.1:5432/order"
    assert c.query_dsn == "postgresql://app:app@127.0.0.1:5432/query"
    assert c.kafka_bootstrap == "127.0.0.1:9092" and c.query_url == "http://127.0.0.1:8004"
    monkeypatch.setenv("PG_PORT", "6543")
    monkeypatch.setenv("AUDIT_SAGA_TIMEOUT_S", "5")
    c = audit.AuditConfig.from_env(kafka_bootstrap="k:1")
    assert c.payment_dsn.endswith(":6543/payment") and c.saga_timeout_s == 5.0 and c.kafka_bootstrap == "k:1"
    args = audit.build_parser().parse_args(["--no-topics", "--views", "off"])
    assert isinstance(args, argparse.Namespace) and args.no_topics

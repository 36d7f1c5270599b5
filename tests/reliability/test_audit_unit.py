"""The audit's checks on fabricated snapshots: a consistent system passes; each broken thing is
reported as exactly the violation it is, with its order id."""
from __future__ import annotations

import argparse
import base64
import json
from datetime import timedelta
from typing import Any

import orjson
import pytest

from reliability import audit
from reliability.audit import AuditReport, Snapshot, check

from .fake_system import NOW, FakeSystem, cloudevent, config

ALL_OUTCOMES = ("CONFIRMED", "SHIPPED", "DELIVERED", "REJECTED", "CANCELLED")


def checks_of(report: AuditReport) -> set[str]:
    return {v.check for v in report.violations}


def only(report: AuditReport, check_name: str, order_id: str | None = None) -> None:
    assert checks_of(report) == {check_name}, report.render()
    if order_id is not None:
        assert {v.order_id for v in report.violations} == {order_id}, report.render()


@pytest.fixture
def system() -> FakeSystem:
    s = FakeSystem()
    for outcome in ALL_OUTCOMES:
        s.order(outcome)
    return s


def test_a_consistent_system_passes(system: FakeSystem) -> None:
    young = system.order("PENDING", placed_at=NOW - timedelta(seconds=1))
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["orders"] == 6
    assert report.info["orders_by_status"]["PENDING"] == 1
    assert young in {e.stream_id for e in system.logs["order"]}
    assert report.info["topic_duplicates"]["payment.events"] == 0
    assert "AUDIT PASSED" in report.render()


# ---------------------------------------------------------------------- SPEC §6 invariants


def test_confirmed_order_without_a_capture(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    pay = f"pay-{oid}"
    captured = next(e for e in system.events_of(pay) if e.type == "payment.captured")
    system.logs["payment"].remove(captured)
    system.drop_from_topic(captured)
    system.views[oid]["payment_status"] = "AUTHORIZED"
    only(check(system.snapshot(), config()), "payment_not_captured", oid)


def test_captured_amount_must_be_the_order_total(system: FakeSystem) -> None:
    oid = system.order("DELIVERED", total=5000)
    pay = f"pay-{oid}"
    # the payment was authorized and captured for less than the order's total
    for i, e in enumerate(system.logs["payment"]):
        if e.stream_id == pay:
            system.logs["payment"][i] = audit.Event(e.log, e.event_id, e.stream_id, e.version, e.type,
                                                    {**e.data, "amount_cents": 4999}, e.occurred_at)
    only(check(system.snapshot(topics=False), config()), "payment_amount_mismatch", oid)


def test_two_captures_are_a_duplicate_effect(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append("payment", f"pay-{oid}", "payment.captured",
                  {"payment_id": f"pay-{oid}", "order_id": oid, "amount_cents": 3000, "currency": "EUR"}, order_id=oid)
    report = check(system.snapshot(views=False), config())
    only(report, "duplicate_capture", oid)
    assert len(report.duplicate_effects) == 1


def test_confirmed_order_needs_exactly_one_shipment(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append("shipping", f"shp2-{oid}", "shipment.scheduled", {"shipment_id": f"shp2-{oid}", "order_id": oid},
                  order_id=oid)
    report = check(system.snapshot(views=False), config())
    assert checks_of(report) == {"shipment_count", "duplicate_shipment"}, report.render()
    assert {v.order_id for v in report.violations} == {oid}


def test_shipped_order_with_a_shipment_still_scheduled(system: FakeSystem) -> None:
    oid = system.order("SHIPPED")
    dispatched = next(e for e in system.events_of(f"shp-{oid}") if e.type == "shipment.dispatched")
    system.logs["shipping"].remove(dispatched)
    system.drop_from_topic(dispatched)
    system.views[oid]["shipment_status"] = "SCHEDULED"
    only(check(system.snapshot(), config()), "shipment_status_mismatch", oid)


def test_cancelled_order_that_kept_the_money(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.append("order", oid, "order.cancelled", {"order_id": oid, "reason": "cancelled_by_customer"}, order_id=oid)
    system.append("shipping", f"shp-{oid}", "shipment.cancelled", {"shipment_id": f"shp-{oid}", "order_id": oid},
                  order_id=oid)
    system.views[oid].update(status="CANCELLED", version=3, shipment_status="CANCELLED")
    only(check(system.snapshot(), config()), "money_kept", oid)
    # refunded: the invariant holds again
    system.append("payment", f"pay-{oid}", "payment.refunded",
                  {"payment_id": f"pay-{oid}", "order_id": oid, "amount_cents": 3000, "currency": "EUR"}, order_id=oid)
    system.views[oid]["payment_status"] = "REFUNDED"
    assert check(system.snapshot(), config()).ok


def test_cancelled_order_with_an_active_shipment_or_a_held_authorization(system: FakeSystem) -> None:
    oid = system.order("CANCELLED")
    system.append("shipping", f"shp2-{oid}", "shipment.scheduled", {"shipment_id": f"shp2-{oid}", "order_id": oid},
                  order_id=oid)
    report = check(system.snapshot(views=False), config())
    assert checks_of(report) == {"active_shipment", "duplicate_shipment"}, report.render()

    s = FakeSystem()
    oid = s.order("REJECTED")
    s.append("payment", f"pay-late-{oid}", "payment.authorized",
             {"payment_id": f"pay-late-{oid}", "order_id": oid, "amount_cents": 3000, "currency": "EUR"}, order_id=oid)
    report = check(s.snapshot(views=False), config())
    assert checks_of(report) == {"authorization_held", "duplicate_payment"}, report.render()


def test_final_order_without_a_reason(system: FakeSystem) -> None:
    oid = system.order("PENDING", placed_at=NOW - timedelta(seconds=1))
    system.append("order", oid, "order.rejected", {"order_id": oid}, order_id=oid)
    system.views[oid].update(status="REJECTED", version=2)
    only(check(system.snapshot(), config()), "missing_reason", oid)


def test_an_order_pending_past_the_saga_timeout(system: FakeSystem) -> None:
    old = system.order("PENDING", placed_at=NOW - timedelta(seconds=16))  # 5 s timeout + 10 s slack
    report = check(system.snapshot(), config())
    # its deadline (placed + 5 s) passed 11 s ago too: the scheduler did not fire it
    assert checks_of(report) == {"stuck_pending", "saga_overdue"}, report.render()
    assert {v.order_id for v in report.violations} == {old}
    assert check(system.snapshot(), config(pending_slack_s=60)).ok


def test_a_saga_deadline_nobody_fired(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.saga_event(oid, "saga.deadline_set", deadline=(NOW - timedelta(seconds=11)).isoformat())
    only(check(system.snapshot(), config()), "saga_overdue", oid)


# ---------------------------------------------------------------------- duplicate effects


def test_a_reply_applied_twice_by_the_saga(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    captured = next(e for e in system.events_of(f"pay-{oid}") if e.type == "payment.captured")
    system.reply(oid, captured)
    report = check(system.snapshot(), config())
    only(report, "duplicate_reply_applied", oid)
    assert report.violations[0].is_duplicate_effect


@pytest.mark.parametrize(
    ("stream", "log", "event_type", "expected"),
    [
        ("order", "order", "order.confirmed", "duplicate_order_event"),
        ("shp", "shipping", "shipment.scheduled", "duplicate_shipment_event"),
        ("saga", "order", "saga.completed", "duplicate_saga_event"),
    ],
)
def test_a_fact_recorded_twice(system: FakeSystem, stream: str, log: str, event_type: str, expected: str) -> None:
    oid = system.order("DELIVERED")
    stream_id = {"order": oid, "shp": f"shp-{oid}", "saga": f"saga-{oid}"}[stream]
    system.append(log, stream_id, event_type, {"order_id": oid, "shipment_id": f"shp-{oid}", "payment_id": f"pay-{oid}"},
                  order_id=oid)
    report = check(system.snapshot(topics=False, views=False), config())
    assert expected in checks_of(report), report.render()
    assert all(v.order_id == oid for v in report.violations)


def test_an_order_command_issued_twice(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.saga_event(oid, "saga.order_command_issued", command="confirm")
    only(check(system.snapshot(), config()), "duplicate_order_command", oid)


# ---------------------------------------------------------------------- log integrity


def test_a_placed_order_missing_from_the_log(system: FakeSystem) -> None:
    report = check(system.snapshot(), config(), expected_orders=["never-written"])
    only(report, "lost_order", "never-written")


def test_a_gap_in_a_stream(system: FakeSystem) -> None:
    oid = system.order("SHIPPED")
    confirmed = next(e for e in system.events_of(oid) if e.type == "order.confirmed")
    system.logs["order"].remove(confirmed)
    system.drop_from_topic(confirmed)
    report = check(system.snapshot(topics=False, views=False), config())
    assert "stream_gap" in checks_of(report)


def test_payments_and_shipments_of_unknown_orders(system: FakeSystem) -> None:
    system.append("payment", "pay-x", "payment.authorized",
                  {"payment_id": "pay-x", "order_id": "ghost", "amount_cents": 1, "currency": "EUR"}, order_id="ghost")
    system.append("shipping", "shp-x", "shipment.scheduled", {"shipment_id": "shp-x", "order_id": "ghost"},
                  order_id="ghost")
    report = check(system.snapshot(), config())
    assert checks_of(report) == {"orphan_payment", "orphan_shipment"}, report.render()
    assert {v.order_id for v in report.violations} == {"ghost"}


# ---------------------------------------------------------------------- topics


def test_duplicates_on_a_topic_are_counted_not_violations(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    authorized = next(e for e in system.events_of(f"pay-{oid}") if e.type == "payment.authorized")
    system.republish(authorized)  # a re-answered duplicate command: after v2 on the topic
    system.republish(authorized)
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["topic_duplicates"]["payment.events"] == 2


def test_a_fact_never_published(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    scheduled = next(e for e in system.events_of(f"shp-{oid}") if e.type == "shipment.scheduled")
    system.drop_from_topic(scheduled)
    report = check(system.snapshot(), config())
    only(report, "unpublished", oid)
    # …unless it is too recent to be published yet (lag), with a grace period
    fresh = FakeSystem()
    oid2 = fresh.order("CONFIRMED")
    fresh.drop_from_topic(next(e for e in fresh.events_of(oid2) if e.type == "order.confirmed"))
    assert check(fresh.snapshot(), config(grace_s=3600)).ok


def test_a_fact_on_the_topic_that_no_log_has(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    ghost = audit.Event("payment", "0d0c9b4e-0000-4000-8000-000000000001", f"pay-{oid}", 3, "payment.refunded",
                        {"order_id": oid}, NOW)
    system.publish("payment.events", f"pay-{oid}", orjson.dumps(cloudevent(ghost)))
    only(check(system.snapshot(), config()), "phantom_message", oid)


def test_what_was_appended_after_the_logs_were_read_is_not_a_phantom(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    newer = audit.Event("payment", "0d0c9b4e-0000-4000-8000-000000000002", f"pay-{oid}", 3, "payment.refunded",
                        {"order_id": oid}, NOW)
    system.publish("payment.events", f"pay-{oid}", orjson.dumps(cloudevent(newer)))
    system.publish("payment.commands", f"pay-{oid}", orjson.dumps(
        {"id": "c-newer", "source": "/services/order", "type": "payment.refund", "subject": f"pay-{oid}",
         "data": {"order_id": oid}}))
    snapshot = system.snapshot()
    assert checks_of(check(snapshot, config())) == {"phantom_message", "phantom_command"}
    snapshot.late_ids = {newer.event_id, "c-newer"}
    assert check(snapshot, config()).ok


def test_a_published_envelope_that_differs_from_the_stored_fact(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    placed = next(e for e in system.events_of(oid) if e.type == "order.placed")
    system.drop_from_topic(placed)
    system.publish("order.events", oid, orjson.dumps({**cloudevent(placed), "sequence": "7"}))
    report = check(system.snapshot(), config())
    assert "message_mismatch" in checks_of(report), report.render()


def test_first_occurrences_out_of_stream_order(system: FakeSystem) -> None:
    oid = system.order("SHIPPED")
    stream = system.events_of(f"shp-{oid}")
    for e in stream:
        system.drop_from_topic(e)
    for e in reversed(stream):  # v2 first, then v1
        system.republish(e)
    only(check(system.snapshot(), config()), "out_of_order", oid)


def test_a_key_split_across_partitions(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    confirmed = next(e for e in system.events_of(oid) if e.type == "order.confirmed")
    system.drop_from_topic(confirmed)
    r = system.publish("order.events", oid, orjson.dumps(cloudevent(confirmed)))
    system.topics["order.events"].remove(r)
    other = (r.partition + 1) % 3
    system.publish("order.events", oid, orjson.dumps(cloudevent(confirmed)), partition=other)
    assert "key_split" in checks_of(check(system.snapshot(), config()))


def test_foreign_messages_are_counted_not_violations(system: FakeSystem) -> None:
    system.publish("order.events", "poison", b"\xff\xfe garbage")
    system.publish("payment.commands", "poison", orjson.dumps({"id": "1", "source": "/chaos/poison", "type": "x",
                                                               "subject": "y"}))
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["foreign_messages"]["order.events"] == 1
    assert report.info["foreign_messages"]["payment.commands"] == 1


def test_commands_on_their_topics(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    capture = next(e for e in system.events_of(f"saga-{oid}")
                   if e.type == "saga.step_requested" and e.data["command"]["type"] == "payment.capture")
    command_id = capture.data["command"]["command_id"]
    system.topics["payment.commands"] = [r for r in system.topics["payment.commands"]
                                         if command_id.encode() not in (r.value or b"")]
    only(check(system.snapshot(), config()), "unpublished_command", oid)

    s = FakeSystem()
    s.order("CONFIRMED")
    s.publish("payment.commands", "pay-?", orjson.dumps({"id": "c-unknown", "source": "/services/order",
                                                         "type": "payment.refund", "subject": "pay-?",
                                                         "data": {"order_id": "o-?"}}))
    only(check(s.snapshot(), config()), "phantom_command", "o-?")


def test_dead_letter_queues(system: FakeSystem) -> None:
    def dlq_entry(original: bytes) -> bytes:
        return orjson.dumps({"consumer": "order.saga", "error": "boom",
                             "origin": {"topic": "payment.events", "partition": 0, "offset": 1, "key": "k"},
                             "value_base64": base64.b64encode(original).decode()})

    system.publish("payment.events.dlq", "k", dlq_entry(b"\xff garbage"))
    report = check(system.snapshot(), config())
    assert report.ok and report.info["dlq"]["payment.events.dlq"] == 1, report.render()

    real = next(e for e in system.logs["payment"] if e.type == "payment.captured")
    system.publish("payment.events.dlq", "k", dlq_entry(orjson.dumps(cloudevent(real))))
    only(check(system.snapshot(), config()), "dead_lettered_real_message", real.data["order_id"])


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

    monkeypatch.setattr(audit, "collect", fake_collect)
    assert audit.main([]) == 0
    assert "AUDIT PASSED" in capsys.readouterr().out

    s.views[oid]["status"] = "DELIVERED"
    snapshots.append(s.snapshot())
    assert audit.main(["--json"]) == 1
    body: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["violations"][0]["order_id"] == oid

    async def broken(_: audit.AuditConfig) -> Snapshot:
        raise ConnectionRefusedError("no database")

    monkeypatch.setattr(audit, "collect", broken)
    assert audit.main([]) == 2


def test_config_defaults_follow_make_up_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_ORDER_DSN", "AUDIT_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS", "AUDIT_QUERY_URL",
                 "PG_PORT", "KAFKA_PORT", "QUERY_PORT", "SAGA_STEP_TIMEOUT_S", "AUDIT_SAGA_TIMEOUT_S"):
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

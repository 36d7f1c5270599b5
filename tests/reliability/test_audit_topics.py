"""The audit's topic checks on fabricated snapshots: each event topic holds exactly its log's
published facts, each command topic exactly the sagas' commands, no real message in a DLQ."""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest

from reliability.audit import check
from shared.contract import (
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    CapturePayment,
    DeadLetterFailure,
    DeadLetterOrigin,
    Envelope,
    Fact,
    OrderConfirmed,
    OrderPlaced,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentRefunded,
    RefundPayment,
    SagaStepRequested,
    ShipmentScheduled,
    dlq_topic,
    encode,
    encode_data,
    make_dead_letter,
)

from .fake_system import NOW, FakeSystem, checks_of, config, consistent_system, money, only


@pytest.fixture
def system() -> FakeSystem:
    return consistent_system()


def test_duplicates_on_a_topic_are_counted_not_violations(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    authorized = system.fact(f"pay-{oid}", PaymentAuthorized)
    system.republish(authorized)  # a re-answered duplicate command: after v2 on the topic
    system.republish(authorized)
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["topic_duplicates"][PAYMENT_EVENTS] == 2


def test_a_fact_never_published(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.drop_from_topic(system.fact(f"shp-{oid}", ShipmentScheduled))
    report = check(system.snapshot(), config())
    only(report, "unpublished", oid)
    # …unless it is too recent to be published yet (lag), with a grace period
    fresh = FakeSystem()
    oid2 = fresh.order("CONFIRMED")
    fresh.drop_from_topic(fresh.fact(oid2, OrderConfirmed))
    assert check(fresh.snapshot(), config(grace_s=3600)).ok


def _refund(oid: str, message_id: str) -> Envelope[Fact]:
    """A refund fact of the order's payment that no log recorded."""
    return Envelope(
        id=message_id,
        source="/services/payment",
        subject=f"pay-{oid}",
        sequence=3,
        time=NOW,
        correlation_id=oid,
        causation_id=oid,
        data=PaymentRefunded(order_id=oid, payment_id=f"pay-{oid}", amount=money(), reason="x"),
    )


def _refund_command(oid: str, command_id: str, payment_id: str | None = None) -> Envelope[RefundPayment]:
    payment_id = payment_id or f"pay-{oid}"
    return Envelope(
        id=command_id,
        source="/services/order",
        subject=payment_id,
        sequence=0,
        time=NOW,
        correlation_id=oid,
        causation_id=oid,
        data=RefundPayment(order_id=oid, payment_id=payment_id, reason="x"),
    )


def test_a_fact_on_the_topic_that_no_log_has(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    system.republish(_refund(oid, "0d0c9b4e-0000-4000-8000-000000000001"))
    only(check(system.snapshot(), config()), "phantom_message", oid)


def test_what_was_appended_after_the_logs_were_read_is_not_a_phantom(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    newer = _refund(oid, "0d0c9b4e-0000-4000-8000-000000000002")
    system.republish(newer)
    system.republish(_refund_command(oid, "c-newer"))
    snapshot = system.snapshot()
    assert checks_of(check(snapshot, config())) == {"phantom_message", "phantom_command"}
    snapshot.late_ids = {newer.id, "c-newer"}
    assert check(snapshot, config()).ok


def test_a_published_envelope_that_differs_from_the_stored_fact(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    placed = system.fact(oid, OrderPlaced)
    system.drop_from_topic(placed)
    system.republish(dataclasses.replace(placed, sequence=7))
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
    confirmed = system.fact(oid, OrderConfirmed)
    system.drop_from_topic(confirmed)
    r = system.republish(confirmed)
    system.topics[ORDER_EVENTS].remove(r)
    other = (r.partition + 1) % 3
    system.publish(ORDER_EVENTS, oid, encode(confirmed), partition=other)
    assert "key_split" in checks_of(check(system.snapshot(), config()))


def test_foreign_messages_are_counted_not_violations(system: FakeSystem) -> None:
    system.publish("order.events", "poison", b"\xff\xfe garbage")
    system.publish(
        "payment.commands", "poison", orjson.dumps({"id": "1", "source": "/chaos/poison", "type": "x", "subject": "y"})
    )
    # a well-formed CloudEvent of the owning service whose data breaks the contract
    placed = encode(system.fact(system.order("CONFIRMED"), OrderPlaced)).replace(
        b'"total_cents":3000', b'"total_cents":-1'
    )
    system.publish("order.events", "poison", placed)
    report = check(system.snapshot(), config())
    assert report.ok, report.render()
    assert report.info["foreign_messages"]["order.events"] == 2
    assert report.info["foreign_messages"]["payment.commands"] == 1


def test_commands_on_their_topics(system: FakeSystem) -> None:
    oid = system.order("CONFIRMED")
    capture = next(
        e.data
        for e in system.events_of(f"saga-{oid}")
        if isinstance(e.data, SagaStepRequested) and e.data.command_type == CapturePayment.TYPE
    )
    assert isinstance(capture, SagaStepRequested)
    system.topics[PAYMENT_COMMANDS] = [
        r for r in system.topics[PAYMENT_COMMANDS] if capture.command_id.encode() not in (r.value or b"")
    ]
    only(check(system.snapshot(), config()), "unpublished_command", oid)

    s = FakeSystem()
    s.order("CONFIRMED")
    s.republish(_refund_command("o-?", "c-unknown", payment_id="pay-?"))
    only(check(s.snapshot(), config()), "phantom_command", "o-?")


def _dlq_entry(original: bytes) -> bytes:
    origin = DeadLetterOrigin(PAYMENT_EVENTS, 0, 1, "k")
    return make_dead_letter(original, origin, DeadLetterFailure("order.saga", "boom", 3, NOW, NOW))[1]


def _dlq_entry_v1(original: bytes) -> bytes:
    """A dead letter as consumers wrote them before dead letters were CloudEvents (kept forever)."""
    return orjson.dumps(
        {
            "consumer": "order.saga",
            "error": "boom",
            "failed_at": NOW.isoformat(),
            "origin": {"topic": PAYMENT_EVENTS, "partition": 0, "offset": 1, "key": "k"},
            "value_base64": base64.b64encode(original).decode(),
        }
    )


def test_dead_letter_queues(system: FakeSystem) -> None:
    dlq = dlq_topic(PAYMENT_EVENTS)
    system.publish(dlq, "k", _dlq_entry(b"\xff garbage"))
    report = check(system.snapshot(), config())
    assert report.ok and report.info["dlq"][dlq] == 1, report.render()

    real = next(e for e in system.logs["payment"] if isinstance(e.data, PaymentCaptured))
    system.publish(dlq, "k", _dlq_entry(encode(real)))
    only(check(system.snapshot(), config()), "dead_lettered_real_message", real.data.order_id)


def test_a_real_message_that_breaks_the_contract_is_still_recognised_in_a_dlq(system: FakeSystem) -> None:
    """Such a message is exactly what ends up dead-lettered; its id is read leniently."""
    real = next(e for e in system.logs["payment"] if isinstance(e.data, PaymentCaptured))
    broken = encode(real, data=encode_data(real.data).replace(b'"amount"', b'"amount_lost"'))
    system.publish(dlq_topic(PAYMENT_EVENTS), "k", _dlq_entry(broken))
    only(check(system.snapshot(), config()), "dead_lettered_real_message", real.data.order_id)


def test_a_version_1_dead_letter_of_a_real_message_is_recognised_too(system: FakeSystem) -> None:
    dlq = dlq_topic(PAYMENT_EVENTS)
    system.publish(dlq, "k", _dlq_entry_v1(b"\xff garbage"))
    report = check(system.snapshot(), config())
    assert report.ok and report.info["dlq"][dlq] == 1, report.render()
    real = next(e for e in system.logs["payment"] if isinstance(e.data, PaymentCaptured))
    system.publish(dlq, "k", _dlq_entry_v1(encode(real)))
    only(check(system.snapshot(), config()), "dead_lettered_real_message", real.data.order_id)

"""The watch CLI's line format (pure): decoded with the contract, never crashing on a bad value."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from infra.watch import correlation_of, format_line
from shared.contract import (
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    Address,
    DeadLetterFailure,
    DeadLetterOrigin,
    Envelope,
    Message,
    Money,
    PaymentCaptured,
    ScheduleShipment,
    dlq_topic,
    encode,
    make_dead_letter,
)
from shared.personal import legacy

WHEN = datetime(2026, 11, 22, 9, 15, 30, 123000, tzinfo=UTC)


def envelope(data: Message, subject: str, sequence: int, correlation_id: str = "order-abcdefgh") -> Envelope[Message]:
    return Envelope(
        id=str(uuid.uuid4()),
        source="/services/test",
        subject=subject,
        sequence=sequence,
        time=WHEN,
        correlation_id=correlation_id,
        causation_id="x",
        data=data,
    )


def test_a_fact_line_names_time_topic_type_subject_correlation_and_data() -> None:
    captured = PaymentCaptured(
        order_id="order-abcdefgh", payment_id="pay-1", amount=Money(amount_cents=3000, currency="EUR")
    )
    line = format_line(PAYMENT_EVENTS, encode(envelope(captured, "pay-12345678", 3)), colour=False)
    assert line == (
        "09:15:30.123  payment.events     fact payment.captured       subject=pay-1234 corr=order-ab  "
        "payment_id=pay-1,amount={amount_cents:3000,currency:EUR}"
    )


def test_an_old_schema_version_is_shown_upcast() -> None:
    v1 = (
        b'{"specversion":"1.0","id":"e-1","source":"/services/payment","type":"payment.captured",'
        b'"subject":"pay-1","time":"2026-11-22T09:15:30.123Z","sequence":"3","schemaversion":"1",'
        b'"correlationid":"order-1","causationid":"c",'
        b'"data":{"order_id":"order-1","payment_id":"pay-1","amount_cents":3000,"currency":"EUR"}}'
    )
    line = format_line(PAYMENT_EVENTS, v1, colour=False)
    assert line.endswith("amount={amount_cents:3000,currency:EUR}"), line


def test_commands_are_marked_and_colour_is_only_added_when_asked() -> None:
    name, line1 = legacy("Ada"), legacy("1 Main St")
    address = Address(name=name, line1=line1, city=legacy("Paris"), postal_code=legacy("75001"), country="FR")
    raw = encode(envelope(ScheduleShipment(order_id="o", shipment_id="ship-1", address=address), "ship-1", 0))
    plain = format_line(SHIPPING_COMMANDS, raw, colour=False)
    assert " cmd  shipment.schedule" in plain and f"address={{name:{name},line1:{line1}," in plain
    coloured = format_line(SHIPPING_COMMANDS, raw, colour=True)
    assert coloured.startswith("\033[") and plain in coloured


def test_an_undecodable_message_is_shown_raw_with_its_reason_not_hidden() -> None:
    line = format_line(ORDER_EVENTS, b"garbage", colour=False)
    assert "undecodable" in line and "not a CloudEvents JSON object" in line and "raw=b'garbage'" in line
    unknown = (
        b'{"specversion":"1.0","id":"e","source":"s","type":"order.teleported","subject":"o",'
        b'"time":"2026-11-22T09:15:30Z","data":{"order_id":"o"}}'
    )
    line = format_line(ORDER_EVENTS, unknown, colour=False)
    assert "unknown message type 'order.teleported'" in line and "order.teleported" in line
    assert "undecodable" in format_line(ORDER_EVENTS, None, colour=False)
    assert correlation_of(ORDER_EVENTS, b"garbage") is None


def test_a_dead_letter_shows_its_origin_and_error_and_the_original_order() -> None:
    captured = PaymentCaptured(order_id="order-9", payment_id="pay-1", amount=Money(amount_cents=1, currency="EUR"))
    original = encode(envelope(captured, "pay-1", 2, correlation_id="order-9"))
    origin = DeadLetterOrigin(PAYMENT_EVENTS, 2, 41, "pay-1")
    _, letter = make_dead_letter(original, origin, DeadLetterFailure("order-saga", "boom", 3, WHEN, WHEN))
    dlq = dlq_topic(PAYMENT_EVENTS)
    line = format_line(dlq, letter, colour=False)
    assert "by=order-saga" in line and "from=payment.events[2]@41" in line and "error=boom" in line
    assert f"dead {PaymentCaptured.TYPE}" in line and "attempts=3" in line and line.startswith("09:15:30.123")
    assert correlation_of(dlq, letter) == "order-9"
    assert "undecodable" in format_line(dlq, b"{}", colour=False)
    _, poison = make_dead_letter(b"\xff", origin, DeadLetterFailure("order-saga", "bad", 1, WHEN, WHEN))
    assert "dead dead_letter.undecodable" in format_line(dlq, poison, colour=False)
    assert correlation_of(dlq, poison) is None

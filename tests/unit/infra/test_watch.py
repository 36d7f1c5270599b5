"""The watch CLI's line format (pure)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from infra.watch import format_line
from shared.messages import Command, RecordedEvent, command_to_cloudevent, encode, event_to_cloudevent

WHEN = datetime(2026, 11, 22, 9, 15, 30, 123000, tzinfo=timezone.utc)


def test_a_fact_line_names_time_topic_type_subject_correlation_and_data() -> None:
    event = RecordedEvent(uuid.uuid4(), "payment.captured", "pay-12345678", 3, 1, WHEN, "order-abcdefgh", "x",
                          {"order_id": "order-abcdefgh", "amount_cents": 3000, "currency": "EUR"})
    line = format_line("payment.events", encode(event_to_cloudevent(event, "/services/payment")), colour=False)
    assert line == ("09:15:30.123  payment.events     fact payment.captured       subject=pay-1234 corr=order-ab  "
                    "amount_cents=3000,currency=EUR")


def test_commands_are_marked_and_colour_is_only_added_when_asked() -> None:
    command = Command("shipment.schedule", "ship-1", {"order_id": "o", "address": {"country": "FR"}, "lines": [1, 2]})
    raw = encode(command_to_cloudevent(command, "/services/order", "o", "c", WHEN))
    plain = format_line("shipping.commands", raw, colour=False)
    assert plain is not None and " cmd  shipment.schedule" in plain and "address={country:FR},lines=[2]" in plain
    coloured = format_line("shipping.commands", raw, colour=True)
    assert coloured is not None and coloured.startswith("\033[") and plain in coloured


def test_an_undecodable_message_is_shown_not_hidden() -> None:
    line = format_line("order.events.dlq", b"garbage", colour=False)
    assert line is not None and "undecodable" in line

"""Which facts the SSE feed holds back, and for what (pure): only for a cause the views consume."""

from __future__ import annotations

import dataclasses

from services.query.store import FEED_CAUSE_TYPES, awaited_cause
from shared.contract import (
    ORDER_FACTS,
    PAYMENT_COMMANDS_DECLARED,
    PAYMENT_FACTS,
    SAGA_FACTS,
    SHIPPING_COMMANDS_DECLARED,
    SHIPPING_FACTS,
    OrderConfirmed,
    PaymentCaptured,
)
from tests.unit.query.journeys import happy


def test_the_causes_worth_waiting_for_are_exactly_the_facts_on_the_event_topics() -> None:
    assert FEED_CAUSE_TYPES == {cls.TYPE for cls in ORDER_FACTS + PAYMENT_FACTS + SHIPPING_FACTS}
    assert not FEED_CAUSE_TYPES & {cls.TYPE for cls in PAYMENT_COMMANDS_DECLARED + SHIPPING_COMMANDS_DECLARED}
    assert not FEED_CAUSE_TYPES & {cls.TYPE for cls in SAGA_FACTS}, "the saga's facts are never published"


def test_a_fact_caused_by_a_fact_waits_for_it_and_one_caused_by_a_command_or_request_does_not() -> None:
    j = happy()
    by_type = {f.type: f for f in j.facts}
    confirmed, captured = by_type[OrderConfirmed.TYPE], by_type[PaymentCaptured.TYPE]
    assert awaited_cause(confirmed) == captured.id
    assert awaited_cause(captured) is None  # caused by the payment.capture command
    assert awaited_cause(by_type["order.placed"]) is None  # caused by an HTTP request
    assert awaited_cause(by_type["shipment.dispatched"]) is None
    # A fact recorded before `causationtype` existed (or by an outside producer) waits for nothing.
    assert awaited_cause(dataclasses.replace(confirmed, causation_type=None)) is None
    # A corrupt self-reference never waits for itself.
    assert awaited_cause(dataclasses.replace(confirmed, causation_id=confirmed.id)) is None
    waiting = [f.type for f in j.facts if awaited_cause(f) is not None]
    assert waiting == ["order.confirmed", "order.shipped", "order.delivered"]

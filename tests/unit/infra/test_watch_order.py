"""`make watch ARGS="--order ..."` shows an order's flow causally (pure: time is passed in)."""

from __future__ import annotations

import random
import uuid

from infra.watch import CausalHold, Shown, shown_line
from shared.contract import (
    ALL_TOPICS,
    EVENT_TOPICS,
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    SHIPPING_EVENTS,
    CapturePayment,
    Envelope,
    Message,
    dlq_topic,
    encode,
)
from tests.unit.query.journeys import Received, happy, topic_of

WAIT = 5.0


def on_wire(f: Received) -> tuple[str, bytes]:
    return topic_of(f), encode(f)


def ids(shown: list[Shown], by_raw: dict[bytes | None, str]) -> list[str]:
    return [by_raw[s.raw] for s in shown]


def test_an_effect_that_arrives_first_is_printed_right_after_its_cause() -> None:
    j = happy()
    hold = CausalHold(EVENT_TOPICS, WAIT)
    by_raw = {encode(f): f.type for f in j.facts}
    confirmed, captured = j.facts[4], j.facts[3]
    assert (confirmed.type, captured.type) == ("order.confirmed", "payment.captured")
    assert hold.offer(*on_wire(confirmed), now=0.0) == []  # its cause, a payment fact, is not printed yet
    assert hold.next_due() == WAIT
    assert ids(hold.offer(*on_wire(j.facts[0]), now=1.0), by_raw) == ["order.placed"]  # caused by a request
    assert ids(hold.offer(*on_wire(captured), now=2.0), by_raw) == ["payment.captured", "order.confirmed"]
    assert hold.next_due() is None and hold.due(now=100.0) == []


def test_any_arrival_order_prints_every_message_once_and_never_an_effect_before_its_cause() -> None:
    rng = random.Random(7)
    for _ in range(50):
        flows = [happy() for _ in range(3)]
        facts = [f for j in flows for f in j.facts]
        rng.shuffle(facts)
        hold = CausalHold(EVENT_TOPICS, WAIT)
        by_raw = {encode(f): f.id for f in facts}
        printed: list[str] = []
        for n, f in enumerate(facts):
            printed += ids(hold.offer(*on_wire(f), now=n * 0.001), by_raw)
        assert sorted(printed) == sorted(f.id for f in facts)
        position = {fid: i for i, fid in enumerate(printed)}
        assert all(position[f.causation_id] < position[f.id] for f in facts if f.causation_id in position)


def test_past_the_bound_a_message_is_printed_with_a_marker_and_what_waited_for_it_follows() -> None:
    j = happy()
    confirmed = j.facts[4]
    # Something caused by the confirmation (the rule is general), arriving first.
    follow_up: Received = Envelope(
        id=str(uuid.uuid4()),
        source=confirmed.source,
        subject=confirmed.subject,
        sequence=confirmed.sequence + 1,
        time=confirmed.time,
        correlation_id=confirmed.correlation_id,
        causation_id=confirmed.id,
        data=j.facts[6].data,
        causation_type=confirmed.type,
    )
    hold = CausalHold(EVENT_TOPICS, WAIT)
    assert hold.offer(*on_wire(follow_up), now=0.0) == []
    assert hold.offer(*on_wire(confirmed), now=1.0) == []
    assert hold.due(now=WAIT - 0.001) == []
    shown = hold.due(now=WAIT)  # the follow-up is overdue: its chain starts at the confirmation
    assert [s.raw for s in shown] == [encode(confirmed), encode(follow_up)]
    assert [s.gap for s in shown] == [confirmed.causation_id, None]
    line = shown_line(shown[0], colour=False, wait_s=WAIT)
    assert line.endswith(f"[causal gap: cause {confirmed.causation_id[:8]} not seen within 5s]")
    assert "order.confirmed" in line
    assert "causal gap" not in shown_line(shown[1], colour=False, wait_s=WAIT)
    assert "\033[31m  [causal gap" in shown_line(shown[0], colour=True, wait_s=WAIT)
    # The cause comes late: printed then, and nothing is printed twice.
    captured = j.facts[3]
    assert [s.raw for s in hold.offer(*on_wire(captured), now=9.0)] == [encode(captured)]


def test_commands_wait_for_the_fact_that_caused_them_when_their_topic_is_watched() -> None:
    j = happy()
    scheduled = j.facts[2]
    capture: Envelope[Message] = Envelope(
        id=str(uuid.uuid4()),
        source="/services/order",
        subject=j.payment_id,
        sequence=0,
        time=scheduled.time,
        correlation_id=j.order_id,
        causation_id=scheduled.id,
        data=CapturePayment(order_id=j.order_id, payment_id=j.payment_id),
        causation_type=scheduled.type,
    )
    # shipment.scheduled's own cause, a shipping command, is on a topic not watched here.
    watched = CausalHold([SHIPPING_EVENTS, PAYMENT_COMMANDS], WAIT)
    assert watched.offer(PAYMENT_COMMANDS, encode(capture), now=0.0) == []
    assert [s.raw for s in watched.offer(*on_wire(scheduled), now=0.1)] == [encode(scheduled), encode(capture)]
    # Watching every topic, a fact waits for the command that caused it, too.
    everything = CausalHold(ALL_TOPICS, WAIT)
    assert everything.offer(*on_wire(scheduled), now=0.0) == []
    # Watching only the command topic: its cause can never be printed, so it does not wait.
    alone = CausalHold([PAYMENT_COMMANDS], WAIT)
    assert [s.raw for s in alone.offer(PAYMENT_COMMANDS, encode(capture), now=0.0)] == [encode(capture)]


def test_dead_letters_and_undecodable_values_are_printed_at_once() -> None:
    hold = CausalHold(ALL_TOPICS, WAIT)
    assert hold.offer(ORDER_EVENTS, b"garbage", now=0.0) == [Shown(ORDER_EVENTS, b"garbage")]
    dlq = dlq_topic(ORDER_EVENTS)
    assert hold.offer(dlq, b"{}", now=0.0) == [Shown(dlq, b"{}")]

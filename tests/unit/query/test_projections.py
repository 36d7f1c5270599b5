"""The pure projection: any arrival order, grouping or duplication gives the same views."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.query.api import BadCursor, OrderSummary, decode_cursor, encode_cursor
from services.query.projection import OrderReadModel, Received, causal_order, fold, merge, patch, project
from shared.contract import (
    AuthorizePayment,
    Envelope,
    MessageFormatError,
    OrderFact,
    OrderStatus,
    PaymentStatus,
    ShipmentStatus,
    decode,
    encode,
)
from tests.unit.query.journeys import Journey, cancelled_after_capture, declined, happy, shipping_failed

JOURNEYS: dict[str, Callable[[], Journey]] = {
    "happy": happy,
    "declined": declined,
    "shipping_failed": shipping_failed,
    "cancelled_after_capture": cancelled_after_capture,
}


def view_of(envs: list[Received]) -> OrderReadModel:
    [view] = fold(envs).values()
    return view


def applied_in_batches(envs: list[Received], cuts: list[int]) -> OrderReadModel:
    """What the SQL upsert does: stored = merge(stored, fold(batch)) for each batch."""
    stored: dict[str, OrderReadModel] = {}
    bounds = [0, *sorted(cuts), len(envs)]
    for lo, hi in zip(bounds, bounds[1:]):
        batch = project(envs[lo:hi])
        for order_id, p in batch.orders.items():
            stored[order_id] = merge(stored[order_id], p) if order_id in stored else p
    [view] = stored.values()
    return view


def test_a_delivered_order_shows_every_stream_status_ids_and_totals() -> None:
    j = happy(customer_id="cust-9", total_cents=2500, currency="USD")
    view = view_of(j.facts)
    assert OrderSummary.of(view).model_dump(mode="json") == {
        "order_id": j.order_id,
        "customer_id": "cust-9",
        "status": "DELIVERED",
        "reason": None,
        "payment_status": "CAPTURED",
        "shipment_status": "DELIVERED",
        "payment_id": j.payment_id,
        "shipment_id": j.shipment_id,
        "total_cents": 2500,
        "currency": "USD",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 2500}],
        "version": 4,
        "updated_at": j.facts[-1].time.isoformat().replace("+00:00", "Z"),
    }
    assert (view.captured_cents, view.refunded_cents, view.payment_currency) == (2500, None, "USD")


@pytest.mark.parametrize(
    "journey, status, reason, payment, shipment, version",
    [
        (declined, "REJECTED", "payment_declined:card_declined", "DECLINED", None, 2),
        (shipping_failed, "CANCELLED", "shipping_failed:destination_not_served", "VOIDED", "FAILED", 2),
        (cancelled_after_capture, "CANCELLED", "cancelled_by_customer", "REFUNDED", "CANCELLED", 3),
    ],
)
def test_unhappy_journeys_end_in_their_final_statuses(
    journey: Callable[[], Journey], status: str, reason: str, payment: str, shipment: str | None, version: int
) -> None:
    view = view_of(journey().facts)
    assert (view.status, view.reason, view.payment_status, view.shipment_status, view.version) == (
        status,
        reason,
        payment,
        shipment,
        version,
    )


def test_refunds_are_tracked_next_to_captures() -> None:
    view = view_of(cancelled_after_capture(total_cents=700).facts)
    assert (view.captured_cents, view.refunded_cents) == (700, 700)


def test_every_permutation_of_a_journey_converges_to_the_same_view() -> None:
    j = happy()
    small = j.facts[:6]  # placed, authorized, scheduled, captured, confirmed, dispatched: 720 orders
    expected = view_of(small)
    for perm in itertools.permutations(small):
        assert view_of(list(perm)) == expected
    assert expected.status == "CONFIRMED" and expected.shipment_status == "DISPATCHED"


@pytest.mark.parametrize("name", sorted(JOURNEYS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_shuffled_batched_and_duplicated_deliveries_converge(name: str, data: st.DataObject) -> None:
    j = JOURNEYS[name]()
    expected = view_of(j.facts)
    redelivered = data.draw(st.lists(st.sampled_from(j.facts), max_size=10))
    arrival = data.draw(st.permutations(j.facts + redelivered))
    cuts = data.draw(st.lists(st.integers(0, len(arrival)), max_size=5))
    assert applied_in_batches(list(arrival), cuts) == expected


def test_a_fact_about_payment_before_the_order_is_known_is_kept_until_it_is() -> None:
    j = happy()
    early = view_of([j.facts[2]])  # shipment.scheduled alone
    assert (early.known, early.status, early.shipment_status, early.version) == (False, None, "SCHEDULED", 0)
    assert view_of([j.facts[2], j.facts[0]]).known


def test_an_older_status_never_overwrites_a_newer_one() -> None:
    j = happy()
    placed, confirmed = j.facts[0], j.facts[4]
    assert view_of([confirmed, placed]).status == "CONFIRMED"
    assert view_of([placed, confirmed]).status == "CONFIRMED"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_merge_is_commutative_associative_and_idempotent(data: st.DataObject) -> None:
    j = data.draw(st.sampled_from([happy, cancelled_after_capture, shipping_failed]))(order_id="o-1")
    patches = [patch(f) for f in j.facts]
    a, b, c = (reduce(merge, data.draw(st.lists(st.sampled_from(patches), min_size=1))) for _ in range(3))
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a


def test_merging_views_of_different_orders_is_refused() -> None:
    with pytest.raises(ValueError):
        merge(OrderReadModel(order_id="a"), OrderReadModel(order_id="b"))


def test_project_skips_commands_and_repeated_ids() -> None:
    j = happy()
    command: Envelope[AuthorizePayment] = Envelope(
        id=str(uuid.uuid4()),
        source=j.facts[1].source,
        subject=j.payment_id,
        sequence=0,
        time=j.facts[1].time,
        correlation_id=j.order_id,
        causation_id=j.facts[0].id,
        data=AuthorizePayment(
            order_id=j.order_id, payment_id=j.payment_id, amount_cents=1, currency="EUR", payment_token="tok_visa"
        ),
    )
    batch = project([j.facts[0], command, j.facts[0], j.facts[1]])
    assert [f.id for f in batch.facts] == [j.facts[0].id, j.facts[1].id]


def test_a_fact_naming_no_order_never_reaches_the_projection() -> None:
    """The contract codec refuses it (the consumer runner dead-letters it as poison)."""
    j = happy()
    doc = msgspec.json.decode(encode(j.facts[0]))
    del doc["data"]["order_id"]
    with pytest.raises(MessageFormatError):
        decode(msgspec.json.encode(doc))


class OrderAnnotated(OrderFact, frozen=True, kw_only=True):
    """A fact of the order stream this version of the projection does not know."""

    TYPE: ClassVar[str] = "order.annotated"


def test_order_facts_that_move_no_status_advance_the_version_but_not_the_status() -> None:
    j = happy()
    later = replace(j.facts[0], id=str(uuid.uuid4()), sequence=9, data=OrderAnnotated(order_id=j.order_id))
    view = view_of([*j.facts, later])
    assert (view.version, view.status) == (9, "DELIVERED")


def test_statuses_are_the_contract_enums() -> None:
    view = view_of(happy().facts)
    assert (view.status, view.payment_status, view.shipment_status) == (
        OrderStatus.DELIVERED,
        PaymentStatus.CAPTURED,
        ShipmentStatus.DELIVERED,
    )


# ---------------------------------------------------------------- causal order


def test_timeline_follows_the_recorded_causal_order_whatever_the_input_order() -> None:
    j = cancelled_after_capture()
    expected = [f.id for f in j.facts]
    shuffled = list(j.facts)
    random.Random(7).shuffle(shuffled)
    assert [f.id for f in causal_order(shuffled)] == expected


def test_an_effect_stamped_before_its_cause_still_comes_after_it() -> None:
    j = happy()
    facts = j.facts
    captured, confirmed = facts[3], facts[4]
    skewed = replace(confirmed, time=captured.time - timedelta(seconds=5))  # the order service's clock lags
    ordered = [f.id for f in causal_order([*facts[:4], skewed, *facts[5:]])]
    assert ordered.index(captured.id) < ordered.index(skewed.id)
    # ... and before the facts of its own stream that follow it.
    assert ordered.index(skewed.id) < ordered.index(facts[6].id)


def test_a_later_stream_version_stamped_earlier_comes_after_the_earlier_version() -> None:
    j = happy()
    facts = j.facts
    authorized, captured = facts[1], facts[3]
    early_capture = replace(captured, time=authorized.time - timedelta(seconds=1))
    ordered = [f.id for f in causal_order([early_capture, *facts[:3]])]
    assert ordered.index(authorized.id) < ordered.index(early_capture.id)


def test_ties_in_time_are_broken_deterministically_and_duplicates_appear_once() -> None:
    j = happy()
    same_time = [replace(f, time=j.facts[0].time) for f in j.facts]
    first = causal_order(same_time)
    assert [f.id for f in causal_order(list(reversed(same_time)) + same_time[:2])] == [f.id for f in first]
    assert len(first) == len(same_time)


def test_a_causation_cycle_does_not_hang_the_timeline() -> None:
    j = happy()
    a, b = j.facts[:2]
    looped = [replace(a, causation_id=b.id), replace(b, causation_id=a.id, subject="other")]
    assert {f.id for f in causal_order(looped)} == {a.id, b.id}


# ---------------------------------------------------------------- cursors


def test_cursor_round_trips_and_is_opaque() -> None:
    when = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cursor = encode_cursor(when, "order-1")
    assert "order-1" not in cursor and "=" not in cursor
    assert decode_cursor(cursor) == (when, "order-1")


NUL_ID = encode_cursor(datetime(2025, 1, 1, tzinfo=UTC), "a\x00b")


@pytest.mark.parametrize(
    "bad", [NUL_ID, "", "!!!", "bm90IGpzb24", "WzFd", "WyIyMDI1LTAzLTAxVDEyOjAwOjAwIiwgIm8iXQ", "e30"]
)
def test_cursors_this_service_did_not_issue_are_refused(bad: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(bad)

"""The Order aggregate: placement rules, every transition, refusals and idempotent repeats."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from services.order import domain as o
from services.order.domain import (
    CancelOrder,
    ConfirmOrder,
    DeliverOrder,
    OrderState,
    PlaceOrder,
    RejectOrder,
    ShipOrder,
)
from services.order.views import OrderView
from shared.contract import (
    Address,
    Money,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderStatus,
    PaymentAuthorized,
    encode_data,
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound

ORDER_ID = "order-1"
ADDRESS = Address(name="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")


def line(sku: str, quantity: int, unit_price_cents: int) -> OrderLine:
    return OrderLine(sku=sku, quantity=quantity, unit_price_cents=unit_price_cents)


def place(**changes: Any) -> PlaceOrder:
    base = PlaceOrder(
        order_id=ORDER_ID,
        customer_id="cust-1",
        items=(line("sku-1", 2, 1250), line("sku-2", 1, 499)),
        currency="EUR",
        shipping_address=ADDRESS,
        payment_token="tok_ok",
    )
    return replace(base, **changes)


def run(state: OrderState, command: o.OrderCommand) -> OrderState:
    for fact in o.decide(command, state):
        state = o.evolve(state, fact)
    return state


def placed() -> OrderState:
    return run(OrderState(), place())


def confirmed() -> OrderState:
    return run(placed(), ConfirmOrder(ORDER_ID, "pay-1", "ship-1"))


def shipped() -> OrderState:
    return run(confirmed(), ShipOrder(ORDER_ID, "ship-1"))


def delivered() -> OrderState:
    return run(shipped(), DeliverOrder(ORDER_ID, "ship-1"))


def test_place_order_emits_placed_with_total_and_no_token() -> None:
    [fact] = o.decide(place(), OrderState())
    assert fact.TYPE == "order.placed" == OrderPlaced.TYPE
    assert msgspec.json.decode(encode_data(fact)) == {
        "order_id": ORDER_ID,
        "customer_id": "cust-1",
        "items": [
            {"sku": "sku-1", "quantity": 2, "unit_price_cents": 1250},
            {"sku": "sku-2", "quantity": 1, "unit_price_cents": 499},
        ],
        "currency": "EUR",
        "total_cents": 2 * 1250 + 499,
        "shipping_address": msgspec.to_builtins(ADDRESS),
    }
    assert b"payment_token" not in encode_data(fact) and b"tok_ok" not in encode_data(fact)


def test_placed_state() -> None:
    state = placed()
    assert state.exists and state.version == 1
    assert state.status is OrderStatus.PENDING
    assert state.total_cents == 2999
    assert state.items == (line("sku-1", 2, 1250), line("sku-2", 1, 499))
    assert state.shipping_address == ADDRESS
    view = OrderView.of(state).model_dump(exclude_none=True)
    assert view["status"] == "PENDING" and view["version"] == 1 and "reason" not in view


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"items": ()}, "items"),
        ({"items": (line("sku-1", 0, 100),)}, "items[0].quantity"),
        ({"items": (line("sku-1", 1, 100), line("sku-2", -1, 100))}, "items[1].quantity"),
        ({"items": (line("sku-1", True, 100),)}, "items[0].quantity"),
        ({"items": (line("sku-1", 1, -1),)}, "items[0].unit_price_cents"),
        ({"items": (line("", 1, 1),)}, "items[0].sku"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"shipping_address": msgspec.structs.replace(ADDRESS, country="DEU")}, "shipping_address.country"),
        ({"shipping_address": msgspec.structs.replace(ADDRESS, country="de")}, "shipping_address.country"),
        ({"shipping_address": msgspec.structs.replace(ADDRESS, city=" ")}, "shipping_address.city"),
        ({"customer_id": ""}, "customer_id"),
        ({"payment_token": ""}, "payment_token"),
    ],
)
def test_place_order_refuses_invalid_input_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidCommand) as info:
        o.decide(place(**changes), OrderState())
    assert info.value.field == field
    assert info.value.http_status == 422
    assert info.value.to_dict()["field"] == field


def test_zero_priced_items_are_allowed() -> None:
    [fact] = o.decide(place(items=(line("free", 3, 0),)), OrderState())
    assert isinstance(fact, OrderPlaced) and fact.total_cents == 0


def test_place_twice_same_content_is_idempotent_other_content_conflicts() -> None:
    state = placed()
    assert o.decide(place(), state) == []
    with pytest.raises(IllegalTransition) as info:
        o.decide(place(currency="USD"), state)
    assert info.value.code == "order_already_exists"


def test_happy_path_transitions() -> None:
    state = confirmed()
    assert state.status is OrderStatus.CONFIRMED
    assert (state.payment_id, state.shipment_id) == ("pay-1", "ship-1")
    state = shipped()
    assert state.status is OrderStatus.SHIPPED
    state = delivered()
    assert state.status is OrderStatus.DELIVERED and state.version == 4


def test_facts_follow_the_catalog() -> None:
    assert o.decide(ConfirmOrder(ORDER_ID, "p", "s"), placed()) == [
        OrderConfirmed(order_id=ORDER_ID, payment_id="p", shipment_id="s")
    ]
    assert o.decide(ShipOrder(ORDER_ID, "ship-1"), confirmed()) == [
        OrderShipped(order_id=ORDER_ID, shipment_id="ship-1")
    ]
    assert o.decide(DeliverOrder(ORDER_ID, "ship-1"), shipped()) == [
        OrderDelivered(order_id=ORDER_ID, shipment_id="ship-1")
    ]
    assert o.decide(RejectOrder(ORDER_ID, "payment_timeout"), placed()) == [
        OrderRejected(order_id=ORDER_ID, reason="payment_timeout")
    ]
    [cancelled] = o.decide(CancelOrder(ORDER_ID, "cancelled_by_customer"), placed())
    assert cancelled.TYPE == "order.cancelled" and isinstance(cancelled, OrderCancelled)


def test_idempotent_repeats_return_nothing() -> None:
    assert o.decide(ConfirmOrder(ORDER_ID, "pay-1", "ship-1"), confirmed()) == []
    assert o.decide(ShipOrder(ORDER_ID, "ship-1"), shipped()) == []
    assert o.decide(DeliverOrder(ORDER_ID, "ship-1"), delivered()) == []
    rejected = run(placed(), RejectOrder(ORDER_ID, "payment_declined:card_declined"))
    assert o.decide(RejectOrder(ORDER_ID, "payment_declined:card_declined"), rejected) == []
    cancelled = run(placed(), CancelOrder(ORDER_ID, "cancelled_by_customer"))
    assert o.decide(CancelOrder(ORDER_ID, "cancelled_by_customer"), cancelled) == []


def test_reject_and_cancel_record_reason() -> None:
    rejected = run(placed(), RejectOrder(ORDER_ID, "payment_declined:card_declined"))
    assert rejected.status is OrderStatus.REJECTED and rejected.reason == "payment_declined:card_declined"
    assert OrderView.of(rejected).reason == "payment_declined:card_declined"
    cancelled = run(confirmed(), CancelOrder(ORDER_ID, "cancelled_by_customer"))
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.reason == "cancelled_by_customer"


@pytest.mark.parametrize(
    ("state_factory", "command"),
    [
        (confirmed, ConfirmOrder(ORDER_ID, "other", "ship-1")),
        (shipped, ConfirmOrder(ORDER_ID, "pay-1", "ship-1")),
        (placed, ShipOrder(ORDER_ID, "ship-1")),
        (confirmed, ShipOrder(ORDER_ID, "other-shipment")),
        (confirmed, DeliverOrder(ORDER_ID, "ship-1")),
        (delivered, ShipOrder(ORDER_ID, "ship-1")),
        (confirmed, RejectOrder(ORDER_ID, "payment_timeout")),
        (shipped, CancelOrder(ORDER_ID, "cancelled_by_customer")),
        (delivered, CancelOrder(ORDER_ID, "cancelled_by_customer")),
    ],
)
def test_illegal_transitions_raise(state_factory: Any, command: o.OrderCommand) -> None:
    with pytest.raises(IllegalTransition) as info:
        o.decide(command, state_factory())
    assert info.value.http_status == 409


def test_final_orders_refuse_everything_else() -> None:
    rejected = run(placed(), RejectOrder(ORDER_ID, "payment_timeout"))
    cancelled = run(placed(), CancelOrder(ORDER_ID, "shipping_failed:destination_not_served"))
    for state in (rejected, cancelled):
        for command in (
            ConfirmOrder(ORDER_ID, "p", "s"),
            CancelOrder(ORDER_ID, "other_reason"),
            RejectOrder(ORDER_ID, "other_reason"),
        ):
            with pytest.raises(IllegalTransition):
                o.decide(command, state)
    with pytest.raises(IllegalTransition) as info:
        o.decide(CancelOrder(ORDER_ID, "cancelled_by_customer"), rejected)
    assert info.value.code == "order_not_cancellable"


def test_commands_on_missing_order_are_not_found() -> None:
    with pytest.raises(NotFound) as info:
        o.decide(ConfirmOrder(ORDER_ID, "p", "s"), OrderState())
    assert info.value.http_status == 404


def test_can_cancel_only_pending_and_confirmed() -> None:
    assert o.can_cancel(placed()) and o.can_cancel(confirmed())
    assert not o.can_cancel(shipped()) and not o.can_cancel(delivered()) and not o.can_cancel(OrderState())
    assert not o.can_cancel(run(placed(), RejectOrder(ORDER_ID, "x")))


def test_fold_rebuilds_and_time_travels() -> None:
    facts = []
    state = OrderState()
    for command in (
        place(),
        ConfirmOrder(ORDER_ID, "pay-1", "ship-1"),
        ShipOrder(ORDER_ID, "ship-1"),
        DeliverOrder(ORDER_ID, "ship-1"),
    ):
        new = o.decide(command, state)
        facts += new
        for fact in new:
            state = o.evolve(state, fact)
    assert o.fold(facts) == state
    assert o.fold(facts, until_version=2).status is OrderStatus.CONFIRMED
    assert o.fold(facts, until_version=1).version == 1


def test_facts_of_other_kinds_only_advance_version() -> None:
    other = PaymentAuthorized(order_id=ORDER_ID, payment_id="p", amount=Money(amount_cents=1, currency="EUR"))
    state = o.evolve(placed(), other)
    assert state.version == 2 and state.status is OrderStatus.PENDING

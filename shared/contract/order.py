"""Facts of the Order aggregate, published on `order.events` (key: order id)."""

from __future__ import annotations

from typing import Any, ClassVar

from shared.contract.base import Address, Cents, Currency, Fact, Id, OrderLine, Text, legacy_address
from shared.contract.topics import ORDER_EVENTS
from shared.contract.upcasting import upcaster


class OrderFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = ORDER_EVENTS


class OrderPlaced(OrderFact, frozen=True, kw_only=True):
    """A customer placed an order; the saga starts fulfilling it. The payment token is not here.
    Version 2: the address's personal fields are sealed with the customer's data key."""

    TYPE: ClassVar[str] = "order.placed"
    VERSION: ClassVar[int] = 2

    customer_id: Id
    items: tuple[OrderLine, ...]
    currency: Currency
    total_cents: Cents
    shipping_address: Address


@upcaster(OrderPlaced.TYPE, from_version=1)
def _placed_address_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: the clear address of a v1 placement is marked legacy text (`pd0.`)."""
    return legacy_address(data, "shipping_address")


class OrderConfirmed(OrderFact, frozen=True, kw_only=True):
    """Money captured and a shipment scheduled."""

    TYPE: ClassVar[str] = "order.confirmed"

    payment_id: Id
    shipment_id: Id


class OrderShipped(OrderFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "order.shipped"

    shipment_id: Id


class OrderDelivered(OrderFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "order.delivered"

    shipment_id: Id


class OrderRejected(OrderFact, frozen=True, kw_only=True):
    """The order never started: no money was taken (`payment_declined:<code>`, `payment_timeout`)."""

    TYPE: ClassVar[str] = "order.rejected"

    reason: Text


class OrderCancelled(OrderFact, frozen=True, kw_only=True):
    """The order was undone once every compensation was confirmed."""

    TYPE: ClassVar[str] = "order.cancelled"

    reason: Text


ORDER_FACTS: tuple[type[OrderFact], ...] = (
    OrderPlaced,
    OrderConfirmed,
    OrderShipped,
    OrderDelivered,
    OrderRejected,
    OrderCancelled,
)

"""Facts of the Order aggregate, published on `order.events` (key: order id)."""

from __future__ import annotations

from typing import ClassVar

from shared.contract.base import Address, Cents, Currency, Fact, Id, OrderLine, Text
from shared.contract.topics import ORDER_EVENTS


class OrderFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = ORDER_EVENTS


class OrderPlaced(OrderFact, frozen=True, kw_only=True):
    """A customer placed an order; the saga starts fulfilling it. The payment token is not here."""

    TYPE: ClassVar[str] = "order.placed"

    customer_id: Id
    items: tuple[OrderLine, ...]
    currency: Currency
    total_cents: Cents
    shipping_address: Address


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

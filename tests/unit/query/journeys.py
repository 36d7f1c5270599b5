"""Recorded-style fact sequences of whole order journeys, for projection and service tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.contract import (
    Address,
    AuthorizePayment,
    CancelShipment,
    CapturePayment,
    Command,
    Envelope,
    Fact,
    Money,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    VoidPayment,
    encode,
)
from shared.ids import derived_id
from shared.personal import legacy

#: An address as the contract carries it (personal fields never in clear).
ADDRESS = Address(name=legacy("A"), line1=legacy("1 St"), city=legacy("X"), postal_code=legacy("1"), country="DE")

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SOURCES: dict[type[Fact], str] = {
    OrderFact: "/services/order",
    PaymentFact: "/services/payment",
    ShipmentFact: "/services/shipping",
}

Received = Envelope[Fact]

#: The saga's command behind each participant fact (the others are caused by HTTP requests).
COMMAND_OF: dict[type[Fact], type[Command]] = {
    PaymentAuthorized: AuthorizePayment,
    PaymentDeclined: AuthorizePayment,
    PaymentCaptured: CapturePayment,
    PaymentVoided: VoidPayment,
    PaymentRefunded: RefundPayment,
    ShipmentScheduled: ScheduleShipment,
    ShipmentFailed: ScheduleShipment,
    ShipmentCancelled: CancelShipment,
}


def group_of(cls: type[Fact]) -> type[Fact]:
    return next(g for g in SOURCES if issubclass(cls, g))


class Journey:
    """Builds the facts of one order's flow the way the services would record them."""

    def __init__(
        self,
        order_id: str | None = None,
        *,
        customer_id: str = "cust-1",
        currency: str = "EUR",
        start: datetime = T0,
        total_cents: int = 4599,
    ) -> None:
        self.order_id = order_id or str(uuid.uuid4())
        self.payment_id = derived_id(self.order_id, "payment")
        self.shipment_id = derived_id(self.order_id, "shipment")
        self.customer_id = customer_id
        self.currency = currency
        self.total_cents = total_cents
        self.clock = start
        self.versions: dict[str, int] = {}
        self.facts: list[Received] = []

    def _subject(self, group: type[Fact]) -> str:
        return {OrderFact: self.order_id, PaymentFact: self.payment_id, ShipmentFact: self.shipment_id}[group]

    def add(self, fact: Fact, *, caused_by: Received | None = None) -> Received:
        group = group_of(type(fact))
        subject = self._subject(group)
        self.versions[subject] = self.versions.get(subject, 0) + 1
        self.clock += timedelta(milliseconds=3)
        env: Received = Envelope(
            id=str(uuid.uuid4()),
            source=SOURCES[group],
            subject=subject,
            sequence=self.versions[subject],
            time=self.clock,
            correlation_id=self.order_id,
            # A fact caused by a fact names it; one caused by a command names the (unseen) command;
            # `causation_type` as the kernel sets it: the cause's type, None for an HTTP request.
            causation_id=caused_by.id if caused_by is not None else str(uuid.uuid4()),
            data=fact,
            causation_type=caused_by.type if caused_by is not None else _command_type(type(fact)),
        )
        self.facts.append(env)
        return env

    # --- steps
    def placed(self) -> Received:
        return self.add(
            OrderPlaced(
                order_id=self.order_id,
                customer_id=self.customer_id,
                items=(OrderLine(sku="SKU-1", quantity=1, unit_price_cents=self.total_cents),),
                currency=self.currency,
                total_cents=self.total_cents,
                shipping_address=ADDRESS,
            )
        )

    def payment(self, cls: type[PaymentFact], **extra: Any) -> Received:
        return self.add(
            cls(
                order_id=self.order_id,
                payment_id=self.payment_id,
                amount=Money(amount_cents=self.total_cents, currency=self.currency),
                **extra,
            )
        )

    def shipment(self, cls: type[ShipmentFact], **extra: Any) -> Received:
        if cls is ShipmentScheduled:
            extra.setdefault("address", ADDRESS)
        return self.add(cls(order_id=self.order_id, shipment_id=self.shipment_id, **extra))

    def order(self, cls: type[OrderFact], caused_by: Received, **extra: Any) -> Received:
        return self.add(cls(order_id=self.order_id, **extra), caused_by=caused_by)


def _command_type(cls: type[Fact]) -> str | None:
    command = COMMAND_OF.get(cls)
    return command.TYPE if command is not None else None


def happy(order_id: str | None = None, **kw: Any) -> Journey:
    """placed → authorized → scheduled → captured → confirmed → dispatched → shipped → delivered."""
    j = Journey(order_id, **kw)
    j.placed()
    j.payment(PaymentAuthorized)
    j.shipment(ShipmentScheduled)
    captured = j.payment(PaymentCaptured)
    j.order(OrderConfirmed, captured, payment_id=j.payment_id, shipment_id=j.shipment_id)
    dispatched = j.shipment(ShipmentDispatched)
    j.order(OrderShipped, dispatched, shipment_id=j.shipment_id)
    delivered = j.shipment(ShipmentDelivered)
    j.order(OrderDelivered, delivered, shipment_id=j.shipment_id)
    return j


def declined(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    d = j.payment(PaymentDeclined, reason="card_declined")
    j.order(OrderRejected, d, reason="payment_declined:card_declined")
    return j


def shipping_failed(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    j.payment(PaymentAuthorized)
    j.shipment(ShipmentFailed, reason="destination_not_served")
    voided = j.payment(PaymentVoided, reason="shipping_failed")
    j.order(OrderCancelled, voided, reason="shipping_failed:destination_not_served")
    return j


def cancelled_after_capture(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    j.payment(PaymentAuthorized)
    j.shipment(ShipmentScheduled)
    captured = j.payment(PaymentCaptured)
    j.order(OrderConfirmed, captured, payment_id=j.payment_id, shipment_id=j.shipment_id)
    j.shipment(ShipmentCancelled, reason="cancelled_by_customer")
    refunded = j.payment(PaymentRefunded, reason="cancelled_by_customer")
    j.order(OrderCancelled, refunded, reason="cancelled_by_customer")
    return j


def topic_of(env: Received) -> str:
    topic = env.data.TOPIC
    assert topic is not None
    return topic


def wire(env: Received) -> tuple[str, bytes]:
    """(key, CloudEvents bytes) as the services' relays publish them."""
    return env.subject, encode(env)

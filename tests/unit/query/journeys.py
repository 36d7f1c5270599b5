"""Recorded-style fact sequences of whole order journeys, for projection and service tests."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.ids import derived_id
from shared.messages import Envelope, RecordedEvent, encode, event_to_cloudevent

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
SOURCES = {"order": "/services/order", "payment": "/services/payment", "shipment": "/services/shipping"}
TOPICS = {"order": "order.events", "payment": "payment.events", "shipment": "shipping.events"}


class Journey:
    """Builds the facts of one order's flow the way the services would record them."""

    def __init__(self, order_id: str | None = None, *, customer_id: str = "cust-1", currency: str = "EUR",
                 start: datetime = T0, total_cents: int = 4599) -> None:
        self.order_id = order_id or str(uuid.uuid4())
        self.payment_id = derived_id(self.order_id, "payment")
        self.shipment_id = derived_id(self.order_id, "shipment")
        self.customer_id = customer_id
        self.currency = currency
        self.total_cents = total_cents
        self.clock = start
        self.versions: dict[str, int] = {}
        self.facts: list[Envelope] = []

    def _subject(self, group: str) -> str:
        return {"order": self.order_id, "payment": self.payment_id, "shipment": self.shipment_id}[group]

    def add(self, type_: str, data: dict[str, Any] | None = None, *, caused_by: Envelope | None = None) -> Envelope:
        group = type_.split(".")[0]
        subject = self._subject(group)
        self.versions[subject] = self.versions.get(subject, 0) + 1
        self.clock += timedelta(milliseconds=3)
        env = Envelope(
            id=str(uuid.uuid4()),
            source=SOURCES[group],
            type=type_,
            subject=subject,
            time=self.clock,
            data={"order_id": self.order_id, **(data or {})},
            correlation_id=self.order_id,
            # A fact caused by a fact names it; one caused by a command names the (unseen) command.
            causation_id=caused_by.id if caused_by is not None else str(uuid.uuid4()),
            sequence=self.versions[subject],
        )
        self.facts.append(env)
        return env

    # --- steps
    def placed(self) -> Envelope:
        return self.add("order.placed", {
            "customer_id": self.customer_id,
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": self.total_cents}],
            "currency": self.currency,
            "total_cents": self.total_cents,
            "shipping_address": {"name": "A", "line1": "1 St", "city": "X", "postal_code": "1", "country": "DE"},
        })

    def payment(self, what: str, **extra: Any) -> Envelope:
        return self.add(f"payment.{what}", {"payment_id": self.payment_id, "amount_cents": self.total_cents,
                                            "currency": self.currency, **extra})

    def shipment(self, what: str, **extra: Any) -> Envelope:
        return self.add(f"shipment.{what}", {"shipment_id": self.shipment_id, **extra})

    def order(self, what: str, caused_by: Envelope, **extra: Any) -> Envelope:
        return self.add(f"order.{what}", extra, caused_by=caused_by)


def happy(order_id: str | None = None, **kw: Any) -> Journey:
    """placed → authorized → scheduled → captured → confirmed → dispatched → shipped → delivered."""
    j = Journey(order_id, **kw)
    j.placed()
    j.payment("authorized")
    j.shipment("scheduled")
    captured = j.payment("captured")
    j.order("confirmed", captured, payment_id=j.payment_id, shipment_id=j.shipment_id)
    dispatched = j.shipment("dispatched")
    j.order("shipped", dispatched, shipment_id=j.shipment_id)
    delivered = j.shipment("delivered")
    j.order("delivered", delivered, shipment_id=j.shipment_id)
    return j


def declined(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    d = j.payment("declined", reason="card_declined")
    j.order("rejected", d, reason="payment_declined:card_declined")
    return j


def shipping_failed(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    j.payment("authorized")
    j.shipment("failed", reason="destination_not_served")
    voided = j.payment("voided", reason="shipping_failed")
    j.order("cancelled", voided, reason="shipping_failed:destination_not_served")
    return j


def cancelled_after_capture(order_id: str | None = None, **kw: Any) -> Journey:
    j = Journey(order_id, **kw)
    j.placed()
    j.payment("authorized")
    j.shipment("scheduled")
    captured = j.payment("captured")
    j.order("confirmed", captured, payment_id=j.payment_id, shipment_id=j.shipment_id)
    j.shipment("cancelled", reason="cancelled_by_customer")
    refunded = j.payment("refunded", reason="cancelled_by_customer")
    j.order("cancelled", refunded, reason="cancelled_by_customer")
    return j


def topic_of(env: Envelope) -> str:
    return TOPICS[env.type.split(".")[0]]


def wire(env: Envelope) -> tuple[str, bytes]:
    """(key, CloudEvents bytes) as the services' relays publish them."""
    return env.subject, encode(event_to_cloudevent(env.as_recorded_event(), env.source))


def recorded(env: Envelope) -> RecordedEvent:
    return env.as_recorded_event()

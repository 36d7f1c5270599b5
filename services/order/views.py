"""The order service's HTTP shapes: request bodies (strict) and the views it answers with.

Views are rendered here from the domain's states, never by the domain itself. Request bodies
are strict: unknown fields, wrong JSON types (`"2"` for 2, `2.0`, `true`) and out-of-range
numbers are 422 naming the field.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from services.order.domain import MAX_QUANTITY, OrderState, PlaceOrder
from services.order.saga import SagaState
from shared.contract import (
    MAX_CENTS,
    Address,
    AuthorizePayment,
    OrderLine,
    PaymentAuthorized,
    ScheduleShipment,
)
from shared.eventstore import Recorded

# A non-blank string (some non-space character) of bounded length.
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"\S")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]

_ADDRESS_EXAMPLE: dict[str, JsonValue] = {
    "name": "Ada Lovelace",
    "line1": "12 St James's Sq",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}
ORDER_ID_EXAMPLE = "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d"
_PLACE_EXAMPLE: dict[str, JsonValue] = {
    "customer_id": "cust-42",
    "items": [
        {"sku": "book-sicp", "quantity": 1, "unit_price_cents": 4500},
        {"sku": "pen-blue", "quantity": 3, "unit_price_cents": 150},
    ],
    "currency": "EUR",
    "shipping_address": _ADDRESS_EXAMPLE,
    "payment_token": "tok_visa_4242",
}
_ORDER_EXAMPLE: dict[str, JsonValue] = {
    "order_id": ORDER_ID_EXAMPLE,
    "customer_id": "cust-42",
    "status": "PENDING",
    "items": _PLACE_EXAMPLE["items"],
    "currency": "EUR",
    "total_cents": 4950,
    "shipping_address": _ADDRESS_EXAMPLE,
    "version": 1,
}


# --------------------------------------------------------------------------- request bodies


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: ShortText
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    unit_price_cents: int = Field(ge=0, le=MAX_CENTS, description="integer minor units")


class AddressIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [_ADDRESS_EXAMPLE]})

    name: Text
    line1: Text
    city: Text
    postal_code: ShortText
    country: Country = Field(description="ISO-3166 alpha-2, upper case")


class PlaceOrderRequest(BaseModel):
    """POST /orders. The payment token goes only into the authorization command, never into a fact."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                _PLACE_EXAMPLE,
                {**_PLACE_EXAMPLE, "payment_token": "tok_decline"},
                {**_PLACE_EXAMPLE, "shipping_address": {**_ADDRESS_EXAMPLE, "country": "AQ"}},
            ]
        },
    )

    customer_id: Text
    items: list[OrderLineIn] = Field(min_length=1, max_length=100)
    currency: Currency = Field(description="ISO-4217, upper case")
    shipping_address: AddressIn
    payment_token: Text = Field(description="`tok_decline` is always declined by the payment service")

    def to_command(self, order_id: str) -> PlaceOrder:
        return PlaceOrder(
            order_id=order_id,
            customer_id=self.customer_id,
            items=tuple(
                OrderLine(sku=i.sku, quantity=i.quantity, unit_price_cents=i.unit_price_cents) for i in self.items
            ),
            currency=self.currency,
            shipping_address=Address(**self.shipping_address.model_dump()),
            payment_token=self.payment_token,
        )


# --------------------------------------------------------------------------- responses


class OrderAccepted(BaseModel):
    """The order was placed; the saga now drives it (watch GET /orders/{id} or /sagas/{id})."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"order_id": ORDER_ID_EXAMPLE, "status": "PENDING", "version": 1, "total_cents": 4950}]
        }
    )

    order_id: str
    status: Literal["PENDING"]
    version: int
    total_cents: int


class OrderLineView(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class AddressView(BaseModel):
    name: str
    line1: str
    city: str
    postal_code: str
    country: str


OrderStatusName = Literal["PENDING", "CONFIRMED", "SHIPPED", "DELIVERED", "REJECTED", "CANCELLED"]


class OrderView(BaseModel):
    """The order as its facts say (write side, folded on every read)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _ORDER_EXAMPLE,
                {**_ORDER_EXAMPLE, "status": "REJECTED", "version": 2, "reason": "payment_declined:card_declined"},
            ]
        }
    )

    order_id: str
    customer_id: str
    status: OrderStatusName
    items: list[OrderLineView]
    currency: str
    total_cents: int
    shipping_address: AddressView
    version: int = Field(description="number of facts in the order's stream")
    reason: str | None = Field(default=None, description="why it was rejected or cancelled (absent otherwise)")
    payment_id: str | None = Field(default=None, description="once CONFIRMED")
    shipment_id: str | None = Field(default=None, description="once CONFIRMED")

    @classmethod
    def of(cls, state: OrderState) -> OrderView:
        view: dict[str, Any] = {
            "order_id": state.order_id,
            "customer_id": state.customer_id,
            "status": None if state.status is None else str(state.status),
            "items": [msgspec.to_builtins(line) for line in state.items],
            "currency": state.currency,
            "total_cents": state.total_cents,
            "shipping_address": None if state.shipping_address is None else msgspec.to_builtins(state.shipping_address),
            "version": state.version,
            "payment_id": state.payment_id,
            "shipment_id": state.shipment_id,
            "reason": state.reason,
        }
        return cls.model_validate(view)


class CancelAcceptedView(BaseModel):
    """Cancellation started: the order turns CANCELLED once the compensations are confirmed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"order_id": ORDER_ID_EXAMPLE, "status": "CONFIRMED", "version": 2, "saga_step": "compensating"}
            ]
        }
    )

    order_id: str
    status: OrderStatusName = Field(description="the order's status now (cancellation is asynchronous)")
    version: int
    saga_step: str


class SagaEventView(BaseModel):
    """One saga fact, in the current version of its schema (older facts are upcast)."""

    event_id: uuid.UUID
    type: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Recorded) -> SagaEventView:
        return cls(
            event_id=event.uuid,
            type=event.type,
            version=event.sequence,
            occurred_at=event.time,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=msgspec.to_builtins(event.data),
        )


class SagaView(BaseModel):
    """Where the order's saga stands, its trail of steps and every fact it recorded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": ORDER_ID_EXAMPLE,
                    "payment_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
                    "shipment_id": "2d7e0a4b-13c9-5f7e-9b1a-6c8d2e4f0a13",
                    "version": 4,
                    "mode": "FULFIL",
                    "step": "scheduling_shipment",
                    "order_status": "PENDING",
                    "payment_status": "AUTHORIZED",
                    "shipment_status": None,
                    "outcome": None,
                    "reason": None,
                    "awaiting": [ScheduleShipment.TYPE],
                    "deadline": "2025-01-01T12:00:30+00:00",
                    "completed": False,
                    "cancel_requested": False,
                    "timeouts": 0,
                    "anomalies": [],
                    "history": ["started", AuthorizePayment.TYPE, PaymentAuthorized.TYPE, ScheduleShipment.TYPE],
                    "events": [],
                }
            ]
        }
    )

    order_id: str
    payment_id: str
    shipment_id: str
    version: int
    mode: Literal["FULFIL", "COMPENSATE"]
    step: str
    order_status: OrderStatusName
    payment_status: str | None
    shipment_status: str | None
    outcome: str | None = Field(description="while compensating: the final status it leads to")
    reason: str | None
    awaiting: list[str] = Field(description="commands whose answer is awaited")
    deadline: datetime | None = Field(description="when the awaited step times out")
    completed: bool
    cancel_requested: bool
    timeouts: int
    anomalies: list[str]
    history: list[str]
    events: list[SagaEventView]

    @classmethod
    def of(cls, state: SagaState, events: list[Recorded]) -> SagaView:
        return cls(
            order_id=state.order_id,
            payment_id=state.payment_id,
            shipment_id=state.shipment_id,
            version=state.version,
            mode=state.mode.value,
            step=state.step,
            order_status=state.order_status.value,
            payment_status=None if state.payment is None else str(state.payment),
            shipment_status=None if state.shipment is None else str(state.shipment),
            outcome=None if state.outcome is None else str(state.outcome),
            reason=state.outcome_reason,
            awaiting=list(state.awaiting),
            deadline=state.deadline,
            completed=state.completed,
            cancel_requested=state.cancel_requested,
            timeouts=state.timeouts,
            anomalies=list(state.anomalies),
            history=list(state.history),
            events=[SagaEventView.of(e) for e in events],
        )

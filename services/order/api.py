"""REST API of the order service (SPEC §5): place, read, time-travel, cancel, inspect the saga.

Choices where the SPEC is silent:
* Request bodies are strict: unknown fields, wrong JSON types (`"2"` for 2, `2.0`, `true`)
  and out-of-range numbers are 422 with FastAPI's `detail[].loc` naming the field; domain
  rules (e.g. an order total beyond BIGINT) are 422 `{code, message, field}`.
* `Idempotency-Key` (1-200 printable characters) is global to the service and kept forever;
  "same body" means the same JSON value (key order and spacing do not matter). A replay
  answers 202 with the stored answer and the header `Idempotent-Replayed: true`.
* `?as_of_version=N`: N < 1 → 422; N beyond the order's current version → 404
  `version_not_found` (the order has no such past yet).
* Causation id of what a request appends: `X-Request-ID` if sent, else the Idempotency-Key,
  else a fresh id; the correlation id is always the order id.
* Cancel answers 202 with the order as it is *now* (still PENDING/CONFIRMED): the order becomes
  CANCELLED once the saga's compensations are confirmed. Repeating an accepted cancel is 202.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from services.domain_errors import NotFound
from services.domain_kit import MAX_CENTS
from services.order import handlers
from services.order.domain import saga
from services.order.domain.order import MAX_QUANTITY, OrderLine, OrderState, PlaceOrder
from services.domain_kit import Address
from services.order.domain.saga import SagaState
from services.order.settings import OrderSettings
from services.rest import EventView, error_responses, request_causation_id
from shared.messages import RecordedEvent
from shared.runtime import runtime_of

router = APIRouter()

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
_ORDER_ID_EXAMPLE = "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d"
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
    "order_id": _ORDER_ID_EXAMPLE,
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
    """POST /orders. The payment token goes only into `payment.authorize`, never into a fact."""

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
    payment_token: Text = Field(description="`tok_decline` is declined by the payment service (SPEC §5)")

    def to_command(self, order_id: str) -> PlaceOrder:
        return PlaceOrder(
            order_id=order_id,
            customer_id=self.customer_id,
            items=tuple(OrderLine(i.sku, i.quantity, i.unit_price_cents) for i in self.items),
            currency=self.currency,
            shipping_address=Address(**self.shipping_address.model_dump()),
            payment_token=self.payment_token,
        )


# --------------------------------------------------------------------------- responses


class OrderAccepted(BaseModel):
    """The order was placed; the saga now drives it (watch GET /orders/{id} or /sagas/{id})."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": _ORDER_ID_EXAMPLE, "status": "PENDING", "version": 1, "total_cents": 4950}]}
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
    def of(cls, state: OrderState) -> "OrderView":
        return cls.model_validate(state.to_dict())


class CancelAcceptedView(BaseModel):
    """Cancellation started: the order turns CANCELLED once the compensations are confirmed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"order_id": _ORDER_ID_EXAMPLE, "status": "CONFIRMED", "version": 2, "saga_step": "compensating"}]
        }
    )

    order_id: str
    status: OrderStatusName = Field(description="the order's status now (cancellation is asynchronous)")
    version: int
    saga_step: str


class SagaEventView(BaseModel):
    """One saga fact (secrets redacted)."""

    event_id: uuid.UUID
    type: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: RecordedEvent) -> "SagaEventView":
        return cls(
            event_id=event.event_id,
            type=event.type,
            version=event.version,
            occurred_at=event.occurred_at,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=saga.redacted(event.data),
        )


class SagaView(BaseModel):
    """Where the order's saga stands, its trail of steps and every fact it recorded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": _ORDER_ID_EXAMPLE,
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
                    "awaiting": ["shipment.schedule"],
                    "deadline": "2025-01-01T12:00:30+00:00",
                    "completed": False,
                    "cancel_requested": False,
                    "timeouts": 0,
                    "anomalies": [],
                    "history": ["started", "payment.authorize", "payment.authorized", "shipment.schedule"],
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
    def of(cls, state: SagaState, events: list[RecordedEvent]) -> "SagaView":
        return cls.model_validate({**state.to_dict(), "events": [SagaEventView.of(e) for e in events]})


# --------------------------------------------------------------------------- parameters

OrderId = Path(description="the order id (a UUID assigned by POST /orders)")
RequestId = Header(
    default=None,
    alias="X-Request-ID",
    description="becomes the causation id of what the request appends (a new id if absent)",
)
IdempotencyKeyHeader = Header(
    default=None,
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    pattern=r"^[\x21-\x7e]+$",
    description="retry-safe placement: the same key with the same body returns the same order and "
    "appends nothing; with a different body → 422",
)


def _settings(request: Request) -> OrderSettings:
    settings = runtime_of(request).settings
    assert isinstance(settings, OrderSettings)
    return settings


# --------------------------------------------------------------------------- routes


@router.post(
    "/orders",
    tags=["orders"],
    status_code=202,
    response_model=OrderAccepted,
    responses={
        422: {
            "description": "invalid input, nothing appended: `detail[].loc` names the field (schema), or "
            "`{code, message, field}` for a domain rule or an Idempotency-Key reused with another body",
        }
    },
    summary="Place an order: appends order.placed and starts the fulfilment saga",
    description="202 + `Location: /orders/{id}`. The saga then sends `payment.authorize`, and the "
    "order moves to CONFIRMED, SHIPPED, DELIVERED or REJECTED/CANCELLED (SPEC §6).",
)
async def place_order(
    body: PlaceOrderRequest,
    request: Request,
    response: Response,
    idempotency_key: str | None = IdempotencyKeyHeader,
    x_request_id: str | None = RequestId,
) -> OrderAccepted:
    settings = _settings(request)
    key = None
    if idempotency_key is not None:
        key = handlers.IdempotencyKey(idempotency_key, handlers.body_fingerprint(body.model_dump(mode="json")))
    causation_id = request_causation_id(x_request_id) if x_request_id else (idempotency_key or str(uuid.uuid4()))
    placed = await handlers.place_order(
        runtime_of(request).store,
        body.to_command(str(uuid.uuid4())),
        causation_id=causation_id,
        step_timeout_s=settings.saga_step_timeout_s,
        idempotency=key,
    )
    response.headers["Location"] = f"/orders/{placed.order_id}"
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return OrderAccepted.model_validate(placed.to_dict())


@router.get(
    "/orders/{order_id}",
    tags=["orders"],
    response_model=OrderView,
    response_model_exclude_none=True,
    responses=error_responses(404),
    summary="An order's write-side state, now or as of a past version",
)
async def get_order(
    request: Request,
    order_id: str = OrderId,
    as_of_version: int | None = Query(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="replay the log up to this event (1 = as placed); beyond the current version → 404",
    ),
) -> OrderView:
    return OrderView.of(await handlers.get_order(runtime_of(request).store, order_id, as_of_version))


@router.get(
    "/orders/{order_id}/events",
    tags=["orders"],
    response_model=list[EventView],
    responses=error_responses(404),
    summary="The order's facts in stream order, with their envelopes",
)
async def get_order_events(request: Request, order_id: str = OrderId) -> list[EventView]:
    return [EventView.of(e) for e in await handlers.order_events(runtime_of(request).store, order_id)]


@router.post(
    "/orders/{order_id}/cancel",
    tags=["orders"],
    status_code=202,
    response_model=CancelAcceptedView,
    responses=error_responses(404, 409),
    summary="Ask to cancel: 202 while PENDING or CONFIRMED, 409 once SHIPPED or final",
    description="The saga cancels the shipment and voids or refunds the payment; the order turns "
    "CANCELLED (`cancelled_by_customer`) once those are confirmed. 409 too if the goods left "
    "the warehouse before the order learnt it.",
)
async def cancel_order(
    request: Request, response: Response, order_id: str = OrderId, x_request_id: str | None = RequestId
) -> CancelAcceptedView:
    accepted = await handlers.cancel_order(
        runtime_of(request).store,
        order_id,
        causation_id=request_causation_id(x_request_id),
        attempts=_settings(request).conflict_retries,
    )
    response.headers["Location"] = f"/orders/{order_id}"
    status = accepted.order.status
    if status is None:  # pragma: no cover - handlers checked the order exists
        raise NotFound("order_not_found", f"order {order_id} does not exist")
    return CancelAcceptedView.model_validate(
        {"order_id": order_id, "status": str(status), "version": accepted.order.version, "saga_step": accepted.saga.step}
    )


@router.get(
    "/sagas/{order_id}",
    tags=["sagas"],
    response_model=SagaView,
    responses=error_responses(404),
    summary="The order's fulfilment saga: state, trail of steps and its facts (secrets redacted)",
)
async def get_saga(request: Request, order_id: str = OrderId) -> SagaView:
    state, events = await handlers.get_saga(runtime_of(request).store, order_id)
    return SagaView.of(state, events)

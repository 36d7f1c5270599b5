"""REST API of the shipping service: views, plus the dispatch and deliver commands.

Dispatch and deliver answer **200 with the shipment's new state**: the fact is committed
before the response (the write side is synchronous; only other services' views lag).
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from services.shipping import handlers
from services.shipping.domain import ShipmentState
from services.shipping.handlers import Shipments
from shared.contract import ShipmentDelivered, ShipmentDispatched, ShipmentStatus
from shared.rest import EventView, error_responses, request_causation_id
from shared.runtime import runtime_of

_SHIPMENT_EXAMPLE: dict[str, JsonValue] = {
    "shipment_id": "2d7e0a4b-13c9-5f7e-9b1a-6c8d2e4f0a13",
    "order_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
    "status": "SCHEDULED",
    "address": {
        "name": "Ada Lovelace",
        "line1": "12 St James's Sq",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    },
    "version": 1,
}


class AddressView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    line1: str
    city: str
    postal_code: str
    country: str = Field(description="ISO-3166 alpha-2")


class ShipmentView(BaseModel):
    """A shipment as its facts say (the write-side state, folded on every read)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _SHIPMENT_EXAMPLE,
                {**_SHIPMENT_EXAMPLE, "status": "DISPATCHED", "version": 2},
                {**_SHIPMENT_EXAMPLE, "status": "FAILED", "reason": "destination_not_served"},
            ]
        }
    )

    shipment_id: str
    order_id: str
    status: ShipmentStatus
    address: AddressView | None = Field(default=None, description="where to ship (absent for a failed shipment)")
    version: int = Field(description="number of facts in the shipment's stream")
    reason: str | None = Field(default=None, description="why it failed or was cancelled (absent otherwise)")

    @classmethod
    def of(cls, state: ShipmentState) -> ShipmentView:
        assert state.status is not None, "a shipment that exists has a status"
        return cls(
            shipment_id=state.shipment_id,
            order_id=state.order_id,
            status=state.status,
            address=None if state.address is None else AddressView.model_validate(state.address),
            version=state.version,
            reason=state.reason,
        )


ShipmentId = Path(description="the shipment id (= uuid5 of the order id, see docs/EVENTS.md)")
RequestId = Header(
    default=None,
    alias="X-Request-ID",
    description="becomes the causation id of the appended fact (a new id if absent)",
)


def router(shipments: Shipments) -> APIRouter:
    """The shipment endpoints, reading and commanding through the service's Shipment aggregate."""
    api = APIRouter(tags=["shipments"])

    @api.get(
        "/shipments/{shipment_id}",
        response_model=ShipmentView,
        response_model_exclude_none=True,
        responses=error_responses(404),
        summary="A shipment's current state",
    )
    async def get_shipment(request: Request, shipment_id: str = ShipmentId) -> ShipmentView:
        _, state = await shipments.load(runtime_of(request).store, shipment_id)
        return ShipmentView.of(state)

    @api.get(
        "/shipments",
        response_model=list[ShipmentView],
        response_model_exclude_none=True,
        summary="The shipments of an order (oldest first; empty if none)",
    )
    async def list_shipments(
        request: Request, order_id: str = Query(min_length=1, description="the order whose shipments to list")
    ) -> list[ShipmentView]:
        return [ShipmentView.of(s) for s in await shipments.of_order(runtime_of(request).store, order_id)]

    @api.get(
        "/shipments/{shipment_id}/events",
        response_model=list[EventView],
        responses=error_responses(404),
        summary="A shipment's facts in stream order, with their envelopes",
    )
    async def get_shipment_events(request: Request, shipment_id: str = ShipmentId) -> list[EventView]:
        history, _ = await shipments.load(runtime_of(request).store, shipment_id)
        return [EventView.of(e) for e in history]

    @api.post(
        "/shipments/{shipment_id}/dispatch",
        response_model=ShipmentView,
        response_model_exclude_none=True,
        status_code=200,
        responses=error_responses(404, 409),
        summary=f"Hand the goods to the carrier: SCHEDULED → DISPATCHED (emits {ShipmentDispatched.TYPE})",
        description="200 with the new state. Repeating it on a DISPATCHED shipment is a no-op (200, "
        "unchanged); from any other status → 409.",
    )
    async def dispatch_shipment(
        request: Request, shipment_id: str = ShipmentId, x_request_id: str | None = RequestId
    ) -> ShipmentView:
        state = await handlers.dispatch(
            shipments, runtime_of(request).store, shipment_id, causation_id=request_causation_id(x_request_id)
        )
        return ShipmentView.of(state)

    @api.post(
        "/shipments/{shipment_id}/deliver",
        response_model=ShipmentView,
        response_model_exclude_none=True,
        status_code=200,
        responses=error_responses(404, 409),
        summary=f"The carrier delivered: DISPATCHED → DELIVERED (emits {ShipmentDelivered.TYPE})",
        description="200 with the new state. Repeating it on a DELIVERED shipment is a no-op (200, "
        "unchanged); from any other status → 409.",
    )
    async def deliver_shipment(
        request: Request, shipment_id: str = ShipmentId, x_request_id: str | None = RequestId
    ) -> ShipmentView:
        state = await handlers.deliver(
            shipments, runtime_of(request).store, shipment_id, causation_id=request_causation_id(x_request_id)
        )
        return ShipmentView.of(state)

    return api

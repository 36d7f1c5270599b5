"""REST API of the shipping service: views, plus the dispatch and deliver commands.

Dispatch and deliver are staff's acts (staff or admin token; a customer's → 403). They answer
**200 with the shipment's new state**: the fact is committed
before the response (the write side is synchronous; only other services' views lag).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from services.shipping import handlers
from services.shipping.domain import DeliverShipment, DispatchShipment, ShipmentState
from services.shipping.handlers import HttpCommand, Shipments
from shared.auth import Role, require_role
from shared.contract import ShipmentDelivered, ShipmentDispatched, ShipmentStatus
from shared.rest import add_reads, error_responses, request_causation_id
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
    add_reads(api, shipments, ShipmentView, id_param=ShipmentId)

    def add_command(action: str, command: Callable[[str], HttpCommand], summary: str, *, repeat_in: str) -> None:
        """POST /shipments/{id}/<action>: 200 with the new state; a repeat is a no-op, else 409."""

        async def run(
            request: Request, shipment_id: str = ShipmentId, x_request_id: str | None = RequestId
        ) -> ShipmentView:
            state = await handlers.http_command(
                shipments,
                runtime_of(request).store,
                command(shipment_id),
                causation_id=request_causation_id(x_request_id),
            )
            return ShipmentView.of(state)

        api.post(
            f"/shipments/{{shipment_id}}/{action}",
            name=f"{action}_shipment",
            response_model=ShipmentView,
            response_model_exclude_none=True,
            status_code=200,
            dependencies=[Depends(require_role(Role.STAFF))],
            responses=error_responses(403, 404, 409),
            summary=summary,
            description=f"200 with the new state. Repeating it on a {repeat_in} shipment is a no-op (200, "
            "unchanged); from any other status → 409.",
        )(run)

    add_command(
        "dispatch",
        DispatchShipment,
        f"Hand the goods to the carrier: SCHEDULED → DISPATCHED (emits {ShipmentDispatched.TYPE})",
        repeat_in="DISPATCHED",
    )
    add_command(
        "deliver",
        DeliverShipment,
        f"The carrier delivered: DISPATCHED → DELIVERED (emits {ShipmentDelivered.TYPE})",
        repeat_in="DELIVERED",
    )
    return api

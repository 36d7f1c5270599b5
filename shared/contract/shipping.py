"""The shipping service's commands (`shipping.commands`) and facts (`shipping.events`), key: shipment id.

`customer_id` (the order's customer, so the shipping service can show a customer only its own
shipments) was added as an optional field: `shipment.schedule` v2 and the facts that start a
shipment, `shipment.scheduled` / `shipment.failed` v2. Older messages have none (`None`): their
shipments are visible to staff and admins only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.contract.base import Address, Command, Fact, Id, Text
from shared.contract.topics import SHIPPING_COMMANDS, SHIPPING_EVENTS
from shared.contract.upcasting import upcaster


class ShippingCommand(Command, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_COMMANDS
    TARGET: ClassVar[str] = "shipment_id"

    shipment_id: Id


class ScheduleShipment(ShippingCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.schedule"
    VERSION: ClassVar[int] = 2

    address: Address
    customer_id: Id | None = None


class CancelShipment(ShippingCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.cancel"

    reason: Text


class ShipmentFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_EVENTS

    shipment_id: Id


class ShipmentScheduled(ShipmentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.scheduled"
    VERSION: ClassVar[int] = 2

    address: Address
    customer_id: Id | None = None


class ShipmentFailed(ShipmentFact, frozen=True, kw_only=True):
    """`reason`: `destination_not_served`."""

    TYPE: ClassVar[str] = "shipment.failed"
    VERSION: ClassVar[int] = 2

    reason: Text
    customer_id: Id | None = None


class ShipmentDispatched(ShipmentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.dispatched"


class ShipmentDelivered(ShipmentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.delivered"


class ShipmentCancelled(ShipmentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.cancelled"

    reason: Text


SHIPPING_COMMANDS_DECLARED: tuple[type[ShippingCommand], ...] = (ScheduleShipment, CancelShipment)
SHIPPING_FACTS: tuple[type[ShipmentFact], ...] = (
    ShipmentScheduled,
    ShipmentFailed,
    ShipmentDispatched,
    ShipmentDelivered,
    ShipmentCancelled,
)


@upcaster(ScheduleShipment.TYPE, ShipmentScheduled.TYPE, ShipmentFailed.TYPE, from_version=1)
def _customer_unknown(data: dict[str, Any]) -> dict[str, Any]:
    """Additive: the data is unchanged; `customer_id` defaults to None (staff-only visibility)."""
    return data

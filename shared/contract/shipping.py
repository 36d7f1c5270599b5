"""The shipping service's commands (`shipping.commands`) and facts (`shipping.events`), key: shipment id."""

from __future__ import annotations

from typing import Any, ClassVar

from shared.contract.base import Address, Command, Fact, Id, Text, legacy_address
from shared.contract.topics import SHIPPING_COMMANDS, SHIPPING_EVENTS
from shared.contract.upcasting import upcaster


class ShippingCommand(Command, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_COMMANDS
    TARGET: ClassVar[str] = "shipment_id"

    shipment_id: Id


class ScheduleShipment(ShippingCommand, frozen=True, kw_only=True):
    """Version 2: the address's personal fields are sealed (as `order.placed` carries them)."""

    TYPE: ClassVar[str] = "shipment.schedule"
    VERSION: ClassVar[int] = 2

    address: Address


class CancelShipment(ShippingCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.cancel"

    reason: Text


class ShipmentFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_EVENTS

    shipment_id: Id


class ShipmentScheduled(ShipmentFact, frozen=True, kw_only=True):
    """Version 2: the address's personal fields are sealed (copied from the command)."""

    TYPE: ClassVar[str] = "shipment.scheduled"
    VERSION: ClassVar[int] = 2

    address: Address


@upcaster(ScheduleShipment.TYPE, "shipment.scheduled", from_version=1)
def _shipment_address_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: the clear address of a v1 shipment message is marked legacy text (`pd0.`)."""
    return legacy_address(data, "address")


class ShipmentFailed(ShipmentFact, frozen=True, kw_only=True):
    """`reason`: `destination_not_served`."""

    TYPE: ClassVar[str] = "shipment.failed"

    reason: Text


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

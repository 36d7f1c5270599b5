"""The shipping service's commands (`shipping.commands`) and facts (`shipping.events`), key: shipment id."""

from __future__ import annotations

from typing import ClassVar

from shared.contract.base import Address, Command, Fact, Id, Text
from shared.contract.topics import SHIPPING_COMMANDS, SHIPPING_EVENTS


class ShippingCommand(Command, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_COMMANDS
    TARGET: ClassVar[str] = "shipment_id"

    shipment_id: Id


class ScheduleShipment(ShippingCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.schedule"

    address: Address


class CancelShipment(ShippingCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.cancel"

    reason: Text


class ShipmentFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = SHIPPING_EVENTS

    shipment_id: Id


class ShipmentScheduled(ShipmentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "shipment.scheduled"

    address: Address


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

"""The shipping service layer: thin adapters between messages/requests and the pure domain.

`shipment.schedule` / `shipment.cancel` arrive on `shipping.commands` (from the saga);
dispatch and deliver are HTTP commands (the warehouse and the carrier). Both go through
`services.participant.Participant.execute`: read → fold → decide → append in one transaction,
re-deciding up to a few times when a concurrent writer wins the race (then 409).
"""
from __future__ import annotations

from typing import Any, Mapping

from services.participant import Participant
from services.shipping import domain
from services.shipping.domain import DeliverShipment, DispatchShipment, ShipmentCommand, ShipmentState
from shared.consumer import Handler
from shared.eventstore import EventStore
from shared.messages import RecordedEvent

#: Consumer group and inbox key of the command consumer (KERNEL.md naming).
COMMAND_CONSUMER = "shipping.commands"

SHIPMENTS: Participant[ShipmentCommand, ShipmentState] = Participant(
    name="shipment",
    stream_of=lambda command: command.shipment_id,
    fold=domain.fold,
    decide=domain.decide,
    find_answer=domain.find_answer,
)


def command_handler(store: EventStore, unserved_countries: frozenset[str]) -> Handler:
    """Handle `shipment.*` command messages with the configured unserved destinations."""

    def parse(command_type: str, data: Mapping[str, Any]) -> ShipmentCommand:
        return domain.command_from_message(command_type, data, unserved_countries=unserved_countries)

    return SHIPMENTS.consumer(store, parse)


async def dispatch(store: EventStore, shipment_id: str, *, causation_id: str) -> ShipmentState:
    """SCHEDULED → DISPATCHED (a repeated dispatch is a no-op); the state afterwards."""
    return await _http_command(store, DispatchShipment(shipment_id), causation_id)


async def deliver(store: EventStore, shipment_id: str, *, causation_id: str) -> ShipmentState:
    """DISPATCHED → DELIVERED (a repeated deliver is a no-op); the state afterwards."""
    return await _http_command(store, DeliverShipment(shipment_id), causation_id)


async def _http_command(store: EventStore, command: ShipmentCommand, causation_id: str) -> ShipmentState:
    outcome = await SHIPMENTS.execute_alone(store, command, causation_id=causation_id)
    return outcome.state


async def get_shipment(store: EventStore, shipment_id: str) -> ShipmentState:
    """The shipment's current state (NotFound → 404)."""
    _, state = await SHIPMENTS.load(store, shipment_id)
    return state


async def shipment_events(store: EventStore, shipment_id: str) -> list[RecordedEvent]:
    """The shipment's facts in stream order (NotFound → 404)."""
    history, _ = await SHIPMENTS.load(store, shipment_id)
    return history


async def shipments_of_order(store: EventStore, order_id: str) -> list[ShipmentState]:
    return await SHIPMENTS.of_order(store, order_id)

"""The shipping service layer: the Shipment aggregate with the service's policy bound, its
consumer, and the warehouse's and the carrier's HTTP commands.

Scheduling and cancelling arrive on the shipping command topic (from the saga); dispatch and
deliver are HTTP commands. Both go through the kernel's `Aggregate`: read → fold → decide →
append in one transaction, deciding again a few times when a concurrent writer wins the race
(then 409).
"""

from __future__ import annotations

from functools import partial
from typing import TypeAlias

from services.shipping import domain
from services.shipping.domain import DeliverShipment, DispatchShipment, ShipmentCommand, ShipmentState
from services.shipping.settings import ShippingSettings
from shared.aggregate import Aggregate
from shared.consumer import Handler
from shared.contract import SHIPPING_COMMANDS, CancelShipment, ScheduleShipment
from shared.eventstore import EventStore

#: Consumer group and inbox key of the command consumer: named after its topic (docs/KERNEL.md).
COMMAND_CONSUMER = SHIPPING_COMMANDS

Shipments = Aggregate[ShipmentCommand, ShipmentState]
#: The warehouse's and the carrier's commands, which arrive over HTTP.
HttpCommand: TypeAlias = DispatchShipment | DeliverShipment


def _shipment_id(command: ShipmentCommand) -> str:
    return command.shipment_id


def shipments(settings: ShippingSettings) -> Shipments:
    """The Shipment aggregate as this service runs it: its destinations and retry policy from `settings`."""
    return Aggregate(
        name="shipment",
        stream_of=_shipment_id,
        fold=domain.fold,
        evolve=domain.evolve,
        decide=partial(domain.decide, unserved_countries=settings.unserved_countries),
        find_answer=domain.find_answer,
        indexed_by_order=True,
        conflict_attempts=settings.conflict_attempts,
    )


def command_handler(aggregate: Shipments) -> Handler:
    """The batch handler of the shipping command topic (the saga's commands only)."""
    return aggregate.consumer(accepts=(ScheduleShipment, CancelShipment))


async def http_command(
    aggregate: Shipments, store: EventStore, command: HttpCommand, *, causation_id: str
) -> ShipmentState:
    """Dispatch (SCHEDULED → DISPATCHED) or deliver (DISPATCHED → DELIVERED); a repeat is a no-op.
    The state afterwards."""
    outcome = await aggregate.execute_alone(store, command, causation_id=causation_id)
    return outcome.state

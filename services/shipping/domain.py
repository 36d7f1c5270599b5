"""The Shipment aggregate: getting the goods to the customer, or explaining why not.

Pure: `decide(command, state, unserved_countries=...) -> list[ShipmentFact]`, `evolve`, `fold`.
Scheduling and cancelling are the contract's commands (shared/contract/shipping.py), sent by
the saga; dispatching and delivering are this service's own HTTP commands (the warehouse and
the carrier). Stream id = shipment_id = `derived_id(order_id, "shipment")`, so every retried
command addresses the same shipment. The unserved destinations are a policy of the service
(SHIPPING_UNSERVED_COUNTRIES), bound by its service layer.

Answering rules (docs/EVENTS.md): a command whose effect is already recorded returns [] (the
service re-answers with `find_answer`); a refusal raises a DomainError (409/404 at the API,
no answer on Kafka).

  * ScheduleShipment on an existing shipment → [] (scheduled or failed, whichever was recorded).
  * DispatchShipment: SCHEDULED → dispatched; DISPATCHED → [] (a retried POST); otherwise 409.
  * DeliverShipment: DISPATCHED → delivered; DELIVERED → []; otherwise 409.
  * CancelShipment: SCHEDULED → cancelled; CANCELLED → []; once DISPATCHED (or DELIVERED,
    FAILED) → IllegalTransition; unknown shipment → NotFound, recording nothing (a defensive
    cancel that overtook nothing: commands keyed by shipment_id keep their order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

from services.domain_kit import latest_of, require_country, require_text
from shared.contract import (
    Address,
    CancelShipment,
    Fact,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentStatus,
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound
from shared.eventstore import Recorded

#: Default of SHIPPING_UNSERVED_COUNTRIES.
DEFAULT_UNSERVED_COUNTRIES = frozenset({"AQ"})
FAILURE_DESTINATION_NOT_SERVED = "destination_not_served"

#: A shipment in these statuses still has goods planned or on the way.
ACTIVE_STATUSES = frozenset({ShipmentStatus.SCHEDULED, ShipmentStatus.DISPATCHED})


@dataclass(frozen=True, slots=True)
class DispatchShipment:
    """POST /shipments/{id}/dispatch: the warehouse handed the goods to the carrier."""

    shipment_id: str


@dataclass(frozen=True, slots=True)
class DeliverShipment:
    """POST /shipments/{id}/deliver: the carrier delivered."""

    shipment_id: str


ShipmentCommand: TypeAlias = ScheduleShipment | CancelShipment | DispatchShipment | DeliverShipment

#: Which recorded facts answer each command (used to re-answer a duplicate).
ANSWERS: dict[type[ShipmentCommand], tuple[type[ShipmentFact], ...]] = {
    ScheduleShipment: (ShipmentScheduled, ShipmentFailed),
    DispatchShipment: (ShipmentDispatched,),
    DeliverShipment: (ShipmentDelivered,),
    CancelShipment: (ShipmentCancelled,),
}


def find_answer(command: ShipmentCommand, history: Sequence[Recorded]) -> Recorded | None:
    """The recorded fact that already answers `command` (for a duplicate), if any."""
    return latest_of(history, ANSWERS.get(type(command), ()))


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class ShipmentState:
    """A shipment as its facts say; version 0 means it does not exist."""

    shipment_id: str = ""
    order_id: str = ""
    version: int = 0
    status: ShipmentStatus | None = None
    address: Address | None = None
    reason: str | None = None
    customer_id: str | None = None  # None: a shipment started before the field (staff-only)

    @property
    def exists(self) -> bool:
        return self.version > 0


# --------------------------------------------------------------------------- decide


def _illegal(action: str, state: ShipmentState) -> IllegalTransition:
    gone = state.status in (ShipmentStatus.DISPATCHED, ShipmentStatus.DELIVERED)
    code = "shipment_already_dispatched" if action == "cancel" and gone else "illegal_shipment_transition"
    return IllegalTransition(code, f"cannot {action} a shipment that is {state.status}")


def _require_address(address: object) -> Address:
    if not isinstance(address, Address):
        raise InvalidCommand("address", "address must be an address")
    for name in ("name", "line1", "city", "postal_code"):
        require_text(getattr(address, name), f"address.{name}")
    require_country(address.country, "address.country")
    return address


def decide(command: ShipmentCommand, state: ShipmentState, *, unserved_countries: frozenset[str]) -> list[ShipmentFact]:
    """Turn a command into the facts it causes, or refuse it with a DomainError.

    `unserved_countries`: ISO-3166 codes (any case) a shipment fails to, `destination_not_served`.
    """
    require_text(command.shipment_id, "shipment_id")

    if isinstance(command, ScheduleShipment):
        require_text(command.order_id, "order_id")
        address = _require_address(command.address)
        if state.exists:
            return []  # duplicate: the caller re-answers with the recorded fact
        if address.country in {c.upper() for c in unserved_countries}:
            return [
                ShipmentFailed(
                    shipment_id=command.shipment_id,
                    order_id=command.order_id,
                    reason=FAILURE_DESTINATION_NOT_SERVED,
                    customer_id=command.customer_id,
                )
            ]
        return [
            ShipmentScheduled(
                shipment_id=command.shipment_id,
                order_id=command.order_id,
                address=address,
                customer_id=command.customer_id,
            )
        ]

    if not state.exists:
        raise NotFound("shipment_not_found", f"shipment {command.shipment_id} does not exist")
    shipment_id, order_id = state.shipment_id, state.order_id

    if isinstance(command, DispatchShipment):
        if state.status is ShipmentStatus.SCHEDULED:
            return [ShipmentDispatched(shipment_id=shipment_id, order_id=order_id)]
        if state.status is ShipmentStatus.DISPATCHED:
            return []
        raise _illegal("dispatch", state)

    if isinstance(command, DeliverShipment):
        if state.status is ShipmentStatus.DISPATCHED:
            return [ShipmentDelivered(shipment_id=shipment_id, order_id=order_id)]
        if state.status is ShipmentStatus.DELIVERED:
            return []
        raise _illegal("deliver", state)

    if isinstance(command, CancelShipment):
        require_text(command.reason, "reason")
        if state.status is ShipmentStatus.SCHEDULED:
            return [ShipmentCancelled(shipment_id=shipment_id, order_id=order_id, reason=command.reason)]
        if state.status is ShipmentStatus.CANCELLED:
            return []
        raise _illegal("cancel", state)

    raise InvalidCommand("command", f"unknown shipping command {type(command).__name__}", code="unknown_command")


# --------------------------------------------------------------------------- evolve / fold


def evolve(state: ShipmentState, fact: Fact) -> ShipmentState:
    """Apply one fact. Facts of other kinds only advance the version (the stream position)."""
    version = state.version + 1
    match fact:
        case ShipmentScheduled() | ShipmentFailed():
            return ShipmentState(
                shipment_id=fact.shipment_id,
                order_id=fact.order_id,
                version=version,
                status=ShipmentStatus.SCHEDULED if isinstance(fact, ShipmentScheduled) else ShipmentStatus.FAILED,
                address=fact.address if isinstance(fact, ShipmentScheduled) else None,
                reason=fact.reason if isinstance(fact, ShipmentFailed) else None,
                customer_id=fact.customer_id,
            )
        case ShipmentDispatched():
            return replace(state, version=version, status=ShipmentStatus.DISPATCHED)
        case ShipmentDelivered():
            return replace(state, version=version, status=ShipmentStatus.DELIVERED)
        case ShipmentCancelled(reason=reason):
            return replace(state, version=version, status=ShipmentStatus.CANCELLED, reason=reason)
        case _:
            return replace(state, version=version)


def fold(facts: Iterable[Fact]) -> ShipmentState:
    state = ShipmentState()
    for fact in facts:
        state = evolve(state, fact)
    return state

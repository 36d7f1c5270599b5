"""The Shipment aggregate: getting the goods to the customer, or explaining why not.

Pure: `decide(command, state) -> list[NewEvent]`, `evolve`, `fold`. Stream id = shipment_id =
`derived_id(order_id, "shipment")`, so every retried command addresses the same shipment.

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

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence, TypeAlias, TypeVar

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.domain_kit import E, Address, EventLike, field_of, latest_of, require_country, require_mapping, require_text
from shared.messages import NewEvent

#: SPEC §5 default of SHIPPING_UNSERVED_COUNTRIES.
DEFAULT_UNSERVED_COUNTRIES = frozenset({"AQ"})
FAILURE_DESTINATION_NOT_SERVED = "destination_not_served"


class ShipmentStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    FAILED = "FAILED"
    DISPATCHED = "DISPATCHED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


#: A shipment in these statuses still has goods planned or on the way.
ACTIVE_STATUSES = frozenset({ShipmentStatus.SCHEDULED, ShipmentStatus.DISPATCHED})


SHIPMENT_SCHEDULE = "shipment.schedule"
SHIPMENT_CANCEL = "shipment.cancel"


@dataclass(frozen=True, slots=True)
class ScheduleShipment:
    shipment_id: str
    order_id: str
    address: Address
    unserved_countries: frozenset[str] = DEFAULT_UNSERVED_COUNTRIES


@dataclass(frozen=True, slots=True)
class DispatchShipment:
    """POST /shipments/{id}/dispatch."""

    shipment_id: str


@dataclass(frozen=True, slots=True)
class DeliverShipment:
    """POST /shipments/{id}/deliver."""

    shipment_id: str


@dataclass(frozen=True, slots=True)
class CancelShipment:
    shipment_id: str
    order_id: str
    reason: str


ShipmentCommand: TypeAlias = ScheduleShipment | DispatchShipment | DeliverShipment | CancelShipment


def command_from_message(
    command_type: str,
    data: Mapping[str, Any],
    *,
    unserved_countries: frozenset[str] = DEFAULT_UNSERVED_COUNTRIES,
) -> ShipmentCommand:
    """Build a domain command from a `shipping.commands` message (InvalidCommand if malformed)."""
    shipment_id = field_of(data, "shipment_id")
    order_id = field_of(data, "order_id")
    if command_type == SHIPMENT_SCHEDULE:
        return ScheduleShipment(
            shipment_id=shipment_id,
            order_id=order_id,
            address=Address.from_dict(field_of(data, "address"), "address"),
            unserved_countries=unserved_countries,
        )
    if command_type == SHIPMENT_CANCEL:
        return CancelShipment(shipment_id=shipment_id, order_id=order_id, reason=data.get("reason") or "cancelled")
    raise InvalidCommand("type", f"unknown shipping command {command_type!r}", code="unknown_command")


# --------------------------------------------------------------------------- events (facts)

SHIPMENT_SCHEDULED = "shipment.scheduled"
SHIPMENT_FAILED = "shipment.failed"
SHIPMENT_DISPATCHED = "shipment.dispatched"
SHIPMENT_DELIVERED = "shipment.delivered"
SHIPMENT_CANCELLED = "shipment.cancelled"

SHIPMENT_EVENT_TYPES = frozenset(
    {SHIPMENT_SCHEDULED, SHIPMENT_FAILED, SHIPMENT_DISPATCHED, SHIPMENT_DELIVERED, SHIPMENT_CANCELLED}
)


def shipment_scheduled(shipment_id: str, order_id: str, address: Address) -> NewEvent:
    return NewEvent(
        SHIPMENT_SCHEDULED, {"shipment_id": shipment_id, "order_id": order_id, "address": address.to_dict()}
    )


def shipment_failed(shipment_id: str, order_id: str, reason: str) -> NewEvent:
    return NewEvent(SHIPMENT_FAILED, {"shipment_id": shipment_id, "order_id": order_id, "reason": reason})


def shipment_dispatched(shipment_id: str, order_id: str) -> NewEvent:
    return NewEvent(SHIPMENT_DISPATCHED, {"shipment_id": shipment_id, "order_id": order_id})


def shipment_delivered(shipment_id: str, order_id: str) -> NewEvent:
    return NewEvent(SHIPMENT_DELIVERED, {"shipment_id": shipment_id, "order_id": order_id})


def shipment_cancelled(shipment_id: str, order_id: str, reason: str) -> NewEvent:
    return NewEvent(SHIPMENT_CANCELLED, {"shipment_id": shipment_id, "order_id": order_id, "reason": reason})


#: Which recorded facts answer each command (used to re-answer a duplicate).
ANSWER_TYPES: dict[type, frozenset[str]] = {
    ScheduleShipment: frozenset({SHIPMENT_SCHEDULED, SHIPMENT_FAILED}),
    DispatchShipment: frozenset({SHIPMENT_DISPATCHED}),
    DeliverShipment: frozenset({SHIPMENT_DELIVERED}),
    CancelShipment: frozenset({SHIPMENT_CANCELLED}),
}

def find_answer(command: ShipmentCommand, history: Sequence[E]) -> E | None:
    """The recorded fact that already answers `command` (for a duplicate), if any."""
    return latest_of(history, ANSWER_TYPES[type(command)])


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

    @property
    def exists(self) -> bool:
        return self.version > 0

    def to_dict(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "shipment_id": self.shipment_id,
            "order_id": self.order_id,
            "status": None if self.status is None else str(self.status),
            "address": None if self.address is None else self.address.to_dict(),
            "version": self.version,
        }
        if self.reason is not None:
            view["reason"] = self.reason
        return view


# --------------------------------------------------------------------------- decide


def _illegal(action: str, state: ShipmentState) -> IllegalTransition:
    code = "shipment_already_dispatched" if action == "cancel" and state.status in (
        ShipmentStatus.DISPATCHED,
        ShipmentStatus.DELIVERED,
    ) else "illegal_shipment_transition"
    return IllegalTransition(code, f"cannot {action} a shipment that is {state.status}")


def decide(command: ShipmentCommand, state: ShipmentState) -> list[NewEvent]:
    """Turn a command into the facts it causes, or refuse it with a DomainError."""
    require_text(command.shipment_id, "shipment_id")

    if isinstance(command, ScheduleShipment):
        require_text(command.order_id, "order_id")
        address = command.address
        if not isinstance(address, Address):
            raise InvalidCommand("address", "address must be an address")
        for name in ("name", "line1", "city", "postal_code"):
            require_text(getattr(address, name), f"address.{name}")
        country = require_country(address.country, "address.country")
        if state.exists:
            return []  # duplicate: the caller re-answers with the recorded fact
        if country in {c.upper() for c in command.unserved_countries}:
            return [shipment_failed(command.shipment_id, command.order_id, FAILURE_DESTINATION_NOT_SERVED)]
        return [shipment_scheduled(command.shipment_id, command.order_id, address)]

    if not state.exists:
        raise NotFound("shipment_not_found", f"shipment {command.shipment_id} does not exist")

    if isinstance(command, DispatchShipment):
        if state.status is ShipmentStatus.SCHEDULED:
            return [shipment_dispatched(state.shipment_id, state.order_id)]
        if state.status is ShipmentStatus.DISPATCHED:
            return []
        raise _illegal("dispatch", state)

    if isinstance(command, DeliverShipment):
        if state.status is ShipmentStatus.DISPATCHED:
            return [shipment_delivered(state.shipment_id, state.order_id)]
        if state.status is ShipmentStatus.DELIVERED:
            return []
        raise _illegal("deliver", state)

    if isinstance(command, CancelShipment):
        require_text(command.reason, "reason")
        if state.status is ShipmentStatus.SCHEDULED:
            return [shipment_cancelled(state.shipment_id, state.order_id, command.reason)]
        if state.status is ShipmentStatus.CANCELLED:
            return []
        raise _illegal("cancel", state)

    raise InvalidCommand("command", f"unknown shipping command {type(command).__name__}", code="unknown_command")


# --------------------------------------------------------------------------- evolve / fold

_STATUS_BY_EVENT = {
    SHIPMENT_SCHEDULED: ShipmentStatus.SCHEDULED,
    SHIPMENT_FAILED: ShipmentStatus.FAILED,
    SHIPMENT_DISPATCHED: ShipmentStatus.DISPATCHED,
    SHIPMENT_DELIVERED: ShipmentStatus.DELIVERED,
    SHIPMENT_CANCELLED: ShipmentStatus.CANCELLED,
}


def evolve(state: ShipmentState, event: EventLike) -> ShipmentState:
    """Apply one fact. Unknown types only advance the version (the stream position)."""
    data = event.data
    version = state.version + 1
    status = _STATUS_BY_EVENT.get(event.type)
    if status is None:
        return replace(state, version=version)
    if event.type in (SHIPMENT_SCHEDULED, SHIPMENT_FAILED):
        address = data.get("address")
        return ShipmentState(
            shipment_id=data["shipment_id"],
            order_id=data["order_id"],
            version=version,
            status=status,
            address=None if address is None else Address.from_dict(address, "address"),
            reason=data.get("reason"),
        )
    return replace(state, version=version, status=status, reason=data.get("reason", state.reason))


def fold(events: Iterable[EventLike]) -> ShipmentState:
    state = ShipmentState()
    for event in events:
        state = evolve(state, event)
    return state

"""The Shipment aggregate: scheduling rules, transitions, refusals and duplicate answers."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.shipping import domain as s
from services.shipping.domain import CancelShipment, DeliverShipment, DispatchShipment, ScheduleShipment, ShipmentState, ShipmentStatus
from services.domain_kit import Address
from shared.ids import derived_id

ORDER_ID = "order-1"
SHIPMENT_ID = derived_id(ORDER_ID, "shipment")
ADDRESS = Address("Ada", "1 Main St", "Berlin", "10115", "DE")


def schedule(country: str = "DE", unserved: frozenset[str] = s.DEFAULT_UNSERVED_COUNTRIES) -> ScheduleShipment:
    return ScheduleShipment(SHIPMENT_ID, ORDER_ID, replace(ADDRESS, country=country), unserved)


def run(state: ShipmentState, command: s.ShipmentCommand) -> ShipmentState:
    for event in s.decide(command, state):
        state = s.evolve(state, event)
    return state


def scheduled() -> ShipmentState:
    return run(ShipmentState(), schedule())


def dispatched() -> ShipmentState:
    return run(scheduled(), DispatchShipment(SHIPMENT_ID))


def delivered() -> ShipmentState:
    return run(dispatched(), DeliverShipment(SHIPMENT_ID))


def cancelled() -> ShipmentState:
    return run(scheduled(), CancelShipment(SHIPMENT_ID, ORDER_ID, "cancelled_by_customer"))


def failed() -> ShipmentState:
    return run(ShipmentState(), schedule(country="AQ"))


def test_schedule() -> None:
    [event] = s.decide(schedule(), ShipmentState())
    assert event.type == "shipment.scheduled"
    assert event.data == {"shipment_id": SHIPMENT_ID, "order_id": ORDER_ID, "address": ADDRESS.to_dict()}
    state = scheduled()
    assert state.status is ShipmentStatus.SCHEDULED and state.address == ADDRESS and state.version == 1


def test_unserved_country_fails() -> None:
    [event] = s.decide(schedule(country="AQ"), ShipmentState())
    assert event.type == "shipment.failed"
    assert event.data == {"shipment_id": SHIPMENT_ID, "order_id": ORDER_ID, "reason": "destination_not_served"}
    assert failed().status is ShipmentStatus.FAILED and failed().reason == "destination_not_served"
    assert s.decide(schedule(country="FR", unserved=frozenset({"fr"})), ShipmentState())[0].type == "shipment.failed"
    assert s.decide(schedule(country="AQ", unserved=frozenset()), ShipmentState())[0].type == "shipment.scheduled"


def test_duplicate_schedule_yields_nothing_and_find_answer() -> None:
    history = s.decide(schedule(country="AQ"), ShipmentState())
    assert s.decide(schedule(), s.fold(history)) == []
    assert s.find_answer(schedule(), history) is history[0]
    assert s.find_answer(CancelShipment(SHIPMENT_ID, ORDER_ID, "x"), history) is None


def test_dispatch_deliver_cancel() -> None:
    assert dispatched().status is ShipmentStatus.DISPATCHED
    assert delivered().status is ShipmentStatus.DELIVERED and delivered().version == 3
    assert s.decide(DispatchShipment(SHIPMENT_ID), scheduled())[0].data == {"shipment_id": SHIPMENT_ID, "order_id": ORDER_ID}
    [event] = s.decide(CancelShipment(SHIPMENT_ID, ORDER_ID, "cancelled_by_customer"), scheduled())
    assert event.type == "shipment.cancelled" and event.data["reason"] == "cancelled_by_customer"
    assert cancelled().status is ShipmentStatus.CANCELLED


def test_repeats_are_idempotent() -> None:
    assert s.decide(DispatchShipment(SHIPMENT_ID), dispatched()) == []
    assert s.decide(DeliverShipment(SHIPMENT_ID), delivered()) == []
    assert s.decide(CancelShipment(SHIPMENT_ID, ORDER_ID, "x"), cancelled()) == []


@pytest.mark.parametrize(
    ("state_factory", "command", "code"),
    [
        (dispatched, CancelShipment(SHIPMENT_ID, ORDER_ID, "x"), "shipment_already_dispatched"),
        (delivered, CancelShipment(SHIPMENT_ID, ORDER_ID, "x"), "shipment_already_dispatched"),
        (failed, CancelShipment(SHIPMENT_ID, ORDER_ID, "x"), "illegal_shipment_transition"),
        (scheduled, DeliverShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (cancelled, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (failed, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (delivered, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (cancelled, DeliverShipment(SHIPMENT_ID), "illegal_shipment_transition"),
    ],
)
def test_illegal_transitions(state_factory: Any, command: s.ShipmentCommand, code: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        s.decide(command, state_factory())
    assert info.value.code == code and info.value.http_status == 409


@pytest.mark.parametrize(
    "command", [DispatchShipment(SHIPMENT_ID), DeliverShipment(SHIPMENT_ID), CancelShipment(SHIPMENT_ID, ORDER_ID, "x")]
)
def test_unknown_shipment_is_not_found(command: s.ShipmentCommand) -> None:
    with pytest.raises(NotFound):
        s.decide(command, ShipmentState())


def test_invalid_address() -> None:
    with pytest.raises(InvalidCommand) as info:
        s.decide(schedule(country="Deutschland"), ShipmentState())
    assert info.value.field == "address.country"
    with pytest.raises(InvalidCommand) as info:
        s.decide(ScheduleShipment(SHIPMENT_ID, ORDER_ID, replace(ADDRESS, line1="")), ShipmentState())
    assert info.value.field == "address.line1"


def test_command_from_message() -> None:
    data = {"shipment_id": SHIPMENT_ID, "order_id": ORDER_ID, "address": ADDRESS.to_dict()}
    command = s.command_from_message("shipment.schedule", data, unserved_countries=frozenset({"XX"}))
    assert command == ScheduleShipment(SHIPMENT_ID, ORDER_ID, ADDRESS, frozenset({"XX"}))
    assert s.command_from_message("shipment.cancel", {**data, "reason": "r"}) == CancelShipment(SHIPMENT_ID, ORDER_ID, "r")
    with pytest.raises(InvalidCommand) as info:
        s.command_from_message("shipment.schedule", {**data, "address": {"name": "x"}})
    assert info.value.field == "address.line1"
    with pytest.raises(InvalidCommand):
        s.command_from_message("shipment.teleport", data)


def test_fold_rebuilds_state() -> None:
    events = []
    state = ShipmentState()
    for command in (schedule(), DispatchShipment(SHIPMENT_ID), DeliverShipment(SHIPMENT_ID)):
        new = s.decide(command, state)
        events += new
        for event in new:
            state = s.evolve(state, event)
    assert s.fold(events) == state
    assert state.to_dict()["status"] == "DELIVERED"

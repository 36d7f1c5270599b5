"""The Shipment aggregate: scheduling rules, transitions, refusals and duplicate answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.shipping import domain as s
from services.shipping.domain import DeliverShipment, DispatchShipment, ShipmentCommand, ShipmentState
from shared.contract import (
    Address,
    CancelShipment,
    Envelope,
    Fact,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentStatus,
    decode_data,
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound
from shared.eventstore import Recorded
from shared.ids import derived_id

ORDER_ID = "order-1"
SHIPMENT_ID = derived_id(ORDER_ID, "shipment")
ADDRESS = Address(name="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
V1_SHIPPING_FACTS = Path(__file__).parents[2] / "fixtures" / "v1" / "shipping_events.jsonl"


def decide(
    command: ShipmentCommand, state: ShipmentState, unserved: frozenset[str] = s.DEFAULT_UNSERVED_COUNTRIES
) -> list[ShipmentFact]:
    return s.decide(command, state, unserved_countries=unserved)


def schedule(country: str = "DE", address: Address = ADDRESS) -> ScheduleShipment:
    return ScheduleShipment(
        shipment_id=SHIPMENT_ID, order_id=ORDER_ID, address=msgspec.structs.replace(address, country=country)
    )


def cancel(reason: str = "x") -> CancelShipment:
    return CancelShipment(shipment_id=SHIPMENT_ID, order_id=ORDER_ID, reason=reason)


def run(state: ShipmentState, command: ShipmentCommand) -> ShipmentState:
    for fact in decide(command, state):
        state = s.evolve(state, fact)
    return state


def scheduled() -> ShipmentState:
    return run(ShipmentState(), schedule())


def dispatched() -> ShipmentState:
    return run(scheduled(), DispatchShipment(SHIPMENT_ID))


def delivered() -> ShipmentState:
    return run(dispatched(), DeliverShipment(SHIPMENT_ID))


def cancelled() -> ShipmentState:
    return run(scheduled(), cancel("cancelled_by_customer"))


def failed() -> ShipmentState:
    return run(ShipmentState(), schedule(country="AQ"))


def recorded(facts: Sequence[Fact]) -> list[Recorded]:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Envelope(
            id=str(uuid.uuid4()),
            source="/test",
            subject=SHIPMENT_ID,
            sequence=n,
            time=when,
            correlation_id=ORDER_ID,
            causation_id="c",
            data=fact,
        )
        for n, fact in enumerate(facts, start=1)
    ]


def test_schedule() -> None:
    [fact] = decide(schedule(), ShipmentState())
    assert fact == ShipmentScheduled(shipment_id=SHIPMENT_ID, order_id=ORDER_ID, address=ADDRESS)
    assert msgspec.to_builtins(fact) == {
        "order_id": ORDER_ID,
        "shipment_id": SHIPMENT_ID,
        "address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    }
    state = scheduled()
    assert state.status is ShipmentStatus.SCHEDULED and state.address == ADDRESS and state.version == 1


def test_unserved_country_fails() -> None:
    [fact] = decide(schedule(country="AQ"), ShipmentState())
    assert fact == ShipmentFailed(shipment_id=SHIPMENT_ID, order_id=ORDER_ID, reason="destination_not_served")
    assert msgspec.to_builtins(fact) == {
        "shipment_id": SHIPMENT_ID,
        "order_id": ORDER_ID,
        "reason": "destination_not_served",
    }
    assert failed().status is ShipmentStatus.FAILED and failed().reason == "destination_not_served"
    assert failed().address is None
    assert isinstance(decide(schedule(country="FR"), ShipmentState(), unserved=frozenset({"fr"}))[0], ShipmentFailed)
    assert isinstance(decide(schedule(country="AQ"), ShipmentState(), unserved=frozenset())[0], ShipmentScheduled)


def test_the_unserved_countries_are_a_policy_argument_not_a_command_field() -> None:
    assert "unserved_countries" not in ScheduleShipment.__struct_fields__
    with pytest.raises(TypeError):
        s.decide(schedule(), ShipmentState())  # type: ignore[call-arg]


def test_duplicate_schedule_yields_nothing_and_find_answer() -> None:
    history = recorded(decide(schedule(country="AQ"), ShipmentState()))
    assert decide(schedule(), s.fold(e.data for e in history)) == []
    assert s.find_answer(schedule(), history) is history[0]
    assert s.find_answer(cancel(), history) is None


def test_find_answer_of_http_commands() -> None:
    history = recorded([*decide(schedule(), ShipmentState()), *decide(DispatchShipment(SHIPMENT_ID), scheduled())])
    assert s.find_answer(DispatchShipment(SHIPMENT_ID), history) is history[1]
    assert s.find_answer(DeliverShipment(SHIPMENT_ID), history) is None


def test_dispatch_deliver_cancel() -> None:
    assert dispatched().status is ShipmentStatus.DISPATCHED
    assert delivered().status is ShipmentStatus.DELIVERED and delivered().version == 3
    assert delivered().address == ADDRESS
    assert decide(DispatchShipment(SHIPMENT_ID), scheduled()) == [
        ShipmentDispatched(shipment_id=SHIPMENT_ID, order_id=ORDER_ID)
    ]
    [fact] = decide(cancel("cancelled_by_customer"), scheduled())
    assert fact == ShipmentCancelled(shipment_id=SHIPMENT_ID, order_id=ORDER_ID, reason="cancelled_by_customer")
    assert cancelled().status is ShipmentStatus.CANCELLED and cancelled().reason == "cancelled_by_customer"


def test_repeats_are_idempotent() -> None:
    assert decide(DispatchShipment(SHIPMENT_ID), dispatched()) == []
    assert decide(DeliverShipment(SHIPMENT_ID), delivered()) == []
    assert decide(cancel(), cancelled()) == []


@pytest.mark.parametrize(
    ("state_factory", "command", "code"),
    [
        (dispatched, cancel(), "shipment_already_dispatched"),
        (delivered, cancel(), "shipment_already_dispatched"),
        (failed, cancel(), "illegal_shipment_transition"),
        (scheduled, DeliverShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (cancelled, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (failed, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (delivered, DispatchShipment(SHIPMENT_ID), "illegal_shipment_transition"),
        (cancelled, DeliverShipment(SHIPMENT_ID), "illegal_shipment_transition"),
    ],
)
def test_illegal_transitions(state_factory: Any, command: ShipmentCommand, code: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        decide(command, state_factory())
    assert info.value.code == code and info.value.http_status == 409


@pytest.mark.parametrize("command", [DispatchShipment(SHIPMENT_ID), DeliverShipment(SHIPMENT_ID), cancel()])
def test_unknown_shipment_is_not_found(command: ShipmentCommand) -> None:
    with pytest.raises(NotFound):
        decide(command, ShipmentState())


def test_invalid_address() -> None:
    """Commands built in-process are not validated by the codec: the domain checks its rules."""
    with pytest.raises(InvalidCommand) as info:
        decide(schedule(country="Deutschland"), ShipmentState())
    assert info.value.field == "address.country"
    with pytest.raises(InvalidCommand) as info:
        decide(schedule(address=msgspec.structs.replace(ADDRESS, line1="")), ShipmentState())
    assert info.value.field == "address.line1"


def test_fold_rebuilds_state() -> None:
    facts: list[Fact] = []
    state = ShipmentState()
    for command in (schedule(), DispatchShipment(SHIPMENT_ID), DeliverShipment(SHIPMENT_ID)):
        new = decide(command, state)
        facts += new
        for fact in new:
            state = s.evolve(state, fact)
    assert s.fold(facts) == state
    assert state.status is ShipmentStatus.DELIVERED


def fact_of(message_type: str, schema_version: int, data: str) -> Fact:
    fact = decode_data(message_type, schema_version, data)
    assert isinstance(fact, Fact)
    return fact


def test_v1_shipping_facts_fold_to_every_outcome() -> None:
    """Shipping facts are still version 1: the log written before the contract reads as is."""
    streams: dict[str, list[dict[str, Any]]] = {}
    for line in V1_SHIPPING_FACTS.read_text().splitlines():
        row = json.loads(line)
        streams.setdefault(row["stream_id"], []).append(row)
    statuses = set()
    for stream_id, rows in streams.items():
        state = s.fold(fact_of(row["type"], row["schema_version"], json.dumps(row["data"])) for row in rows)
        assert (state.shipment_id, state.version) == (stream_id, len(rows))
        statuses.add(state.status)
    assert statuses == set(ShipmentStatus)

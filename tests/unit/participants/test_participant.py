"""The participants' service layer without infrastructure: an in-memory unit of work.

What is checked here is the glue around the pure domains: which outcome a command gets
(new facts, a re-answer with the recorded envelope, a logged and counted refusal, a poison
message), the causal ids the facts carry, and re-deciding after a lost race.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Callable, Any, AsyncIterator, Sequence, cast

import pytest
from prometheus_client import REGISTRY

from services.domain_errors import InvalidCommand, NotFound
from services.participant import CONFLICT_ATTEMPTS
from services.rest import request_causation_id
from services.payment.handlers import PAYMENTS, command_handler
from services.shipping.domain import DispatchShipment
from services.shipping.handlers import SHIPMENTS
from services.shipping.settings import ShippingSettings
from shared.consumer import Delivery
from shared.eventstore import ConcurrencyConflict, EventRoutes, EventStore, UnitOfWork
from shared.ids import current_context, derived_id
from shared.messages import Envelope, NewEvent, RecordedEvent, encode, event_to_cloudevent

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SOURCE = "/services/payment"


class FakeConn:
    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, sql: str, *args: Any) -> None:
        self.executed.append((sql, args))


class FakeStore:
    """Every transaction of the fake store is the same FakeUow (its streams survive a retry)."""

    def __init__(self, uow: "FakeUow") -> None:
        self.uow = uow
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator["FakeUow"]:
        self.transactions += 1
        yield self.uow


class FakeUow:
    """Streams in a dict; `rivals` are facts another writer commits just before our append."""

    def __init__(self) -> None:
        self.conn = FakeConn()
        self.streams: dict[str, list[RecordedEvent]] = {}
        self.enqueued: list[tuple[str, str, bytes]] = []
        self.rivals: list[tuple[str, NewEvent]] = []
        self.committed_callbacks: list[Callable[[], None]] = []

    async def read(self, stream_id: str, up_to_version: int | None = None) -> list[RecordedEvent]:
        return list(self.streams.get(stream_id, []))

    async def read_many(self, stream_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        return {stream_id: list(self.streams.get(stream_id, [])) for stream_id in stream_ids}

    async def append(self, stream_id: str, expected_version: int, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if self.rivals:
            rival_stream, rival = self.rivals.pop(0)
            self._record(rival_stream, [rival], "rival", "rival")
        if len(self.streams.get(stream_id, [])) != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version)
        ctx = current_context()
        assert ctx is not None, "facts are only appended inside a causal context"
        return self._record(stream_id, events, ctx.correlation_id, ctx.causation_id)

    def _record(self, stream_id: str, events: Sequence[NewEvent], correlation: str, causation: str) -> list[RecordedEvent]:
        stream = self.streams.setdefault(stream_id, [])
        recorded = [
            RecordedEvent(uuid.uuid4(), e.type, stream_id, len(stream) + i, 1, WHEN, correlation, causation, dict(e.data))
            for i, e in enumerate(events, start=1)
        ]
        stream.extend(recorded)
        return recorded

    async def enqueue(self, topic: str, key: str, value: bytes) -> None:
        self.enqueued.append((topic, key, value))

    async def republish(self, event: RecordedEvent) -> None:
        topic = STORE.routes.topic_for(event.type)
        assert topic is not None
        await self.enqueue(topic, event.stream_id, encode(event_to_cloudevent(event, SOURCE)))

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.committed_callbacks.append(callback)

    def commit(self) -> None:
        """What the real unit of work does when its transaction commits."""
        for callback in self.committed_callbacks:
            callback()
        self.committed_callbacks.clear()


STORE = cast(EventStore, type("Store", (), {"source": SOURCE, "routes": EventRoutes({"payment.": "payment.events"})})())


def refused_count(aggregate: str, command_type: str, code: str) -> float:
    labels = {"aggregate": aggregate, "type": command_type, "code": code}
    return REGISTRY.get_sample_value("commands_refused_total", labels) or 0.0


def delivery(command_type: str, data: dict[str, Any], order_id: str) -> Delivery:
    envelope = Envelope(
        id=str(uuid.uuid4()), source="/services/order", type=command_type, subject=data["payment_id"],
        time=WHEN, data=data, correlation_id=order_id, causation_id="evt-1", sequence=0,
    )
    return Delivery(envelope, "payment.commands", 0, 0)


def authorize(order_id: str, token: str = "tok_ok") -> dict[str, Any]:
    payment_id = derived_id(order_id, "payment")
    return {"payment_id": payment_id, "order_id": order_id, "amount_cents": 100, "currency": "EUR", "payment_token": token}


async def handle(uow: FakeUow, *deliveries: Delivery, limit_cents: int = 1_000) -> None:
    await command_handler(STORE, limit_cents)(cast(UnitOfWork, uow), deliveries)


async def test_new_facts_carry_the_command_as_cause_and_index_the_order() -> None:
    uow, order_id = FakeUow(), "order-1"
    message = delivery("payment.authorize", authorize(order_id), order_id)
    await handle(uow, message)
    [fact] = uow.streams[derived_id(order_id, "payment")]
    assert (fact.type, fact.correlation_id, fact.causation_id) == ("payment.authorized", order_id, message.envelope.id)
    assert uow.enqueued == []  # publication of new facts is the event store's outbox job
    [(sql, args)] = uow.conn.executed
    assert "payment_by_order" in sql and args == (derived_id(order_id, "payment"), order_id)


async def test_the_limit_comes_from_settings() -> None:
    uow = FakeUow()
    await handle(uow, delivery("payment.authorize", {**authorize("o"), "amount_cents": 101}, "o"), limit_cents=100)
    [fact] = uow.streams[derived_id("o", "payment")]
    assert (fact.type, fact.data["reason"]) == ("payment.declined", "amount_over_limit")


async def test_a_duplicate_is_answered_with_the_recorded_envelope_unchanged() -> None:
    uow = FakeUow()
    await handle(uow, delivery("payment.authorize", authorize("o"), "o"))
    await handle(uow, delivery("payment.authorize", authorize("o"), "o"))
    [original] = uow.streams[derived_id("o", "payment")]
    assert uow.enqueued == [
        ("payment.events", original.stream_id, encode(event_to_cloudevent(original, SOURCE)))
    ]
    assert len(uow.conn.executed) == 1  # the order index is written once, at creation


async def test_a_refusal_appends_nothing_and_is_logged_with_the_correlation_id_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uow, order_id = FakeUow(), "order-refused"
    before = refused_count("payment", "payment.capture", "payment_not_found")
    capture = delivery("payment.capture", {"payment_id": derived_id(order_id, "payment"), "order_id": order_id}, order_id)
    with caplog.at_level(logging.WARNING, logger="services.participant"):
        await handle(uow, capture)
        assert refused_count("payment", "payment.capture", "payment_not_found") == before, "counted only on commit"
        uow.commit()
    assert uow.streams == {} and uow.enqueued == []
    assert refused_count("payment", "payment.capture", "payment_not_found") == before + 1
    [record] = [r for r in caplog.records if r.getMessage() == "command refused"]
    assert getattr(record, "correlation_id") == order_id
    assert getattr(record, "message_id") == capture.envelope.id
    assert getattr(record, "code") == "payment_not_found"


async def test_a_malformed_command_is_raised_for_the_dead_letter_queue() -> None:
    uow = FakeUow()
    with pytest.raises(InvalidCommand) as raised:
        await handle(uow, delivery("payment.authorize", {**authorize("o"), "currency": "euro"}, "o"))
    assert raised.value.field == "currency"
    with pytest.raises(InvalidCommand):
        await handle(uow, delivery("payment.teleport", authorize("o"), "o"))


async def test_a_lost_race_is_decided_again_on_the_new_state() -> None:
    uow = FakeUow()
    shipment_id = "ship-1"
    uow._record(shipment_id, [NewEvent("shipment.scheduled", {"shipment_id": shipment_id, "order_id": "o", "address": None})], "o", "c")
    # Another writer dispatches between our read and our append: we re-read and find it done.
    uow.rivals.append((shipment_id, NewEvent("shipment.dispatched", {"shipment_id": shipment_id, "order_id": "o"})))
    store = FakeStore(uow)
    outcome = await SHIPMENTS.execute_alone(cast(EventStore, store), DispatchShipment(shipment_id), causation_id="req-1")
    assert outcome.duplicate and outcome.state.version == 2
    assert store.transactions == 2  # the lost race was retried in a new transaction
    assert [e.type for e in uow.streams[shipment_id]] == ["shipment.scheduled", "shipment.dispatched"]


async def test_an_endless_race_gives_up_with_a_conflict() -> None:
    uow = FakeUow()
    uow._record("ship-2", [NewEvent("shipment.scheduled", {"shipment_id": "ship-2", "order_id": "o", "address": None})], "o", "c")
    uow.rivals = [("ship-2", NewEvent("shipment.noted", {}))] * CONFLICT_ATTEMPTS
    store = FakeStore(uow)
    with pytest.raises(ConcurrencyConflict):
        await SHIPMENTS.execute_alone(cast(EventStore, store), DispatchShipment("ship-2"), causation_id="req-2")
    assert store.transactions == CONFLICT_ATTEMPTS


async def test_http_commands_correlate_with_the_order_and_are_caused_by_the_request() -> None:
    uow = FakeUow()
    uow._record("ship-3", [NewEvent("shipment.scheduled", {"shipment_id": "ship-3", "order_id": "order-3", "address": None})], "order-3", "c")
    outcome = await SHIPMENTS.execute(cast(UnitOfWork, uow), DispatchShipment("ship-3"), causation_id="req-3")
    [fact] = outcome.appended
    assert (fact.type, fact.correlation_id, fact.causation_id) == ("shipment.dispatched", "order-3", "req-3")


async def test_loading_an_unknown_aggregate_is_not_found() -> None:
    class EmptyStore:
        async def read(self, stream_id: str) -> list[RecordedEvent]:
            return []

    with pytest.raises(NotFound) as raised:
        await PAYMENTS.load(cast(EventStore, EmptyStore()), "nope")
    assert raised.value.code == "payment_not_found"


def test_request_causation_id_keeps_a_sane_header_and_otherwise_mints_one() -> None:
    assert request_causation_id("req-42") == "req-42"
    for bad in (None, "", "x" * 129, "line\nbreak"):
        minted = request_causation_id(bad)
        assert str(uuid.UUID(minted)) == minted


def test_unserved_countries_are_parsed_from_a_comma_separated_setting() -> None:
    assert ShippingSettings(shipping_unserved_countries=" aq,NZ ,, ").unserved_countries == frozenset({"AQ", "NZ"})
    assert ShippingSettings(shipping_unserved_countries="").unserved_countries == frozenset()

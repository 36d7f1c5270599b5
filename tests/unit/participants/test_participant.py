"""The participants' service layer without infrastructure: an in-memory unit of work.

What is checked here is the glue around the pure domains: which outcome a command gets
(new facts, a re-answer with the recorded envelope, a logged and counted refusal, a poison
message), the causal ids the facts carry, the policies bound from settings, and deciding
again after a lost race.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from services.payment.app import create_app as create_payment_app
from services.payment.handlers import COMMAND_CONSUMER as PAYMENT_GROUP
from services.payment.handlers import command_handler, payments
from services.payment.settings import PaymentSettings
from services.shipping import handlers as shipping
from services.shipping.app import create_app as create_shipping_app
from services.shipping.domain import DispatchShipment
from services.shipping.settings import ShippingSettings
from shared.consumer import Delivery
from shared.contract import (
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    Address,
    AuthorizePayment,
    CapturePayment,
    Command,
    Envelope,
    Fact,
    PaymentAuthorized,
    PaymentDeclined,
    ScheduleShipment,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentScheduled,
    encode,
)
from shared.errors import InvalidCommand, NotFound
from shared.eventstore import ConcurrencyConflict, EventStore, IndexRows, Recorded, UnitOfWork
from shared.ids import current_context, derived_id
from shared.rest import request_causation_id

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SOURCE = "/services/payment"
ADDRESS = Address(name="Ada", line1="1 Main St", city="Paris", postal_code="75001", country="FR")


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

    def __init__(self, uow: FakeUow) -> None:
        self.uow = uow
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUow]:
        self.transactions += 1
        yield self.uow


class FakeUow:
    """Streams in a dict; `rivals` are facts another writer commits just before our append."""

    def __init__(self) -> None:
        self.conn = FakeConn()
        self.streams: dict[str, list[Recorded]] = {}
        self.enqueued: list[tuple[str, str, bytes]] = []
        self.rivals: list[tuple[str, Fact]] = []
        self.committed_callbacks: list[Callable[[], None]] = []
        self.indexed: list[IndexRows] = []  # lookup rows written with an append (IndexRows)

    async def read(self, stream_id: str, up_to_version: int | None = None) -> list[Recorded]:
        return list(self.streams.get(stream_id, []))

    async def read_many(self, stream_ids: Sequence[str]) -> dict[str, list[Recorded]]:
        return {stream_id: list(self.streams.get(stream_id, [])) for stream_id in stream_ids}

    async def append(
        self, stream_id: str, expected_version: int, facts: Sequence[Fact], *, index: IndexRows | None = None
    ) -> list[Recorded]:
        if self.rivals:
            rival_stream, rival = self.rivals.pop(0)
            self.record(rival_stream, [rival], "rival", "rival")
        if len(self.streams.get(stream_id, [])) != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version)  # nothing written, not the index either
        ctx = current_context()
        assert ctx is not None, "facts are only appended inside a causal context"
        if index is not None:
            self.indexed.append(index)
        return self.record(stream_id, facts, ctx.correlation_id, ctx.causation_id)

    def record(self, stream_id: str, facts: Sequence[Fact], correlation: str, causation: str) -> list[Recorded]:
        stream = self.streams.setdefault(stream_id, [])
        recorded: list[Recorded] = [
            Envelope(
                id=str(uuid.uuid4()),
                source=SOURCE,
                subject=stream_id,
                sequence=len(stream) + i,
                time=WHEN,
                correlation_id=correlation,
                causation_id=causation,
                data=fact,
            )
            for i, fact in enumerate(facts, start=1)
        ]
        stream.extend(recorded)
        return recorded

    async def enqueue(self, topic: str, key: str, value: bytes) -> None:
        self.enqueued.append((topic, key, value))

    async def republish(self, event: Recorded) -> None:
        assert event.data.TOPIC is not None
        await self.enqueue(event.data.TOPIC, event.subject, encode(event))

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.committed_callbacks.append(callback)

    def commit(self) -> None:
        """What the real unit of work does when its transaction commits."""
        for callback in self.committed_callbacks:
            callback()
        self.committed_callbacks.clear()


STORE = cast(EventStore, object())  # the consumer handler only uses the unit of work it is given


def refused_count(aggregate: str, command_type: str, code: str) -> float:
    labels = {"aggregate": aggregate, "type": command_type, "code": code}
    return REGISTRY.get_sample_value("commands_refused_total", labels) or 0.0


def delivery(command: Command, order_id: str) -> Delivery:
    envelope = Envelope(
        id=str(uuid.uuid4()),
        source="/services/order",
        subject=command.target_id,
        sequence=0,
        time=WHEN,
        data=command,
        correlation_id=order_id,
        causation_id="evt-1",
    )
    return Delivery(envelope, PAYMENT_COMMANDS, 0, 0)


def authorize(order_id: str, token: str = "tok_ok", amount_cents: int = 100, currency: str = "EUR") -> AuthorizePayment:
    return AuthorizePayment(
        payment_id=derived_id(order_id, "payment"),
        order_id=order_id,
        amount_cents=amount_cents,
        currency=currency,
        payment_token=token,
    )


async def handle(uow: FakeUow, *deliveries: Delivery, limit_cents: int = 1_000) -> None:
    aggregate = payments(PaymentSettings(payment_limit_cents=limit_cents))
    await command_handler(aggregate)(cast(UnitOfWork, uow), deliveries)


def shipments(conflict_attempts: int = 5) -> shipping.Shipments:
    return shipping.shipments(ShippingSettings(conflict_attempts=conflict_attempts))


def scheduled(uow: FakeUow, shipment_id: str, order_id: str = "o") -> None:
    uow.record(
        shipment_id, [ShipmentScheduled(shipment_id=shipment_id, order_id=order_id, address=ADDRESS)], order_id, "c"
    )


async def test_new_facts_carry_the_command_as_cause_and_index_the_order() -> None:
    uow, order_id = FakeUow(), "order-1"
    message = delivery(authorize(order_id), order_id)
    await handle(uow, message)
    [fact] = uow.streams[derived_id(order_id, "payment")]
    assert isinstance(fact.data, PaymentAuthorized)
    assert (fact.correlation_id, fact.causation_id) == (order_id, message.envelope.id)
    assert uow.enqueued == []  # publication of new facts is the event store's outbox job
    assert uow.conn.executed == [], "the order index is written by the append statement itself"
    assert uow.indexed == [IndexRows("payment_by_order", [(derived_id(order_id, "payment"), order_id)])]


async def test_the_limit_comes_from_settings() -> None:
    uow = FakeUow()
    await handle(uow, delivery(authorize("o", amount_cents=101), "o"), limit_cents=100)
    [fact] = uow.streams[derived_id("o", "payment")]
    assert isinstance(fact.data, PaymentDeclined) and fact.data.reason == "amount_over_limit"


async def test_a_duplicate_is_answered_with_the_recorded_envelope_unchanged() -> None:
    uow = FakeUow()
    await handle(uow, delivery(authorize("o"), "o"))
    await handle(uow, delivery(authorize("o"), "o"))
    [original] = uow.streams[derived_id("o", "payment")]
    assert uow.enqueued == [(PAYMENT_EVENTS, original.subject, encode(original))]
    assert len(uow.indexed) == 1  # the order index is written once, at creation


async def test_a_refusal_appends_nothing_and_is_logged_with_the_correlation_id_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uow, order_id = FakeUow(), "order-refused"
    before = refused_count("payment", CapturePayment.TYPE, "payment_not_found")
    capture = delivery(CapturePayment(payment_id=derived_id(order_id, "payment"), order_id=order_id), order_id)
    with caplog.at_level(logging.WARNING, logger="shared.aggregate"):
        await handle(uow, capture)
        assert refused_count("payment", CapturePayment.TYPE, "payment_not_found") == before, "counted only on commit"
        uow.commit()
    assert uow.streams == {} and uow.enqueued == []
    assert refused_count("payment", CapturePayment.TYPE, "payment_not_found") == before + 1
    [record] = [r for r in caplog.records if r.getMessage() == "command refused"]
    logged = vars(record)  # the `extra` fields of the log record
    assert (logged["correlation_id"], logged["message_id"], logged["code"]) == (
        order_id,
        capture.envelope.id,
        "payment_not_found",
    )


async def test_a_malformed_command_is_raised_for_the_dead_letter_queue() -> None:
    uow = FakeUow()
    with pytest.raises(InvalidCommand) as raised:
        await handle(uow, delivery(authorize("o", currency="euro"), "o"))
    assert raised.value.field == "currency"
    # A message of the contract that is not a payment command is poison for this consumer.
    schedule = ScheduleShipment(shipment_id=derived_id("o", "shipment"), order_id="o", address=ADDRESS)
    with pytest.raises(InvalidCommand) as raised:
        await handle(uow, delivery(schedule, "o"))
    assert raised.value.code == "unknown_command"
    assert uow.streams == {}


async def test_a_lost_race_is_decided_again_on_the_new_state() -> None:
    uow = FakeUow()
    shipment_id = "ship-1"
    scheduled(uow, shipment_id)
    # Another writer dispatches between our read and our append: we re-read and find it done.
    uow.rivals.append((shipment_id, ShipmentDispatched(shipment_id=shipment_id, order_id="o")))
    store = FakeStore(uow)
    outcome = await shipments().execute_alone(
        cast(EventStore, store), DispatchShipment(shipment_id), causation_id="req-1"
    )
    assert outcome.duplicate and outcome.state.version == 2
    assert store.transactions == 2  # the lost race was retried in a new transaction
    assert [type(e.data) for e in uow.streams[shipment_id]] == [ShipmentScheduled, ShipmentDispatched]


async def test_an_endless_race_gives_up_with_a_conflict_after_the_configured_attempts() -> None:
    uow = FakeUow()
    scheduled(uow, "ship-2")
    # Every attempt loses to a rival that moves the stream on (and leaves it SCHEDULED).
    rival = ShipmentScheduled(shipment_id="ship-2", order_id="o", address=ADDRESS)
    uow.rivals = [("ship-2", rival)] * 10
    store = FakeStore(uow)
    with pytest.raises(ConcurrencyConflict):
        await shipments(conflict_attempts=3).execute_alone(
            cast(EventStore, store), DispatchShipment("ship-2"), causation_id="req-2"
        )
    assert store.transactions == 3


async def test_http_commands_correlate_with_the_order_and_are_caused_by_the_request() -> None:
    uow = FakeUow()
    scheduled(uow, "ship-3", order_id="order-3")
    outcome = await shipments().execute(cast(UnitOfWork, uow), DispatchShipment("ship-3"), causation_id="req-3")
    [fact] = outcome.appended
    assert isinstance(fact.data, ShipmentDispatched)
    assert (fact.correlation_id, fact.causation_id) == ("order-3", "req-3")


async def test_loading_an_unknown_aggregate_is_not_found() -> None:
    class EmptyStore:
        async def read(self, stream_id: str) -> list[Recorded]:
            return []

    with pytest.raises(NotFound) as raised:
        await payments(PaymentSettings()).load(cast(EventStore, EmptyStore()), "nope")
    assert raised.value.code == "payment_not_found"


def test_request_causation_id_keeps_a_sane_header_and_otherwise_mints_one() -> None:
    assert request_causation_id("req-42") == "req-42"
    for bad in (None, "", "x" * 129, "line\nbreak"):
        minted = request_causation_id(bad)
        assert str(uuid.UUID(minted)) == minted


def test_unserved_countries_are_parsed_from_a_comma_separated_setting() -> None:
    assert ShippingSettings(shipping_unserved_countries=" aq,NZ ,, ").unserved_countries == frozenset({"AQ", "NZ"})
    assert ShippingSettings(shipping_unserved_countries="").unserved_countries == frozenset()


def test_the_consumer_groups_keep_their_names() -> None:
    assert PAYMENT_GROUP == "payment.commands"
    assert shipping.COMMAND_CONSUMER == "shipping.commands"


def operations(app: Any) -> dict[tuple[str, str], tuple[str, str, list[str]]]:
    """(path, method) → (operation id, summary, parameter names) of the aggregate's endpoints."""
    return {
        (path, method): (op["operationId"], op["summary"], [p["name"] for p in op.get("parameters", [])])
        for path, item in app.openapi()["paths"].items()
        if not path.startswith(("/health", "/metrics"))
        for method, op in item.items()
    }


def test_the_read_endpoints_of_both_participants_keep_their_documented_operations() -> None:
    """The read endpoints come from `shared.rest.add_reads`; clients and the API fuzzer rely on these."""
    assert operations(create_payment_app(PaymentSettings())) == {
        ("/payments/{payment_id}", "get"): (
            "get_payment_payments__payment_id__get",
            "A payment's current state",
            ["payment_id"],
        ),
        ("/payments", "get"): (
            "list_payments_payments_get",
            "The payments of an order (oldest first; empty if none)",
            ["order_id"],
        ),
        ("/payments/{payment_id}/events", "get"): (
            "get_payment_events_payments__payment_id__events_get",
            "A payment's facts in stream order, with their envelopes",
            ["payment_id"],
        ),
    }
    shipping_ops = operations(create_shipping_app(ShippingSettings()))
    assert shipping_ops == {
        ("/shipments/{shipment_id}", "get"): (
            "get_shipment_shipments__shipment_id__get",
            "A shipment's current state",
            ["shipment_id"],
        ),
        ("/shipments", "get"): (
            "list_shipments_shipments_get",
            "The shipments of an order (oldest first; empty if none)",
            ["order_id"],
        ),
        ("/shipments/{shipment_id}/events", "get"): (
            "get_shipment_events_shipments__shipment_id__events_get",
            "A shipment's facts in stream order, with their envelopes",
            ["shipment_id"],
        ),
        ("/shipments/{shipment_id}/dispatch", "post"): (
            "dispatch_shipment_shipments__shipment_id__dispatch_post",
            f"Hand the goods to the carrier: SCHEDULED → DISPATCHED (emits {ShipmentDispatched.TYPE})",
            ["shipment_id", "X-Request-ID"],
        ),
        ("/shipments/{shipment_id}/deliver", "post"): (
            "deliver_shipment_shipments__shipment_id__deliver_post",
            f"The carrier delivered: DISPATCHED → DELIVERED (emits {ShipmentDelivered.TYPE})",
            ["shipment_id", "X-Request-ID"],
        ),
    }

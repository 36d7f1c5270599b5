"""The saga's reply consumer handles a whole batch in one transaction: several replies about one
order decide in turn on the state the earlier ones left, and the deadline index follows."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from services.order import handlers, queries
from services.order.app import SCHEMA
from services.order.handlers import place_orders, placement
from services.order.views import PlaceOrderRequest
from shared.auth import Principal, Role
from shared.consumer import Delivery
from shared.contract import (
    PAYMENT_EVENTS,
    SHIPPING_EVENTS,
    Envelope,
    Fact,
    Message,
    Money,
    OrderPlaced,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentFact,
    ShipmentScheduled,
    decode,
    utc_now,
)
from shared.db import create_pool, migrate
from shared.eventstore import EventStore
from shared.ids import derived_id
from shared.keystore import Keystore
from tests.integration.order_support import ADDRESS, order_body, sealed

pytestmark = pytest.mark.integration

STAFF = Principal("staff", Role.STAFF)


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool, [SCHEMA])
    try:
        yield EventStore(pool, source="/services/order")
    finally:
        await pool.close()


def reply(order_id: str, kind: type[PaymentFact] | type[ShipmentScheduled], offset: int) -> Delivery:
    fact: Fact
    if issubclass(kind, PaymentFact):
        payment_id = derived_id(order_id, "payment")
        fact = kind(order_id=order_id, payment_id=payment_id, amount=Money(amount_cents=4950, currency="EUR"))
        topic, source, subject = PAYMENT_EVENTS, "/services/payment", payment_id
    else:
        shipment_id = derived_id(order_id, "shipment")
        fact = kind(order_id=order_id, shipment_id=shipment_id, address=sealed(ADDRESS))
        topic, source, subject = SHIPPING_EVENTS, "/services/shipping", shipment_id
    envelope: Envelope[Message] = Envelope(
        id=str(uuid.uuid4()),
        source=source,
        subject=subject,
        sequence=1,
        time=utc_now(),
        correlation_id=order_id,
        causation_id=order_id,
        data=fact,
    )
    return Delivery(envelope, topic, 0, offset)


async def test_three_replies_about_one_order_in_one_batch_confirm_it(store: EventStore) -> None:
    order_id = await _place(store)
    batch = [
        reply(order_id, PaymentAuthorized, 1),
        reply(str(uuid.uuid4()), PaymentAuthorized, 2),  # an order this service does not know
        reply(order_id, ShipmentScheduled, 3),
        reply(order_id, PaymentCaptured, 4),
    ]
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, batch)

    assert (await queries.get_order(store, order_id, None, STAFF)).status == "CONFIRMED"
    state, _ = await queries.get_saga(store, order_id, STAFF)
    async with store.pool.acquire() as conn:
        outbox = [decode(bytes(r["value"])) for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
        index = await conn.fetchrow("SELECT deadline, saga_version FROM saga_deadlines WHERE order_id = $1", order_id)
    assert [e.type for e in outbox] == [  # a transaction's commands are queued before its facts
        "payment.authorize",
        "order.placed",
        "shipment.schedule",
        "payment.capture",
        "order.confirmed",
    ]
    assert [e.causation_id for e in outbox if e.type == "payment.capture"] == [batch[2].envelope.id]
    assert index is not None and index["saga_version"] == state.version and index["deadline"] == state.deadline
    assert "payment.capture" not in state.awaiting


async def _place(store: EventStore) -> str:
    order_id = str(uuid.uuid4())
    command = PlaceOrderRequest.model_validate(order_body()).to_command(order_id)
    keystore = Keystore(os.environ["KEYSTORE_URL"], writer=True)  # the session's (tests/conftest.py)
    try:
        await place_orders(store, [placement(command, "req-1")], step_timeout_s=30, keystore=keystore)
    finally:
        await keystore.close()
    return order_id


def _count_reads(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the streams every read_many of `store` asks for."""
    reads: list[list[str]] = []
    original = store.read_many

    async def recording(stream_ids: Sequence[str], **kwargs: Any) -> dict[str, list[Any]]:
        reads.append(list(stream_ids))
        return await original(stream_ids, **kwargs)

    monkeypatch.setattr(store, "read_many", recording)
    return reads


async def test_the_memory_image_spares_the_read_while_the_saga_is_at_its_version(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await _place(store)
    placed, _ = await queries.get_saga(store, order_id, STAFF)
    assert handlers.saga_image(store).at_version(order_id, placed.version) is not None, "placement leaves its saga"
    handlers.saga_image(store).drop([order_id])  # as after a restart, or a placement by another replica
    reads = _count_reads(store, monkeypatch)
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, [reply(order_id, PaymentAuthorized, 1)])
    assert reads == [[order_id, f"saga-{order_id}"]], "a cold image reads the streams"
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, [reply(order_id, ShipmentScheduled, 2)])
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, [reply(order_id, PaymentCaptured, 3)])
    assert len(reads) == 1, "the image holds the saga at the version the index row says"
    assert (await queries.get_order(store, order_id, None, STAFF)).status == "CONFIRMED"
    folded, _ = await queries.get_saga(store, order_id, STAFF)
    held = handlers.saga_image(store).at_version(order_id, folded.version)
    assert held is not None and held[1] == folded, "the image is what folding the log gives"


async def test_a_saga_moved_elsewhere_is_read_again_never_decided_on_a_stale_image(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await _place(store)
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, [reply(order_id, PaymentAuthorized, 1)])
    stale = handlers.saga_image(store).at_version(order_id, (await queries.get_saga(store, order_id, STAFF))[0].version)
    assert stale is not None
    # The cancel endpoint moves the saga without the reply consumer (another path, or a replica).
    await handlers.cancel_order(store, order_id, causation_id="req-2", attempts=3)
    moved, _ = await queries.get_saga(store, order_id, STAFF)
    assert moved.version > stale[1].version
    reads = _count_reads(store, monkeypatch)
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, [reply(order_id, ShipmentScheduled, 2)])
    assert reads == [[order_id, f"saga-{order_id}"]], "the index row's version disagreed: read again"
    folded, _ = await queries.get_saga(store, order_id, STAFF)
    held = handlers.saga_image(store).at_version(order_id, folded.version)
    assert held is not None and held[1] == folded, "decided on the log, not on the stale entry"
    assert (await queries.get_order(store, order_id, None, STAFF)).status != "CONFIRMED", "cancelled, never confirmed"


async def test_placements_written_together_are_each_their_own_order_and_saga(store: EventStore) -> None:
    twice = f"cust-{uuid.uuid4().hex[:8]}"  # one customer placing two orders in the same batch
    bodies = [order_body(customer_id=twice), order_body(), order_body(customer_id=twice)]
    batch = [
        placement(PlaceOrderRequest.model_validate(body).to_command(str(uuid.uuid4())), f"req-{i}")
        for i, body in enumerate(bodies)
    ]
    keystore = Keystore(os.environ["KEYSTORE_URL"], writer=True)
    try:
        answers = await place_orders(store, batch, step_timeout_s=30, keystore=keystore)
    finally:
        await keystore.close()
    assert answers == [p.answer for p in batch]
    async with store.pool.acquire() as conn:
        outbox = [decode(bytes(r["value"])) for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
        indexed = {r["order_id"]: r["saga_version"] for r in await conn.fetch("SELECT * FROM saga_deadlines")}
    for p, body in zip(batch, bodies):
        order_id = p.command.order_id
        order = await queries.get_order(store, order_id, None, STAFF)
        assert (order.status, order.customer_id) == ("PENDING", body["customer_id"])
        saga_state, _ = await queries.get_saga(store, order_id, STAFF)
        assert indexed[order_id] == saga_state.version, "each saga has its deadline row"
        mine = [e for e in outbox if e.correlation_id == order_id]
        assert [e.type for e in mine] == ["payment.authorize", "order.placed"]
        assert {e.causation_id for e in mine} == {p.causation_id}, "each order carries its own request's id"
    keys = {e.data.shipping_address.name.split(".")[1] for e in outbox if isinstance(e.data, OrderPlaced)}
    assert len(keys) == 2, "one data key per customer, shared by the customer's orders"


async def test_the_deadline_index_is_updated_through_its_key_not_by_scanning_every_saga(store: EventStore) -> None:
    """`saga_deadlines` holds a row per saga ever placed; each reply batch updates a few. With a
    generic plan (a prepared statement run many times), the update must look the rows up by key:
    scanning the table made every batch slower with every saga placed."""
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO saga_deadlines (order_id, saga_version) SELECT 'o-' || n, 1 FROM generate_series(1, 3000) n"
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            "PREPARE index_deadlines(text[], timestamptz[], int[]) AS "
            + handlers._INDEX_DEADLINES_SQL.format("$1", "$2", "$3")
        )
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN EXECUTE index_deadlines(ARRAY['o-7', 'o-8'], ARRAY[now(), now()]::timestamptz[], ARRAY[2, 2])"
            )
        )
        await conn.execute("DEALLOCATE index_deadlines")
        await conn.execute("RESET plan_cache_mode")
        updated = await conn.execute(
            handlers._INDEX_DEADLINES_SQL.format("$1", "$2", "$3"), ["o-7", "o-8"], [utc_now(), None], [2, 3]
        )
    assert "Seq Scan on saga_deadlines" not in plan, plan
    assert "saga_deadlines_pkey" in plan, plan
    assert updated == "UPDATE 2"

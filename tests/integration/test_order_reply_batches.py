"""The saga's reply consumer handles a whole batch in one transaction: several replies about one
order decide in turn on the state the earlier ones left, and the deadline index follows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.order import handlers, queries
from services.order.app import SCHEMA
from services.order.handlers import place_order
from services.order.views import PlaceOrderRequest
from shared.auth import Principal, Role
from shared.consumer import Delivery
from shared.contract import (
    PAYMENT_EVENTS,
    SHIPPING_EVENTS,
    Address,
    Envelope,
    Fact,
    Message,
    Money,
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
from tests.integration.order_support import ADDRESS, order_body

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
        fact = kind(order_id=order_id, shipment_id=shipment_id, address=Address(**ADDRESS))
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
    order_id = str(uuid.uuid4())
    command = PlaceOrderRequest.model_validate(order_body()).to_command(order_id)
    await place_order(store, command, causation_id="req-1", step_timeout_s=30)
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

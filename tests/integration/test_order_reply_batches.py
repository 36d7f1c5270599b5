"""The saga's reply consumer handles a whole batch in one transaction: several replies about one
order decide in turn on the state the earlier ones left, and the deadline index follows."""
from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import pytest

from services.order import handlers
from services.order.app import SCHEMA
from services.order.domain.order import PlaceOrder
from services.order.handlers import place_order
from shared.consumer import Delivery
from shared.db import create_pool, migrate
from shared.eventstore import EventRoutes, EventStore
from shared.ids import derived_id
from shared.messages import Envelope, decode, utc_now
from tests.integration.order_support import order_body

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool, [SCHEMA])
    try:
        yield EventStore(pool, source="/services/order", routes=EventRoutes({"order.": handlers.ORDER_EVENTS}))
    finally:
        await pool.close()


def reply(order_id: str, event_type: str, offset: int, **data: Any) -> Delivery:
    if event_type.startswith("payment."):
        data |= {"payment_id": derived_id(order_id, "payment"), "amount_cents": 4950, "currency": "EUR"}
        topic, source = "payment.events", "/services/payment"
    else:
        data |= {"shipment_id": derived_id(order_id, "shipment")}
        topic, source = "shipping.events", "/services/shipping"
    envelope = Envelope(
        id=str(uuid.uuid4()), source=source, type=event_type, subject=order_id, time=utc_now(),
        data={"order_id": order_id, **data}, correlation_id=order_id, causation_id=order_id,
        sequence=1, schema_version=1,
    )
    return Delivery(envelope, topic, 0, offset)


async def test_three_replies_about_one_order_in_one_batch_confirm_it(store: EventStore) -> None:
    order_id = str(uuid.uuid4())
    command = PlaceOrder.from_body(order_id, order_body())
    await place_order(store, command, causation_id="req-1", step_timeout_s=30)
    batch = [
        reply(order_id, "payment.authorized", 1),
        reply(str(uuid.uuid4()), "payment.authorized", 2),  # an order this service does not know
        reply(order_id, "shipment.scheduled", 3),
        reply(order_id, "payment.captured", 4),
    ]
    async with store.transaction() as uow:
        await handlers.handle_replies(uow, batch)

    assert (await handlers.get_order(store, order_id)).status == "CONFIRMED"
    state, _ = await handlers.get_saga(store, order_id)
    async with store.pool.acquire() as conn:
        outbox = [decode(bytes(r["value"])) for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
        index = await conn.fetchrow("SELECT deadline, saga_version FROM saga_deadlines WHERE order_id = $1", order_id)
    assert [e.type for e in outbox] == [  # a transaction's commands are queued before its facts
        "payment.authorize", "order.placed", "shipment.schedule", "payment.capture", "order.confirmed",
    ]
    assert [e.causation_id for e in outbox if e.type == "payment.capture"] == [batch[2].envelope.id]
    assert index is not None and index["saga_version"] == state.version and index["deadline"] == state.deadline
    assert "payment.capture" not in state.awaiting

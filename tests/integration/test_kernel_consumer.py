"""Consumer runner against the real broker: one effect per message, poison to the DLQ.

Messages are contract messages encoded by the contract's codec; the handler sees their typed,
validated data. A message that does not keep the contract (bad data, an unknown type, a schema
version newer than this code knows) is dead-lettered by the runner without reaching the handler,
and the messages after it on its partition are handled as if it had not been there.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from infra.stack import LocalStack
from shared.batch_write import BatchWork, DeferredWrite
from shared.consumer import ConsumerRunner, Delivery
from shared.contract import (
    Envelope,
    Message,
    Money,
    OrderPlaced,
    PaymentCaptured,
    PaymentFact,
    PaymentVoided,
    dlq_topic,
    encode,
    utc_now,
)
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, UnitOfWork
from shared.kafka import make_consumer
from shared.relay import OutboxRelay
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import Seen, at_least, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

EFFECTS_DDL = "CREATE TABLE IF NOT EXISTS effects (message_id TEXT NOT NULL, n INT NOT NULL)"
REFUSED = "refused by the test handler"


@pytest.fixture
async def topic(new_topic: NewTopicFactory) -> str:
    return await new_topic("consume", partitions=3)


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool, [EFFECTS_DDL])
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


def fact(n: int, stream: str = "s", fail: bool = False) -> tuple[str, bytes]:
    """(key, value) of fact n of `stream`: a payment.captured of n cents, or a payment.voided the
    test handler refuses."""
    amount = Money(amount_cents=n, currency="EUR")
    data: PaymentFact = (
        PaymentVoided(order_id=stream, payment_id=stream, amount=amount, reason=REFUSED)
        if fail
        else PaymentCaptured(order_id=stream, payment_id=stream, amount=amount)
    )
    return stream, encode(wire(data, stream, n))


def wire(data: Message, subject: str, sequence: int) -> Envelope[Message]:
    return Envelope(
        id=str(uuid.uuid4()),
        source="/test",
        subject=subject,
        sequence=sequence,
        time=utc_now(),
        correlation_id=subject,
        causation_id=subject,
        data=data,
    )


def raw_cloudevent(data: dict[str, Any], *, type: str = PaymentCaptured.TYPE, schemaversion: str = "2") -> bytes:
    """A CloudEvents value written by hand, as a producer that does not keep the contract would."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/elsewhere",
            "type": type,
            "subject": "s",
            "time": utc_now().isoformat(),
            "sequence": "1",
            "schemaversion": schemaversion,
            "data": data,
        }
    )


async def record_effect(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
    """One `effects` row per message: written at once in a transaction, joined to the one
    statement when the runner tries the batch that way (shared/batch_write.py)."""
    rows = []
    for delivery in deliveries:
        data = delivery.envelope.data
        assert isinstance(data, PaymentFact), f"the runner handed over a {type(data).__name__}"
        if isinstance(data, PaymentVoided) and data.reason == REFUSED:
            raise ValueError(f"cannot handle n={data.amount.amount_cents}")
        rows.append((delivery.envelope.id, data.amount.amount_cents))
    if isinstance(uow, BatchWork):
        ids, amounts = [r[0] for r in rows], [r[1] for r in rows]
        uow.defer(DeferredWrite(_EFFECTS_INSERT, (ids, amounts), rows=len(rows)))
        return
    for message_id, n in rows:
        await uow.conn.execute("INSERT INTO effects VALUES ($1, $2)", message_id, n)


_EFFECTS_INSERT = "INSERT INTO effects SELECT * FROM unnest({}::text[], {}::int[]) RETURNING 1"


async def effects(store: EventStore) -> list[tuple[str, int]]:
    async with store.pool.acquire() as conn:
        return [(r["message_id"], r["n"]) for r in await conn.fetch("SELECT message_id, n FROM effects ORDER BY n")]


class Running:
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(runner.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture(params=[False, True], ids=["in-a-transaction", "one-statement-first"])
def one_statement(request: pytest.FixtureRequest) -> bool:
    """The runner's two ways of writing a batch: each test runs with both."""
    return bool(request.param)


def runner(
    store: EventStore,
    stack: LocalStack,
    topic: str,
    name: str = "c",
    group: str | None = None,
    *,
    one_statement: bool = False,
) -> ConsumerRunner:
    factory = None
    if group is not None:
        factory = lambda: make_consumer(stack.kafka_bootstrap, group_id=group, client_id=group)  # noqa: E731
    return ConsumerRunner(
        name=name,
        topics=[topic],
        store=store,
        bootstrap_servers=stack.kafka_bootstrap,
        handler=record_effect,
        consumer_factory=factory,
        one_statement=one_statement,
    )


async def dead_letters(store: EventStore, stack: LocalStack, dsn: str, topic: str, count: int) -> list[Seen]:
    """Publish the runner's outbox (where dead letters are queued) and read `<topic>.dlq`."""
    stop = asyncio.Event()
    relay = OutboxRelay(dsn, stack.kafka_bootstrap)
    relay_task = asyncio.create_task(relay.run(stop))
    try:
        dead = await read_topic(stack.kafka_bootstrap, dlq_topic(topic), until=at_least(count))
    finally:
        stop.set()
        await relay_task
    assert len(dead) == count, [d.value["dlqerror"] for d in dead]
    return sorted(dead, key=lambda s: int(s.value["dlqoffset"]))


def without_dlq(letter: dict[str, Any]) -> dict[str, Any]:
    """The original CloudEvent a dead letter holds: its attributes but the `dlq*` ones."""
    return {k: v for k, v in letter.items() if not k.startswith("dlq")}


async def inbox_outcomes(store: EventStore) -> list[str]:
    async with store.pool.acquire() as conn:
        return sorted(r["outcome"] for r in await conn.fetch("SELECT outcome FROM inbox"))


async def stored_position(store: EventStore, topic: str, name: str = "c") -> dict[int, int]:
    async with store.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_positions WHERE consumer = $1 AND topic = $2", name, topic
        )
    return {r["partition"]: r["next_offset"] for r in rows}


async def test_duplicate_and_replayed_deliveries_have_one_effect(
    store: EventStore, stack: LocalStack, topic: str, one_statement: bool
) -> None:
    messages = [fact(n, stream=f"s{n % 3}") for n in range(1, 31)]
    await produce(stack.kafka_bootstrap, topic, messages + messages[:10])  # the relay re-published ten
    first = Running(runner(store, stack, topic, one_statement=one_statement))
    await wait_for(lambda: first.runner.handled == 30)
    await first.close()
    assert (first.runner.one_statement_batches > 0) == one_statement
    # Mass redelivery: Kafka offsets and stored positions rewound, everything arrives again.
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM consumer_positions")
    replay = Running(runner(store, stack, topic, group=f"rewound-{uuid.uuid4().hex[:6]}", one_statement=one_statement))
    await wait_for(lambda: replay.runner.handled == 0 and replay.runner._consumer is not None)
    await produce(stack.kafka_bootstrap, topic, [fact(31)])
    await wait_for(lambda: replay.runner.handled == 1)
    await replay.close()
    done = await effects(store)
    assert sorted(n for _, n in done) == list(range(1, 32))
    assert len({m for m, _ in done}) == 31


async def test_poison_and_failing_messages_go_to_the_dlq_and_the_next_is_processed(
    store: EventStore, stack: LocalStack, topic: str, fresh_database: str, one_statement: bool
) -> None:
    await produce(
        stack.kafka_bootstrap,
        topic,
        [("s", b"\x00 definitely not json"), fact(1), fact(2, fail=True), fact(3)],
    )
    running = Running(runner(store, stack, topic, one_statement=one_statement))
    await wait_for(lambda: running.runner.handled == 2 and running.runner.dead_lettered == 2)
    await running.close()
    assert [n for _, n in await effects(store)] == [1, 3]
    poison, failed = await dead_letters(store, stack, fresh_database, topic, 2)
    assert "not a CloudEvents JSON object" in poison.value["dlqerror"]
    assert base64.b64decode(poison.value["data_base64"]) == b"\x00 definitely not json"
    assert poison.value["type"] == "dead_letter.undecodable"
    assert poison.value["id"] == f"{topic}:{poison.value['dlqpartition']}:{poison.value['dlqoffset']}"
    assert (poison.value["dlqattempts"], failed.value["dlqattempts"]) == ("1", "3")
    assert "cannot handle n=2" in failed.value["dlqerror"]
    assert failed.value["dlqtopic"] == topic
    assert failed.value["data"]["amount"]["amount_cents"] == 2, "the original's data, as it was"
    assert failed.value["type"] == PaymentVoided.TYPE and failed.value["source"] == "/test"
    assert failed.value["dlqfirstfailure"] <= failed.value["dlqlastfailure"]
    assert await inbox_outcomes(store) == ["dead_lettered", "dead_lettered", "handled", "handled"]


async def test_data_that_breaks_its_schema_is_dead_lettered_with_the_validation_error_and_nothing_stalls(
    store: EventStore, stack: LocalStack, topic: str, fresh_database: str
) -> None:
    amount_as_text = raw_cloudevent(
        {"order_id": "s", "payment_id": "s", "amount": {"amount_cents": "1250", "currency": "EUR"}}
    )
    no_quantity = raw_cloudevent(
        {
            "order_id": "s",
            "customer_id": "c",
            "currency": "EUR",
            "total_cents": 0,
            "items": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 100}],
            "shipping_address": {
                "name": "A",
                "line1": "1 St",
                "city": "Paris",
                "postal_code": "75001",
                "country": "FR",
            },
        },
        type=OrderPlaced.TYPE,
        schemaversion="1",
    )
    # One key, so one partition: the bad messages sit between valid ones, in this order.
    await produce(
        stack.kafka_bootstrap,
        topic,
        [
            fact(1),
            ("s", amount_as_text),
            fact(2),
            ("s", no_quantity),
            fact(3),
            fact(4),
        ],
    )
    running = Running(runner(store, stack, topic))
    await wait_for(lambda: running.runner.handled == 4 and running.runner.dead_lettered == 2)
    assert [n for _, n in await effects(store)] == [1, 2, 3, 4], "every valid message after a bad one was handled"
    [(partition, position)] = (await stored_position(store, topic)).items()
    assert position == 6, "the stored position moved past all six"
    await produce(stack.kafka_bootstrap, topic, [fact(5)])  # the partition is not stalled behind them
    await wait_for(lambda: running.runner.handled == 5)
    await running.close()
    assert (await stored_position(store, topic))[partition] == 7
    text, quantity = await dead_letters(store, stack, fresh_database, topic, 2)
    assert "payment.captured v2 data does not match its schema" in text.value["dlqerror"]
    assert "Expected `int`, got `str` - at `$.amount.amount_cents`" in text.value["dlqerror"]
    assert without_dlq(text.value) == orjson.loads(amount_as_text), "the original CloudEvent, attributes and data"
    assert "order.placed v1 data does not match its schema" in quantity.value["dlqerror"]
    assert "Expected `int` >= 1 - at `$.items[0].quantity`" in quantity.value["dlqerror"]
    assert (text.value["dlqoffset"], quantity.value["dlqoffset"]) == ("1", "3")
    assert text.value["dlqconsumer"] == "c" and text.key == "s"
    assert await inbox_outcomes(store) == ["dead_lettered"] * 2 + ["handled"] * 5


async def test_an_unknown_type_and_a_newer_schema_version_are_dead_lettered_too(
    store: EventStore, stack: LocalStack, topic: str, fresh_database: str
) -> None:
    valid_data = {"order_id": "s", "payment_id": "s", "amount": {"amount_cents": 9, "currency": "EUR"}}
    unknown = raw_cloudevent({"order_id": "s"}, type="payment.teleported")
    newer = raw_cloudevent({**valid_data, "amount_minor": 9}, schemaversion="3")
    await produce(stack.kafka_bootstrap, topic, [fact(1), ("s", unknown), ("s", newer), fact(2)])
    running = Running(runner(store, stack, topic, one_statement=one_statement))
    await wait_for(lambda: running.runner.handled == 2 and running.runner.dead_lettered == 2)
    await running.close()
    assert [n for _, n in await effects(store)] == [1, 2]
    assert sum((await stored_position(store, topic)).values()) == 4
    unknown_letter, newer_letter = await dead_letters(store, stack, fresh_database, topic, 2)
    assert "unknown message type 'payment.teleported'" in unknown_letter.value["dlqerror"]
    assert "payment.captured has no schema version 3 (current: 2)" in newer_letter.value["dlqerror"]
    assert without_dlq(newer_letter.value) == orjson.loads(newer)


async def test_two_replicas_in_one_group_share_the_work_once_through_rebalances(
    store: EventStore, stack: LocalStack, topic: str, one_statement: bool
) -> None:
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(1, 201)])
    a = Running(runner(store, stack, topic, name="shared-group", one_statement=one_statement))
    await wait_for(lambda: a.runner.handled > 0)
    b = Running(
        runner(store, stack, topic, name="shared-group", one_statement=one_statement)
    )  # joins: a rebalance mid-stream
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(201, 401)])
    await wait_for(lambda: a.runner.handled + b.runner.handled >= 400, timeout_s=90)
    await a.close()  # leaves: another rebalance, b takes every partition
    await produce(stack.kafka_bootstrap, topic, [fact(n, stream=f"s{n % 7}") for n in range(401, 451)])
    await wait_for(lambda: a.runner.handled + b.runner.handled >= 450, timeout_s=90)
    await b.close()
    assert sorted(n for _, n in await effects(store)) == list(range(1, 451))
    assert a.runner.handled + b.runner.handled == 450


async def test_one_poll_across_partitions_is_one_transaction_and_a_failure_isolates_only_its_message(
    store: EventStore, stack: LocalStack, topic: str, one_statement: bool
) -> None:
    streams = [f"k{i}" for i in range(12)]  # enough keys to land on all 3 partitions
    messages = [fact(n, stream=s, fail=(s == "k5" and n == 2)) for s in streams for n in (1, 2)]
    await produce(stack.kafka_bootstrap, topic, messages)
    batches: list[set[int]] = []

    async def handler(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        batches.append({d.partition for d in deliveries})
        await record_effect(uow, deliveries)

    consumer = ConsumerRunner(
        name="c",
        topics=[topic],
        store=store,
        bootstrap_servers=stack.kafka_bootstrap,
        handler=handler,
        one_statement=one_statement,
    )
    running = Running(consumer)
    await wait_for(lambda: consumer.handled == len(messages) - 1 and consumer.dead_lettered == 1)
    await running.close()
    assert max(len(partitions) for partitions in batches) > 1, "a poll's partitions share one handler call"
    assert len(await effects(store)) == len(messages) - 1
    positions = await stored_position(store, topic)
    assert len(positions) == 3
    assert sum(positions.values()) == len(messages), "every partition's position was stored"


async def test_a_kafka_client_whose_fetcher_died_is_replaced_and_consuming_goes_on(
    store: EventStore, stack: LocalStack, topic: str
) -> None:
    """aiokafka's fetcher task can die on a reset connection (uvloop raises RuntimeError) and is
    never restarted: `getmany` then returns nothing for ever. The runner must notice and start a
    fresh client, or a reply consumer stops for good (chaos's kafka-reset found sagas waiting)."""
    running = Running(runner(store, stack, topic))
    try:
        await produce(stack.kafka_bootstrap, topic, [fact(1)])
        await wait_for(lambda: running.runner.handled == 1)
        wedged = running.runner._consumer
        assert wedged is not None
        fetching = wedged._fetcher._fetch_task
        fetching.cancel()  # the routine returns: done, as a transport error leaves it, never restarted
        await wait_for(fetching.done)
        # A fetch already in flight may still bring one more message; none is fetched after it.
        await produce(stack.kafka_bootstrap, topic, [fact(2)])
        await wait_for(lambda: running.runner.handled == 2)
        await produce(stack.kafka_bootstrap, topic, [fact(3)])
        await wait_for(lambda: running.runner.handled == 3)
        assert running.runner._consumer is not wedged, "a fresh client fetched the third message"
    finally:
        await running.close()
    assert [n for _, n in await effects(store)] == [1, 2, 3]

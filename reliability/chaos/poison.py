"""Poison messages and Kafka offsets: what the `poison` and `rewind-offsets` faults write to Kafka,
and who must dead-letter what."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from reliability.audit import read_topics, topic_partitions
from reliability.chaos.config import PAYMENT_CONSUMER, SAGA_CONSUMER, SHIPPING_CONSUMER
from shared.contract import (
    COMMAND_TOPICS,
    EVENT_TOPICS,
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    SHIPPING_EVENTS,
    CapturePayment,
    Command,
    DeadLetterFormatError,
    Message,
    OrderConfirmed,
    PaymentCaptured,
    ScheduleShipment,
    ShipmentDispatched,
    dlq_topic,
    read_dead_letter,
    utc_now,
)

POISONED_TOPICS = (*EVENT_TOPICS, *COMMAND_TOPICS)
#: The message each topic's bad-data poison pretends to be.
POSING_AS: Mapping[str, type[Message]] = {
    ORDER_EVENTS: OrderConfirmed,
    PAYMENT_EVENTS: PaymentCaptured,
    SHIPPING_EVENTS: ShipmentDispatched,
    PAYMENT_COMMANDS: CapturePayment,
    SHIPPING_COMMANDS: ScheduleShipment,
}
POISON_SOURCE = "/chaos/poison"


@dataclass(frozen=True)
class Poison:
    kind: str  # garbage | bad-data
    topic: str
    partition: int
    offset: int


def expected_dead_letterers(query_consumer: str) -> dict[str, set[str]]:
    """Every consumer group that reads each topic (garbage bytes are poison to all of them)."""
    return {
        ORDER_EVENTS: {query_consumer},
        PAYMENT_EVENTS: {SAGA_CONSUMER, query_consumer},
        SHIPPING_EVENTS: {SAGA_CONSUMER, query_consumer},
        PAYMENT_COMMANDS: {PAYMENT_CONSUMER},
        SHIPPING_COMMANDS: {SHIPPING_CONSUMER},
    }


def expected_bad_data(topic: str, query_consumer: str) -> set[str]:
    """Who must dead-letter the well-formed-but-bad CloudEvent of `poison_document`.

    Commands: the participant (a command it cannot parse). Facts: the query views (a fact
    that names no order cannot be placed). The saga is not required to: it only reads facts
    about orders it knows (topics are shared).
    """
    if topic == PAYMENT_COMMANDS:
        return {PAYMENT_CONSUMER}
    if topic == SHIPPING_COMMANDS:
        return {SHIPPING_CONSUMER}
    return {query_consumer}


def poison_document(topic: str) -> dict[str, Any]:
    """A well-formed CloudEvent whose data breaks the contract of the message it claims to be.

    Built by hand on purpose: the contract's codec refuses to write such a thing."""
    posing_as = POSING_AS[topic]
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": POISON_SOURCE,
        "type": posing_as.TYPE,
        "subject": f"poison-{uuid.uuid4().hex[:8]}",
        "time": utc_now().isoformat(),
        "datacontenttype": "application/json",
        "sequence": "0" if issubclass(posing_as, Command) else "1",
        "schemaversion": str(posing_as.VERSION),
        # commands: no payment_id / shipment_id / address; facts: no order_id, no correlation id
        "data": {"poison": True, "amount_cents": "not a number"},
    }


async def inject_poison(bootstrap: str, topics: Sequence[str] = POISONED_TOPICS) -> list[Poison]:
    """Garbage bytes and a bad-data CloudEvent into each topic, under one fresh key per topic."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    injected: list[Poison] = []
    try:
        for topic in topics:
            key = f"poison-{uuid.uuid4().hex[:8]}".encode()
            garbage = b"\xff\xfe\x00 not a cloudevent {" + os.urandom(16)
            for kind, value in (("garbage", garbage), ("bad-data", orjson.dumps(poison_document(topic)))):
                meta = await producer.send_and_wait(topic, value, key=key)
                injected.append(Poison(kind, topic, meta.partition, meta.offset))
    finally:
        await producer.stop()
    return injected


async def dead_lettered_by(bootstrap: str) -> dict[tuple[str, int, int], set[str]]:
    """(origin topic, partition, offset) → the consumers that dead-lettered that message."""
    out: dict[tuple[str, int, int], set[str]] = {}
    dlqs = [dlq_topic(t) for t in POISONED_TOPICS]
    for records in (await read_topics(bootstrap, dlqs)).values():
        for r in records:
            try:
                letter = read_dead_letter(r.value)
            except DeadLetterFormatError:
                continue
            out.setdefault(letter.origin, set()).add(letter.dlqconsumer)
    return out


async def commit_offsets_to_zero(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Commit offset 0 on every partition of `topics` for an (idle) consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    counts = await topic_partitions(bootstrap, topics)
    tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    return len(tps)

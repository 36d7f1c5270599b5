"""The dead-letter topics: reading them without joining a consumer group, and resubmitting one.

Shared by the operator CLI (`python -m infra dlq`) and the query service's operations API
(`GET /admin/dlq`, `POST /admin/dlq/replay`): both list every record of the DLQ topics up to
their current ends with a consumer in no group, so listing never commits or moves anyone's
offsets, and replay the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contract import DeadLetter, DeadLetterFormatError, dlq_topic, original_value, read_dead_letter
from shared.contract.topics import DLQ_SUFFIX
from shared.kafka import make_producer, partition_counts

READ_TIMEOUT_S = 60.0


class DlqError(Exception):
    """What was asked for cannot be done (unknown topic or id, or reading took too long)."""


class DeadLetterNotFound(DlqError):
    """No dead letter of that id in that DLQ topic."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of a dead-letter topic and what it says (None: not a dead letter at all)."""

    dlq: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    letter: DeadLetter | None

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"dlq": self.dlq, "partition": self.partition, "offset": self.offset}
        row["key"] = self.key.decode(errors="replace") if self.key else None
        if self.letter is None:
            return row | {"error": "not a dead letter"}
        letter = self.letter
        topic, partition, offset = letter.origin
        return row | {
            "id": letter.id,
            "type": letter.type,
            "source": letter.source,
            "subject": letter.subject,
            "consumer": letter.dlqconsumer,
            "attempts": letter.attempts,
            "error": letter.dlqerror,
            "first_failure": letter.dlqfirstfailure,
            "last_failure": letter.dlqlastfailure,
            "origin": {"topic": topic, "partition": partition, "offset": offset},
        }


def dlq_of(topic: str) -> str:
    """The dead-letter topic named by `topic`, itself or the topic whose DLQ it is."""
    return topic if topic.endswith(DLQ_SUFFIX) else dlq_topic(topic)


async def read_dead_letters(
    bootstrap: str, dlqs: Sequence[str], *, timeout_s: float = READ_TIMEOUT_S
) -> list[DeadLetterRecord]:
    """Every record of `dlqs` up to their current ends, in topic, partition, offset order.
    Raises DlqError for a topic that does not exist."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: nothing is committed, nobody's offsets move
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    partitions = await partition_counts(bootstrap, dlqs, client_id="dlq-reader")
    missing = [t for t in dlqs if t not in partitions]
    if missing:
        raise DlqError(f"no such topic: {', '.join(missing)}")
    tps = [TopicPartition(t, p) for t in dlqs for p in range(partitions[t])]
    await consumer.start()
    try:
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        out: list[DeadLetterRecord] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise DlqError(f"reading the dead letters took longer than {timeout_s:.0f}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                out += [_record(tp, r.offset, r.key, r.value) for r in records if r.offset < ends[tp]]
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.dlq, r.partition, r.offset))


def _record(tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> DeadLetterRecord:
    try:
        letter: DeadLetter | None = read_dead_letter(value)
    except DeadLetterFormatError:
        letter = None
    return DeadLetterRecord(tp.topic, tp.partition, offset, key, value, letter)


@dataclass(frozen=True, slots=True)
class Replayed:
    """Where the original went."""

    message_id: str
    message_type: str
    dlq: str
    dlq_offset: int
    topic: str
    partition: int
    offset: int


async def replay(
    bootstrap: str, topic: str, message_id: str, *, timeout_s: float = READ_TIMEOUT_S, client_id: str = "dlq-replay"
) -> Replayed:
    """Produce the original of the dead letter `message_id` of `topic` (a DLQ or its source
    topic) to the original topic, with the original key. The latest dead letter of that id is
    used: a message dead-lettered by several consumers, or more than once, is the same original."""
    dlq = dlq_of(topic)
    found = [r for r in await read_dead_letters(bootstrap, [dlq], timeout_s=timeout_s) if r.letter is not None]
    matching = [r for r in found if r.letter is not None and r.letter.id == message_id]
    if not matching:
        raise DeadLetterNotFound(f"no dead letter with id {message_id!r} in {dlq} ({len(found)} dead letters there)")
    record = matching[-1]
    letter = record.letter
    assert letter is not None
    value = original_value(record.value)
    producer = make_producer(bootstrap, client_id=client_id)
    await producer.start()
    try:
        meta = await producer.send_and_wait(letter.dlqtopic, value, key=record.key or None)
    finally:
        await producer.stop()
    return Replayed(letter.id, letter.type, dlq, record.offset, letter.dlqtopic, meta.partition, meta.offset)

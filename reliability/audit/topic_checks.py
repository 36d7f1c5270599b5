"""The checks of the Kafka topics against the logs: each event topic holds exactly its log's
published facts, each command topic exactly the commands the sagas recorded, and no real
message sits in a dead-letter topic.

Every record is decoded with the contract's codec (older schema versions upcast). A record that
does not decode, or that another `source` wrote (e.g. the poison `make chaos` injects), is
counted as foreign, not a violation: consumers must survive it, and that is the DLQ's business.

Duplicates on a topic are legal: the relay re-publishes after a crash between publish and
delete, and participants re-answer a duplicate command with the recorded fact (same id).
Consumers are idempotent by message id, so what one observes is the first occurrence of each
id: the checks are "the set of ids on the topic equals the set in the log, and first
occurrences per key are in stream-version order"; duplicates are only counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import msgspec

from reliability.audit.model import Audit
from reliability.audit.snapshot import TopicRecord, source_of
from shared.contract import (
    COMMAND_TOPICS,
    EVENT_TOPICS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    SHIPPING_EVENTS,
    DeadLetterFormatError,
    Envelope,
    Message,
    MessageFormatError,
    SagaStepRequested,
    UnknownMessageType,
    decode,
    dlq_topic,
    message_class,
    original_value,
)
from shared.eventstore import Recorded

#: The log whose facts each event topic carries.
LOG_OF_TOPIC: Mapping[str, str] = {ORDER_EVENTS: "order", PAYMENT_EVENTS: "payment", SHIPPING_EVENTS: "shipping"}
#: The saga, in the order service, sends every command.
COMMAND_SOURCE = source_of("order")

_Occurrence = tuple[int, int, str]  # partition, offset, message id


def decoded(record: TopicRecord, source: str) -> Envelope[Message] | None:
    """The record as a contract message from `source`; None if it is foreign."""
    try:
        envelope = decode(record.value)
    except MessageFormatError:
        return None
    return envelope if envelope.source == source else None


def _records(audit: Audit, topic: str) -> list[TopicRecord]:
    assert audit.snapshot.topics is not None
    return sorted(audit.snapshot.topics.get(topic, []), key=lambda r: (r.partition, r.offset))


def check_event_topics(audit: Audit) -> None:
    duplicates: dict[str, int] = audit.report.info["topic_duplicates"]
    foreign: dict[str, int] = audit.report.info["foreign_messages"]
    for topic in EVENT_TOPICS:
        log = LOG_OF_TOPIC[topic]
        source = source_of(log)
        expected = {e.id: e for e in audit.snapshot.logs.get(log, []) if e.data.TOPIC == topic}
        seen: set[str] = set()
        first: dict[str, list[_Occurrence]] = defaultdict(list)  # key → first occurrences
        partitions_of_key: dict[str, set[int]] = defaultdict(set)
        dup = foreign_n = 0
        for r in _records(audit, topic):
            message = decoded(r, source)
            if message is None:
                foreign_n += 1
                continue
            key = r.key or message.subject
            partitions_of_key[key].add(r.partition)
            if message.id in seen:
                dup += 1
                continue
            seen.add(message.id)
            stored = expected.get(message.id)
            if stored is None and message.id in audit.snapshot.late_ids:
                continue  # appended after the logs were read
            if stored is None:
                audit.add(
                    "phantom_message",
                    message.data.order_id,
                    f"{topic} p{r.partition}@{r.offset}: {message.type} {message.id} is in no log",
                )
                continue
            if (
                message.type != stored.type
                or message.subject != stored.subject
                or message.sequence != stored.sequence
                or key != stored.subject
            ):
                audit.add(
                    "message_mismatch",
                    stored.data.order_id,
                    f"{topic} p{r.partition}@{r.offset}: {message.type}/{message.subject}/{message.sequence} "
                    f"key {key} ≠ stored {stored.type}/{stored.subject}/{stored.sequence}",
                )
            first[key].append((r.partition, r.offset, message.id))
        for key, parts in partitions_of_key.items():
            if len(parts) > 1:
                audit.add("key_split", None, f"{topic}: key {key} is in partitions {sorted(parts)}")
        for key, occurrences in first.items():
            versions = [expected[i].sequence for _, _, i in sorted(occurrences) if i in expected]
            if versions != sorted(versions):
                head = expected.get(occurrences[0][2])
                audit.add(
                    "out_of_order",
                    head.data.order_id if head else None,
                    f"{topic}: key {key} first occurrences in versions {versions[:20]}",
                )
        for fact_id, e in expected.items():
            if fact_id not in seen and not _lagging(audit, e):
                backlog = audit.snapshot.outbox_backlog.get(log, 0)
                audit.add(
                    "unpublished",
                    e.data.order_id,
                    f"{e.type} {e.subject} v{e.sequence} ({fact_id}) is not on {topic}"
                    + (f" (outbox backlog {backlog})" if backlog else ""),
                )
        duplicates[topic] = dup
        foreign[topic] = foreign_n


def _lagging(audit: Audit, e: Recorded) -> bool:
    """Too recent to be on a topic yet (or its order is still active)."""
    return e.time > audit.cutoff or e.data.order_id in audit.fresh


def sent_commands(audit: Audit) -> dict[str, dict[str, tuple[Recorded, SagaStepRequested]]]:
    """Command topic → command id → the saga fact that recorded sending it."""
    expected: dict[str, dict[str, tuple[Recorded, SagaStepRequested]]] = {t: {} for t in COMMAND_TOPICS}
    for saga in audit.side.sagas.values():
        for e in saga.facts:
            if isinstance(e.data, SagaStepRequested):
                try:
                    topic = message_class(e.data.command_type).TOPIC
                except UnknownMessageType:
                    continue
                if topic in expected:
                    expected[topic][e.data.command_id] = (e, e.data)
    return expected


def check_command_topics(audit: Audit) -> None:
    duplicates: dict[str, int] = audit.report.info["topic_duplicates"]
    foreign: dict[str, int] = audit.report.info["foreign_messages"]
    expected = sent_commands(audit)
    for topic in COMMAND_TOPICS:
        wanted = expected[topic]
        seen: set[str] = set()
        first: dict[str, list[_Occurrence]] = defaultdict(list)
        dup = foreign_n = 0
        for r in _records(audit, topic):
            message = decoded(r, COMMAND_SOURCE)
            if message is None:
                foreign_n += 1
                continue
            if message.id in seen:
                dup += 1
                continue
            seen.add(message.id)
            if message.id not in wanted and message.id in audit.snapshot.late_ids:
                continue  # sent after the logs were read
            if message.id not in wanted:
                audit.add(
                    "phantom_command",
                    message.data.order_id,
                    f"{topic} p{r.partition}@{r.offset}: {message.type} {message.id} is in no saga",
                )
                continue
            first[r.key or message.subject].append((r.partition, r.offset, message.id))
        for key, occurrences in first.items():
            versions = [wanted[i][0].sequence for _, _, i in sorted(occurrences)]
            if versions != sorted(versions):
                audit.add(
                    "out_of_order_command",
                    wanted[occurrences[0][2]][0].data.order_id,
                    f"{topic}: key {key} first occurrences in saga versions {versions[:20]}",
                )
        for command_id, (e, step) in wanted.items():
            if command_id not in seen and not _lagging(audit, e):
                audit.add("unpublished_command", e.data.order_id, f"{step.command_type} {command_id} is not on {topic}")
        duplicates[topic] = dup
        foreign[topic] = foreign_n


def check_dlqs(audit: Audit) -> None:
    topics = audit.snapshot.topics
    assert topics is not None
    known = {e.id for facts in audit.snapshot.logs.values() for e in facts}
    for sent in sent_commands(audit).values():
        known |= set(sent)
    counts: dict[str, int] = {}
    for topic in (*EVENT_TOPICS, *COMMAND_TOPICS):
        dlq = dlq_topic(topic)
        records = topics.get(dlq, [])
        counts[dlq] = len(records)
        for r in records:
            original = dead_lettered(r)
            if original is not None and original[0] in known:
                message_id, message_type, order_id = original
                audit.add(
                    "dead_lettered_real_message",
                    order_id,
                    f"{dlq}@{r.offset}: real {message_type} {message_id} was dead-lettered",
                )
    audit.report.info["dlq"] = counts


def dead_lettered(record: TopicRecord) -> tuple[str, str, str | None] | None:
    """(id, type, order id) of the message a dead-letter entry carries, if it carries one.

    A message is dead-lettered precisely when a consumer could not use it, possibly because it
    does not keep the contract; it still names its id, so it is read leniently when the codec
    refuses it. The original is the dead letter without its `dlq*` attributes (or the bytes of
    an undecodable one); a version 1 dead letter (plain JSON) is read too.
    """
    try:
        raw = original_value(record.value)
    except DeadLetterFormatError:
        return None
    if raw is None:
        return None
    try:
        envelope = decode(raw)
        return envelope.id, envelope.type, envelope.data.order_id
    except MessageFormatError:
        pass
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict) or "id" not in doc:
        return None
    data = doc.get("data")
    order_id = data.get("order_id") if isinstance(data, dict) else None
    if not isinstance(order_id, str):
        order_id = str(doc["correlationid"]) if doc.get("correlationid") else None
    return str(doc["id"]), str(doc.get("type")), order_id

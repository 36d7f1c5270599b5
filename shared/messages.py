"""Message envelopes: facts (events) and intents (commands), and their CloudEvents form.

An event is an immutable fact about one stream; a command is a directed intent for one
service. Both travel as CloudEvents 1.0 structured JSON so any consumer can read them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

CLOUDEVENTS_SPEC_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"


class MessageFormatError(ValueError):
    """A message on the wire is not a valid envelope (a poison message)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a pure `decide` function produces, before the store gives it an identity."""

    type: str
    data: Mapping[str, Any]
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored in a stream's log: the envelope of SPEC §3."""

    event_id: uuid.UUID
    type: str
    stream_id: str
    version: int
    schema_version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Command:
    """An intent directed at one service; `target_id` is the aggregate it addresses."""

    type: str
    target_id: str
    data: Mapping[str, Any]
    command_id: uuid.UUID = field(default_factory=uuid.uuid4)
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """Any message read from Kafka, events and commands alike, in CloudEvents terms."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: Mapping[str, Any]
    correlation_id: str
    causation_id: str
    sequence: int
    schema_version: int = 1

    @property
    def is_command(self) -> bool:
        return self.sequence == 0

    def as_recorded_event(self) -> RecordedEvent:
        return RecordedEvent(
            event_id=uuid.UUID(self.id),
            type=self.type,
            stream_id=self.subject,
            version=self.sequence,
            schema_version=self.schema_version,
            occurred_at=self.time,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            data=self.data,
        )


def event_to_cloudevent(event: RecordedEvent, source: str) -> dict[str, Any]:
    return {
        "specversion": CLOUDEVENTS_SPEC_VERSION,
        "id": str(event.event_id),
        "source": source,
        "type": event.type,
        "subject": event.stream_id,
        "time": event.occurred_at.isoformat(),
        "datacontenttype": JSON_CONTENT_TYPE,
        "correlationid": event.correlation_id,
        "causationid": event.causation_id,
        "sequence": str(event.version),
        "schemaversion": str(event.schema_version),
        "data": dict(event.data),
    }


def command_to_cloudevent(
    command: Command, source: str, correlation_id: str, causation_id: str, time: datetime | None = None
) -> dict[str, Any]:
    return {
        "specversion": CLOUDEVENTS_SPEC_VERSION,
        "id": str(command.command_id),
        "source": source,
        "type": command.type,
        "subject": command.target_id,
        "time": (time or utc_now()).isoformat(),
        "datacontenttype": JSON_CONTENT_TYPE,
        "correlationid": correlation_id,
        "causationid": causation_id,
        "sequence": "0",
        "schemaversion": str(command.schema_version),
        "data": dict(command.data),
    }


def encode(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document)


_REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "data")


def decode(raw: bytes | None) -> Envelope:
    """Parse a CloudEvents JSON value; raise MessageFormatError for anything else."""
    if raw is None:
        raise MessageFormatError("empty message value")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageFormatError(f"value is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MessageFormatError("value is not a JSON object")
    missing = [name for name in _REQUIRED if name not in doc]
    if missing:
        raise MessageFormatError(f"missing CloudEvents attributes: {', '.join(missing)}")
    if doc["specversion"] != CLOUDEVENTS_SPEC_VERSION:
        raise MessageFormatError(f"unsupported specversion {doc['specversion']!r}")
    if not isinstance(doc["data"], dict):
        raise MessageFormatError("data is not a JSON object")
    try:
        return Envelope(
            id=str(doc["id"]),
            source=str(doc["source"]),
            type=str(doc["type"]),
            subject=str(doc["subject"]),
            time=datetime.fromisoformat(str(doc["time"])),
            data=doc["data"],
            correlation_id=str(doc.get("correlationid", "")),
            causation_id=str(doc.get("causationid", "")),
            sequence=int(doc.get("sequence", 0)),
            schema_version=int(doc.get("schemaversion", 1)),
        )
    except (TypeError, ValueError) as exc:
        raise MessageFormatError(f"bad attribute: {exc}") from exc

"""The one envelope of every message, stored or on the wire, and its CloudEvents 1.0 JSON form.

Facts and commands travel as CloudEvents 1.0 structured-mode JSON, with the extension
attributes `correlationid`, `causationid`, `sequence` (the stream version; "0" for a
command) and `schemaversion`. Decoding validates the data against the contract and upcasts
an older schema version: `Envelope.data` is always the current version of its message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from shared.contract.base import Message
from shared.contract.registry import UnknownMessageType, message_class
from shared.contract.upcasting import upcast

CLOUDEVENTS_SPEC_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"

M = TypeVar("M", bound=Message, covariant=True)


class MessageFormatError(ValueError):
    """A message that does not keep the contract: not CloudEvents, an unknown type or
    version, or data that does not match its schema (a poison message)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    """A fact as recorded in its stream (subject = stream id, sequence = version ≥ 1), or a
    command addressed to an aggregate (subject = target id, sequence = 0)."""

    id: str
    source: str
    subject: str
    sequence: int
    time: datetime
    correlation_id: str
    causation_id: str
    data: M
    #: The CloudEvents type of the message whose handling produced this one; None when a request
    #: (or nothing the system sent) caused it. Lets a reader know whether to expect the cause.
    causation_type: str | None = None
    #: W3C trace context (distributed-tracing extension); None when tracing is off.
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def type(self) -> str:
        return self.data.TYPE

    @property
    def is_command(self) -> bool:
        return self.sequence == 0

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(self.id)


class _CloudEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The wire form. Extension attribute values are strings, as CloudEvents requires; an
    attribute that is absent decodes as "" (and "" is never written)."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    datacontenttype: str = ""
    correlationid: str = ""
    causationid: str = ""
    causationtype: str = ""
    sequence: str = ""
    schemaversion: str = ""
    traceparent: str = ""
    tracestate: str = ""
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(_CloudEvent)
_data_decoders: dict[type[Message], msgspec.json.Decoder[Any]] = {}


def encode_data(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_data(message_type: str, schema_version: int, raw: bytes | str) -> Message:
    """The current version of a message from its data as written at `schema_version`."""
    try:
        cls = message_class(message_type)
    except UnknownMessageType as exc:
        raise MessageFormatError(str(exc)) from None
    try:
        if schema_version == cls.VERSION:
            decoder = _data_decoders.get(cls)
            if decoder is None:
                decoder = _data_decoders[cls] = msgspec.json.Decoder(cls)
            message: Message = decoder.decode(raw)
            return message
        if not 1 <= schema_version < cls.VERSION:
            raise MessageFormatError(f"{message_type} has no schema version {schema_version} (current: {cls.VERSION})")
        data = msgspec.json.decode(raw)
        if not isinstance(data, dict):
            raise MessageFormatError(f"{message_type} data is not a JSON object")
        return msgspec.convert(upcast(message_type, schema_version, cls.VERSION, data), cls)
    except msgspec.ValidationError as exc:
        raise MessageFormatError(f"{message_type} v{schema_version} data does not match its schema: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MessageFormatError(f"{message_type} data is not JSON: {exc}") from None


def encode(envelope: Envelope[Message], *, data: bytes | None = None) -> bytes:
    """The CloudEvents JSON value of a message (`data`: its already encoded data, if at hand)."""
    message = envelope.data
    return _encoder.encode(
        _CloudEvent(
            specversion=CLOUDEVENTS_SPEC_VERSION,
            id=envelope.id,
            source=envelope.source,
            type=message.TYPE,
            subject=envelope.subject,
            time=envelope.time,
            data=msgspec.Raw(data if data is not None else encode_data(message)),
            datacontenttype=JSON_CONTENT_TYPE,
            correlationid=envelope.correlation_id,
            causationid=envelope.causation_id,
            causationtype=envelope.causation_type or "",
            sequence=str(envelope.sequence),
            schemaversion=str(message.VERSION),
            traceparent=envelope.traceparent or "",
            tracestate=envelope.tracestate or "",
        )
    )


def decode(raw: bytes | None) -> Envelope[Message]:
    """Parse and validate a CloudEvents JSON value; MessageFormatError for anything else."""
    if raw is None:
        raise MessageFormatError("empty message value")
    try:
        wire = _envelope_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MessageFormatError(f"not a CloudEvents JSON object: {exc}") from None
    if wire.specversion != CLOUDEVENTS_SPEC_VERSION:
        raise MessageFormatError(f"unsupported specversion {wire.specversion!r}")
    try:
        sequence, schema_version = int(wire.sequence or 0), int(wire.schemaversion or 1)
    except ValueError as exc:
        raise MessageFormatError(f"bad attribute: {exc}") from None
    if sequence < 0:
        raise MessageFormatError("sequence must not be negative")
    return Envelope(
        id=wire.id,
        source=wire.source,
        subject=wire.subject,
        sequence=sequence,
        time=wire.time,
        correlation_id=wire.correlationid,
        causation_id=wire.causationid,
        data=decode_data(wire.type, schema_version, wire.data),
        causation_type=wire.causationtype or None,
        traceparent=wire.traceparent or None,
        tracestate=wire.tracestate or None,
    )

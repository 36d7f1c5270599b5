"""The value a consumer writes to `<topic>.dlq` for a message it could not process: a CloudEvent.

A dead letter keeps the original message's CloudEvents attributes and its `data` exactly as they
were (extension attributes this code does not know included) and adds the `dlq*` extension
attributes: the error, the consumer group, the number of attempts, the first and last failure and
where the message was (topic, partition, offset). A value that is not a CloudEvent at all still
becomes one: type `dead_letter.undecodable`, id `<topic>:<partition>:<offset>`, the value's bytes
in `data_base64`. Either way `original_value` gives back what was on the topic, so an operator
can resubmit it after a fix (`python -m infra dlq replay`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec

from shared.contract.envelope import CLOUDEVENTS_SPEC_VERSION

#: The type of a dead letter whose original is not a CloudEvent at all (poison bytes).
UNDECODABLE_TYPE = "dead_letter.undecodable"
UNDECODABLE_CONTENT_TYPE = "application/octet-stream"

#: The extension attributes a dead letter adds to the original's (CloudEvents names: a-z, 0-9).
DLQ_ERROR = "dlqerror"
DLQ_CONSUMER = "dlqconsumer"
DLQ_ATTEMPTS = "dlqattempts"
DLQ_FIRST_FAILURE = "dlqfirstfailure"
DLQ_LAST_FAILURE = "dlqlastfailure"
DLQ_TOPIC = "dlqtopic"
DLQ_PARTITION = "dlqpartition"
DLQ_OFFSET = "dlqoffset"
DLQ_ATTRIBUTES = (
    DLQ_ERROR,
    DLQ_CONSUMER,
    DLQ_ATTEMPTS,
    DLQ_FIRST_FAILURE,
    DLQ_LAST_FAILURE,
    DLQ_TOPIC,
    DLQ_PARTITION,
    DLQ_OFFSET,
)

_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
_DATA, _DATA_BASE64 = "data", "data_base64"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A CloudEvents 1.0 event (structured JSON) holding a message a consumer could not process:
    the original's attributes and `data` exactly as they were (attributes not listed here are
    kept too) plus the `dlq*` extension attributes. An original that is not a CloudEvent becomes
    type `dead_letter.undecodable`, id `<topic>:<partition>:<offset>`, its bytes in `data_base64`.
    The record's key is the original key. `make dlq-replay` puts the original back on its topic:
    the same value without the `dlq*` attributes (the bytes themselves when it was undecodable)."""

    VERSION: ClassVar[int] = 2

    specversion: Annotated[
        str, msgspec.Meta(description="The CloudEvents version.", extra_json_schema={"const": CLOUDEVENTS_SPEC_VERSION})
    ]
    id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="The original message's id; `<topic>:<partition>:<offset>` when it was not a "
            "CloudEvent. `make dlq-replay` names a dead letter by it.",
        ),
    ]
    source: Annotated[
        str, msgspec.Meta(min_length=1, description="The original's source; `/topics/<topic>` when undecodable.")
    ]
    type: Annotated[
        str, msgspec.Meta(min_length=1, description="The original's type; `dead_letter.undecodable` when undecodable.")
    ]
    subject: Annotated[str, msgspec.Meta(description="The original's subject (the Kafka key when undecodable).")] = ""
    time: Annotated[
        str,
        msgspec.Meta(
            description="The original's time (RFC 3339); when undecodable, the Kafka record's timestamp.",
            extra_json_schema={"format": "date-time"},
        ),
    ] = ""
    datacontenttype: Annotated[
        str, msgspec.Meta(description="The original's; `application/octet-stream` when undecodable.")
    ] = ""
    correlationid: Annotated[str, msgspec.Meta(description="The original's correlation id, if it had one.")] = ""
    causationid: Annotated[str, msgspec.Meta(description="The original's causation id, if it had one.")] = ""
    sequence: Annotated[str, msgspec.Meta(description="The original's sequence, if it had one.")] = ""
    schemaversion: Annotated[str, msgspec.Meta(description="The original's schema version, if it had one.")] = ""
    dlqerror: Annotated[str, msgspec.Meta(description="Extension: why the consumer could not process it.")]
    dlqconsumer: Annotated[str, msgspec.Meta(description="Extension: the consumer group that dead-lettered it.")]
    dlqattempts: Annotated[
        str,
        msgspec.Meta(
            pattern="^[1-9][0-9]*$",
            description="Extension: how many times that consumer tried it, in all (replays included), "
            "as decimal digits.",
        ),
    ]
    dlqfirstfailure: Annotated[
        str,
        msgspec.Meta(
            description="Extension: when it first failed for that consumer (RFC 3339).",
            extra_json_schema={"format": "date-time"},
        ),
    ]
    dlqlastfailure: Annotated[
        str,
        msgspec.Meta(
            description="Extension: when it last failed (RFC 3339).", extra_json_schema={"format": "date-time"}
        ),
    ]
    dlqtopic: Annotated[str, msgspec.Meta(description="Extension: the topic the original was read from.")]
    dlqpartition: Annotated[
        str, msgspec.Meta(pattern="^[0-9]+$", description="Extension: its partition, as decimal digits.")
    ]
    dlqoffset: Annotated[str, msgspec.Meta(pattern="^[0-9]+$", description="Extension: its offset, as decimal digits.")]
    data: Annotated[
        msgspec.Raw | msgspec.UnsetType, msgspec.Meta(description="The original's data, exactly as it was.")
    ] = msgspec.UNSET
    data_base64: Annotated[
        str | msgspec.UnsetType,
        msgspec.Meta(description="The original value's bytes (base64) when it was not a CloudEvent."),
    ] = msgspec.UNSET

    @property
    def attempts(self) -> int:
        return int(self.dlqattempts)

    @property
    def origin(self) -> tuple[str, int, int]:
        """(topic, partition, offset) of the original message."""
        return self.dlqtopic, int(self.dlqpartition), int(self.dlqoffset)

    @property
    def undecodable(self) -> bool:
        return self.type == UNDECODABLE_TYPE


class DeadLetterFormatError(ValueError):
    """A value on a dead-letter topic that is not a dead letter of this contract."""


@dataclass(frozen=True, slots=True)
class DeadLetterOrigin:
    """Where the failed message was read: its record's coordinates, key and timestamp."""

    topic: str
    partition: int
    offset: int
    key: str | None = None
    timestamp: datetime | None = None

    @property
    def id(self) -> str:
        """The id of a message that has none of its own (it was not a CloudEvent)."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetterFailure:
    """How a consumer failed a message: the error and its attempts, in all (earlier handlings
    recorded in its inbox included)."""

    consumer: str
    error: str
    attempts: int
    first: datetime
    last: datetime


_attributes = msgspec.json.Decoder(dict[str, msgspec.Raw])
_attribute_value = msgspec.json.Decoder(str | int | bool)
_string = msgspec.json.Decoder(str)
_timestamp = msgspec.json.Decoder(datetime)
_letter = msgspec.json.Decoder(DeadLetter)
_encoder = msgspec.json.Encoder()


def cloudevent_attributes(value: bytes | None) -> dict[str, msgspec.Raw] | None:
    """The attributes (each as its raw JSON) of a value that is a CloudEvents 1.0 JSON object,
    read leniently: its data may break its contract. None when the value is not a CloudEvent."""
    if not value:
        return None
    try:
        attributes = _attributes.decode(value)
        if _string.decode(attributes["specversion"]) != CLOUDEVENTS_SPEC_VERSION:
            return None
        if not all(_string.decode(attributes[name]) for name in ("id", "source", "type")):
            return None
        if _DATA in attributes and _DATA_BASE64 in attributes:
            return None
        for name, raw in attributes.items():
            if name == _DATA:
                continue
            if name == _DATA_BASE64:
                _string.decode(raw)
            elif not _ATTRIBUTE_NAME.match(name):
                return None
            else:
                _attribute_value.decode(raw)  # a string, integer or boolean, as CloudEvents allows
        if "time" in attributes:
            _timestamp.decode(attributes["time"])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return attributes


def failed_message_id(value: bytes | None, origin: DeadLetterOrigin) -> str:
    """The id a consumer records a failed message under: its CloudEvents id, or its origin."""
    attributes = cloudevent_attributes(value)
    return _string.decode(attributes["id"]) if attributes is not None else origin.id


def _timestamp_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_dead_letter(value: bytes | None, origin: DeadLetterOrigin, failure: DeadLetterFailure) -> tuple[str, bytes]:
    """(the dead letter's id, its CloudEvents JSON value) for a message a consumer gave up on."""
    attributes = cloudevent_attributes(value)
    if attributes is None:
        attributes = {
            "specversion": _raw(CLOUDEVENTS_SPEC_VERSION),
            "id": _raw(origin.id),
            "source": _raw(f"/topics/{origin.topic}"),
            "type": _raw(UNDECODABLE_TYPE),
            "time": _raw(_timestamp_text(origin.timestamp or failure.first)),
            "datacontenttype": _raw(UNDECODABLE_CONTENT_TYPE),
        }
        if origin.key:
            attributes["subject"] = _raw(origin.key)
        if value is not None:
            attributes[_DATA_BASE64] = _raw(base64.b64encode(value).decode())
    else:
        attributes = {name: raw for name, raw in attributes.items() if name not in DLQ_ATTRIBUTES}
    attributes |= {
        DLQ_ERROR: _raw(failure.error),
        DLQ_CONSUMER: _raw(failure.consumer),
        DLQ_ATTEMPTS: _raw(str(failure.attempts)),
        DLQ_FIRST_FAILURE: _raw(_timestamp_text(failure.first)),
        DLQ_LAST_FAILURE: _raw(_timestamp_text(failure.last)),
        DLQ_TOPIC: _raw(origin.topic),
        DLQ_PARTITION: _raw(str(origin.partition)),
        DLQ_OFFSET: _raw(str(origin.offset)),
    }
    return _string.decode(attributes["id"]), _encoder.encode(attributes)


def _raw(text: str) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(text))


def read_dead_letter(value: bytes | None) -> DeadLetter:
    """The attributes of a dead letter (an older one upcast); DeadLetterFormatError if the
    value is not one."""
    return _letter.decode(current_dead_letter(value))


def current_dead_letter(value: bytes | None) -> bytes:
    """A dead letter's value in the current form: version 1 letters (plain JSON written before
    dead letters were CloudEvents, kept forever on the DLQ topics) are rebuilt from their fields."""
    try:
        _letter.decode(value or b"")
        assert value is not None
        return value
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        error = exc
    try:
        old = _letter_v1.decode(value or b"")
        failed_at = datetime.fromisoformat(old.failed_at)
        original = base64.b64decode(old.value_base64, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        raise DeadLetterFormatError(f"not a dead letter: {error}") from None
    o = old.origin
    origin = DeadLetterOrigin(o.topic, o.partition, o.offset, o.key)
    return make_dead_letter(original, origin, DeadLetterFailure(old.consumer, old.error, 1, failed_at, failed_at))[1]


def original_value(value: bytes | None) -> bytes | None:
    """The value of the message a dead letter holds, as it was on its topic: the bytes of an
    undecodable one exactly; a CloudEvent without the `dlq*` attributes (byte for byte the
    original when that was compact JSON, as every producer of this system writes it)."""
    value = current_dead_letter(value)
    letter = _letter.decode(value)
    if letter.undecodable:
        if isinstance(letter.data_base64, msgspec.UnsetType):
            return None
        try:
            return base64.b64decode(letter.data_base64, validate=True)
        except ValueError as exc:
            raise DeadLetterFormatError(f"data_base64 is not base64: {exc}") from None
    attributes = _attributes.decode(value)
    return _encoder.encode({name: raw for name, raw in attributes.items() if name not in DLQ_ATTRIBUTES})


class _OriginV1(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partition: int
    offset: int
    key: str | None = None


class _DeadLetterV1(msgspec.Struct, frozen=True, kw_only=True):
    """Version 1: {consumer, error, failed_at, origin, value_base64}, plain JSON."""

    consumer: str
    error: str
    failed_at: str
    origin: _OriginV1
    value_base64: str


_letter_v1 = msgspec.json.Decoder(_DeadLetterV1)

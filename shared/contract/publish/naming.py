"""Constants of the published contract and the names, titles and descriptions derived from the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from shared.contract.base import Message
from shared.contract.customer import CUSTOMER_FACTS
from shared.contract.dead_letter import DeadLetter
from shared.contract.envelope import CLOUDEVENTS_SPEC_VERSION, JSON_CONTENT_TYPE
from shared.contract.registry import CHANNELS, Channel
from shared.contract.saga import SAGA_FACTS
from shared.contract.topics import DLQ_SUFFIX
from shared.contract.upcasting import registered_steps

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS_DIR = "docs/schemas"
ASYNCAPI_FILE = "docs/asyncapi.yaml"
EVENTS_FILE = "docs/EVENTS.md"

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
API_TITLE = "events-first order system"
API_VERSION = "2.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
ENVELOPE_NAME = "cloudevent"
DEAD_LETTER_NAME = "dead-letter"
DEAD_LETTER_VERSION: int = DeadLetter.VERSION
REGENERATE = "run `make contract` (python -m shared.contract.publish) and commit the result"

PRIVATE_NOTE = (
    "Private to the order service: a saga fact (or a customer fact) is on no topic and never leaves the order "
    "service's log."
)
#: The facts on no topic: the saga's and the customer facts of erasure, both in the order service's log.
PRIVATE_FACTS = (*SAGA_FACTS, *CUSTOMER_FACTS)

SERVICE_DESCRIPTIONS = {
    "order": "The order service: the Order aggregate and the order-fulfilment saga.",
    "payment": "The payment service: the Payment aggregate.",
    "shipping": "The shipping service: the Shipment aggregate.",
    "query": "The query service: read models built from the event topics.",
    "operator": "A person (or tool) who inspects dead letters and resubmits them.",
}

# Envelope attributes: what the code cannot say about them (meaning, fixed values, digit strings).
ENVELOPE_REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data")
ENVELOPE_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "specversion": {"description": "The CloudEvents version.", "const": CLOUDEVENTS_SPEC_VERSION},
    "id": {"description": "The id of this fact or command (a UUID); consumers deduplicate on it."},
    "source": {"description": "The service that recorded or sent it: `/services/<name>`."},
    "type": {
        "description": "The message type (e.g. `order.placed`): with `schemaversion`, it names the schema of `data`."
    },
    "subject": {
        "description": "The aggregate the message is about (the stream of a fact, the target of a command); "
        "equal to the Kafka key."
    },
    "time": {"description": "When it was recorded or sent (RFC 3339).", "format": "date-time"},
    "datacontenttype": {"description": "The media type of `data`.", "const": JSON_CONTENT_TYPE},
    "correlationid": {"description": "Extension: the order the message belongs to (the order id)."},
    "causationid": {"description": "Extension: the id of the message that caused this one."},
    "causationtype": {
        "description": "Extension (optional): the `type` of the message that caused this one; absent when an "
        "HTTP request caused it. A reader that consumes that type can wait for the cause before showing the effect."
    },
    "traceparent": {
        "description": "Extension (optional): W3C trace context (CloudEvents distributed tracing); absent "
        "when tracing is off."
    },
    "tracestate": {"description": "Extension (optional): W3C trace state, with `traceparent`."},
    "sequence": {
        "description": 'Extension: the fact\'s version in its stream (1, 2, ...) as decimal digits; "0" for a command.',
        "pattern": "^[0-9]+$",
    },
    "schemaversion": {
        "description": "Extension: the version of the schema of `data`, as decimal digits.",
        "pattern": "^[0-9]+$",
    },
    "data": {"description": "The message: the schema named by `type` and `schemaversion`."},
}

INFO_DESCRIPTION = f"""\
The messages of the order, payment, shipping and query services. Generated from `shared/contract/`
by `make contract`: do not edit by hand.

**Envelope.** Every fact and command is one Kafka record whose value is a CloudEvents
{CLOUDEVENTS_SPEC_VERSION} event in structured mode (`{CLOUDEVENTS_CONTENT_TYPE}`): the attributes
`specversion`, `id`, `source`, `type`, `subject`, `time`, `datacontenttype` and the message itself in
`data`, plus the extension attributes `correlationid` (the order id), `causationid` (the message that
caused it), `sequence` (the fact's version in its stream, "0" for a command) and `schemaversion`
(the version of the schema of `data`).

**Key.** The key of every record is the id of the aggregate the message is about (its `subject`),
so the messages of one aggregate stay in order on one partition. A consumer that cannot process a
message writes it to `<topic>.dlq` as a dead letter and moves on: a CloudEvent keeping the original's
attributes and data, plus the `dlq*` extension attributes (error, consumer, attempts, failure times, origin).

**Versioning.** Facts are never rewritten. Every change of a message's data shape bumps its
`schemaversion`; a newer version is additive (a new optional field with a default) or comes with an
upcaster from the previous one, and consumers upcast older versions on read, so they always handle
the current version. A version newer than a consumer knows is dead-lettered.

**Personal data.** Fields holding personal data are marked `x-personal-data: true` in their schema.
"""


# ---------------------------------------------------------------------------------------------- naming


def _doc(obj: object) -> str:
    """An object's own docstring as one line ('' if it has none: a parent's would describe something else)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return " ".join(inspect.cleandoc(doc).split()) if isinstance(doc, str) else ""


def _title(cls: type) -> str:
    """`AuthorizePayment` -> `Authorize payment`."""
    words = re.findall(r"[A-Z][a-z0-9]*", cls.__name__)
    return " ".join([words[0], *(w.lower() for w in words[1:])]) if words else cls.__name__


def _summary(cls: type) -> str:
    return _doc(cls) or _title(cls) + "."


def _key(cls: type[Message]) -> str:
    """The name of a message's data schema: `<type>.v<N>`."""
    return f"{cls.TYPE}.v{cls.VERSION}"


def _channel_id(topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", topic)


def _dead_letter_message_id(channel: Channel) -> str:
    return f"{DEAD_LETTER_NAME}.{channel.topic.removesuffix(DLQ_SUFFIX)}"


def _message_ids(channel: Channel) -> list[str]:
    return [_dead_letter_message_id(channel)] if channel.dead_letters else [cls.TYPE for cls in channel.messages]


def _upcast_from(cls: type[Message]) -> list[int]:
    return [version for message_type, version in registered_steps() if message_type == cls.TYPE]


def _private(cls: type[Message]) -> bool:
    """A message on no topic: only the order service's private facts may be (the notes published about
    them say so)."""
    if cls.TOPIC is not None:
        return False
    if cls not in PRIVATE_FACTS:
        raise ValueError(f"{cls.TYPE} has no topic but is not a private fact: say where it lives before publishing it")
    return True


def _description(cls: type[Message]) -> str:
    parts = [PRIVATE_NOTE] if _private(cls) else []
    parts.append(_summary(cls))
    older = _upcast_from(cls)
    if older:
        listed = ", ".join(f"v{v}" for v in older)
        parts.append(f"Version {cls.VERSION}; older versions ({listed}) are upcast to it on read.")
    return " ".join(parts)


def _channel_of(cls: type[Message]) -> Channel:
    for channel in CHANNELS:
        if not channel.dead_letters and channel.topic == cls.TOPIC:
            return channel
    raise ValueError(f"{cls.TYPE} is declared on {cls.TOPIC!r}, which is not a channel of the registry")

"""The contract in machine-readable form, generated from the Structs of shared/contract/.

`python -m shared.contract.publish` (`make contract`) writes docs/schemas/ (JSON Schema 2020-12 of
every message's `data`, of the dead letter and of the CloudEvents envelope), docs/asyncapi.yaml
(AsyncAPI 3.0.0) and docs/EVENTS.md (the catalogue). `--check` writes nothing and exits 1 listing
the files that differ: the code is the declaration, the documents can only follow it.

Everything is built in a fixed order and dumped without anything time- or host-dependent, so the
same code always gives the same bytes (the drift test and `--check` compare them).
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from shared.contract import dead_letter as dead_letter_module
from shared.contract import upcasting
from shared.contract.base import MAX_CENTS, Command, Message
from shared.contract.dead_letter import DeadLetter
from shared.contract.envelope import CLOUDEVENTS_SPEC_VERSION, JSON_CONTENT_TYPE, _CloudEvent
from shared.contract.registry import ALL_MESSAGES, CHANNELS, SERVICES, Channel, personal_fields
from shared.contract.saga import SAGA_FACTS
from shared.contract.topics import DLQ_SUFFIX
from shared.contract.upcasting import registered_steps

ROOT = Path(__file__).resolve().parents[2]
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
DEAD_LETTER_VERSION: int = getattr(DeadLetter, "VERSION", 1)
REGENERATE = "run `make contract` (python -m shared.contract.publish) and commit the result"

PRIVATE_NOTE = "Private to the order service: a saga fact is on no topic and never leaves the order service's log."

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
message writes it, with the error, to `<topic>.dlq` as a dead letter (plain JSON) and moves on.

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
    """A message on no topic: only the saga's facts may be (the notes published about them say so)."""
    if cls.TOPIC is not None:
        return False
    if cls not in SAGA_FACTS:
        raise ValueError(f"{cls.TYPE} has no topic but is not a saga fact: say where it lives before publishing it")
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


# ---------------------------------------------------------------------------------------- JSON Schema


def _split(generated: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """msgspec's `{"$ref": root, "$defs": ...}` as (root body, the other definitions)."""
    defs = dict(generated.get("$defs", {}))
    ref = generated.get("$ref")
    if not isinstance(ref, str):
        return generated, defs
    return defs.pop(ref.rsplit("/", 1)[1]), defs


def _with_header(
    body: dict[str, Any], title: str, description: str, header: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`body` with its title and description first (the generated ones name Python classes)."""
    schema = dict(header or {})
    schema["title"] = title
    if description:
        schema["description"] = description
    schema.update((k, v) for k, v in body.items() if k not in ("title", "description"))
    return schema


def _standalone(cls: type[msgspec.Struct], name: str, version: int | None, description: str) -> dict[str, Any]:
    body, defs = _split(msgspec.json.schema(cls))
    schema_id = f"urn:events-first:schema:{name}" + (f":v{version}" if version is not None else "")
    schema = _with_header(body, name, description, {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id})
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def data_schema(cls: type[Message]) -> dict[str, Any]:
    """The standalone JSON Schema 2020-12 of a message's `data`."""
    return _standalone(cls, cls.TYPE, cls.VERSION, _description(cls))


def dead_letter_schema() -> dict[str, Any]:
    return _standalone(DeadLetter, DEAD_LETTER_NAME, DEAD_LETTER_VERSION, _dead_letter_description())


def _dead_letter_description() -> str:
    return f"{_doc(dead_letter_module)} {_doc(DeadLetter)}".strip()


def _envelope_body() -> dict[str, Any]:
    body, _ = _split(msgspec.json.schema(_CloudEvent))
    properties: dict[str, Any] = {}
    for attribute, generated in body["properties"].items():
        notes = ENVELOPE_ATTRIBUTES.get(attribute, {})
        properties[attribute] = {**notes, **{k: v for k, v in generated.items() if k not in notes}}
    missing = [a for a in ENVELOPE_REQUIRED if a not in properties]
    if missing:
        raise ValueError(f"the CloudEvents wire form lost required attributes: {missing}")
    return {"type": "object", "properties": properties, "required": list(ENVELOPE_REQUIRED)}


_ENVELOPE_DESCRIPTION = (
    f"The value of every fact and command on Kafka: a CloudEvents {CLOUDEVENTS_SPEC_VERSION} event in structured "
    "mode (JSON). `data` holds the message; `type` and `schemaversion` name its schema. Other attributes are "
    "ignored by consumers."
)


def envelope_schema() -> dict[str, Any]:
    header = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:events-first:schema:{ENVELOPE_NAME}"}
    return _with_header(_envelope_body(), ENVELOPE_NAME, _ENVELOPE_DESCRIPTION, header)


def schema_files() -> dict[str, dict[str, Any]]:
    """docs/schemas/<file name> -> schema, in a fixed order."""
    files = {f"{_key(cls)}.json": data_schema(cls) for cls in ALL_MESSAGES}
    files[f"{DEAD_LETTER_NAME}.v{DEAD_LETTER_VERSION}.json"] = dead_letter_schema()
    files[f"{ENVELOPE_NAME}.json"] = envelope_schema()
    return dict(sorted(files.items()))


# ------------------------------------------------------------------------------------------- AsyncAPI


def _component_schemas() -> dict[str, Any]:
    """Data schemas as `<type>.v<N>`, nested values under their class names, refs into components."""
    types: tuple[type[msgspec.Struct], ...] = (*ALL_MESSAGES, DeadLetter)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schemas: dict[str, Any] = {}
    for cls, ref in zip(types, refs):
        body = components.pop(ref["$ref"].rsplit("/", 1)[1])
        if cls is DeadLetter:
            schemas[f"{DEAD_LETTER_NAME}.v{DEAD_LETTER_VERSION}"] = _with_header(
                body, DEAD_LETTER_NAME, _dead_letter_description()
            )
        else:
            assert issubclass(cls, Message)
            schemas[_key(cls)] = _with_header(body, cls.TYPE, _description(cls))
    clash = set(schemas) & set(components)
    if clash:
        raise ValueError(f"value objects named like message schemas: {sorted(clash)}")
    schemas.update(components)
    schemas[ENVELOPE_NAME] = _with_header(_envelope_body(), ENVELOPE_NAME, _ENVELOPE_DESCRIPTION)
    return dict(sorted(schemas.items()))


def _kafka_key(channel: Channel) -> dict[str, Any]:
    return {"kafka": {"key": {"type": "string", "description": channel.key}, "bindingVersion": KAFKA_BINDING_VERSION}}


def _message_notes(cls: type[Message]) -> str:
    if issubclass(cls, Command):
        kind = f'A command to the aggregate named by `{cls.TARGET}` (its `subject`; `sequence` "0").'
    else:
        kind = "A fact: recorded once in its stream (`subject`, at `sequence`), never rewritten."
    notes = [kind, _description(cls)]
    personal = personal_fields(cls)
    if personal:
        notes.append("Personal data: " + ", ".join(f"`{p}`" for p in personal) + ".")
    return " ".join(notes)


def _message(cls: type[Message]) -> dict[str, Any]:
    envelope = f"#/components/schemas/{ENVELOPE_NAME}"
    return {
        "name": cls.TYPE,
        "title": _title(cls),
        "summary": _summary(cls),
        "description": _message_notes(cls),
        "contentType": CLOUDEVENTS_CONTENT_TYPE,
        "correlationId": {"$ref": "#/components/correlationIds/order"},
        "bindings": _kafka_key(_channel_of(cls)),
        "payload": {
            "allOf": [
                {"$ref": envelope},
                {
                    "type": "object",
                    "required": ["type", "schemaversion", "data"],
                    "properties": {
                        "type": {"const": cls.TYPE},
                        "schemaversion": {"const": str(cls.VERSION)},
                        "data": {"$ref": f"#/components/schemas/{_key(cls)}"},
                    },
                },
            ]
        },
    }


def _dead_letter_message(channel: Channel) -> dict[str, Any]:
    source = channel.topic.removesuffix(DLQ_SUFFIX)
    return {
        "name": DEAD_LETTER_NAME,
        "title": f"Dead letter of {source}",
        "summary": _doc(dead_letter_module) or "A dead letter.",
        "description": f"A message of `{source}` that a consumer could not process, with the error. "
        f"{_doc(DeadLetter)} The record keeps the original key ({channel.key}).",
        "contentType": JSON_CONTENT_TYPE,
        "bindings": _kafka_key(channel),
        "payload": {"$ref": f"#/components/schemas/{DEAD_LETTER_NAME}.v{DEAD_LETTER_VERSION}"},
    }


def _services() -> list[str]:
    seen = {s for c in CHANNELS for s in (*c.senders, *c.receivers)}
    return [s for s in SERVICES if s in seen] + sorted(seen - set(SERVICES))


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        cid = _channel_id(channel.topic)
        messages = [{"$ref": f"#/channels/{cid}/messages/{mid}"} for mid in _message_ids(channel)]
        for action, verb, services in (("send", "sends", channel.senders), ("receive", "receives", channel.receivers)):
            for service in services:
                operations[f"{service}_{verb}_{cid}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{cid}"},
                    "summary": f"{service} {verb} {channel.topic}",
                    "messages": list(messages),
                    "tags": [{"name": service}],
                }
    return operations


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every channel of the registry, as plain data."""
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for channel in CHANNELS:
        if channel.dead_letters:
            messages[_dead_letter_message_id(channel)] = _dead_letter_message(channel)
        else:
            messages.update((cls.TYPE, _message(cls)) for cls in channel.messages)
        channels[_channel_id(channel.topic)] = {
            "address": channel.topic,
            "title": channel.topic,
            "description": channel.description,
            "messages": {mid: {"$ref": f"#/components/messages/{mid}"} for mid in _message_ids(channel)},
        }
    for cls in ALL_MESSAGES:
        _private(cls)  # every message is on a channel or is a saga fact (components.schemas only)
    return {
        "asyncapi": "3.0.0",
        "id": "urn:events-first:asyncapi",
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": INFO_DESCRIPTION,
            "tags": [{"name": s, "description": SERVICE_DESCRIPTIONS.get(s, s)} for s in _services()],
        },
        "defaultContentType": CLOUDEVENTS_CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker `make up` starts (KAFKA_PORT, 9092 by default).",
            }
        },
        "channels": channels,
        "operations": _operations(),
        "components": {
            "schemas": _component_schemas(),
            "messages": dict(sorted(messages.items())),
            "correlationIds": {
                "order": {
                    "description": "The order the message belongs to (the order id).",
                    "location": "$message.payload#/correlationid",
                }
            },
        },
    }


def asyncapi_yaml() -> str:
    # A JSON round trip gives every node its own object, so the YAML has no anchors or aliases.
    plain = json.loads(json.dumps(asyncapi_document()))
    text: str = yaml.dump(
        plain, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=110
    )
    return text


def _represent_str(dumper: Any, value: str) -> Any:
    """Multi-line prose as a literal block, readable in review; everything else as pyyaml chooses."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


# A private dumper class: registering the representer on yaml.SafeDumper would change it for everyone.
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})
_Dumper.add_representer(str, _represent_str)


# ----------------------------------------------------------------------------------------- EVENTS.md


@dataclass
class _Catalogue:
    """Value objects met while rendering messages, to be described once after them."""

    values: dict[str, type]

    def type_text(self, t: Any) -> tuple[str, list[str], list[str]]:
        """(type as written in the catalogue, its descriptions, its constraints)."""
        if isinstance(t, mi.Metadata):
            text, described, constraints = self.type_text(t.type)
            extra = t.extra_json_schema or {}
            return text, ([str(extra["description"])] if "description" in extra else []) + described, constraints
        if isinstance(t, mi.StrType):
            return "string", [], _str_notes(t)
        if isinstance(t, mi.IntType):
            return "integer", [], _int_notes(t)
        if isinstance(t, (mi.StructType, mi.EnumType)):
            self.values[t.cls.__name__] = t.cls
            return f"[{t.cls.__name__}](#{t.cls.__name__.lower()})", [], []
        if isinstance(t, (mi.VarTupleType, mi.ListType, mi.SetType, mi.FrozenSetType)):
            text, described, constraints = self.type_text(t.item_type)
            return f"list of {text}", described, constraints
        if isinstance(t, mi.UnionType):
            parts = [self.type_text(member) for member in t.types]
            return " or ".join(p[0] for p in parts), [d for p in parts for d in p[1]], [c for p in parts for c in p[2]]
        simple: dict[type, str] = {
            mi.FloatType: "number",
            mi.BoolType: "boolean",
            mi.DateTimeType: "date-time",
            mi.NoneType: "null",
            mi.AnyType: "any",
            mi.RawType: "any",
        }
        return simple.get(type(t), type(t).__name__), [], []

    def fields_table(self, cls: type[msgspec.Struct]) -> list[str]:
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        personal = personal_fields(cls)
        rows = ["| field | type | required | personal | notes |", "|---|---|---|---|---|"]
        for field in info.fields:
            text, described, constraints = self.type_text(field.type)
            notes = " ".join([*described, ", ".join(constraints)]).strip()
            required = "yes" if field.required else f"no (default `{_default(field)}`)"
            rows.append(
                f"| `{field.encode_name}` | {text} | {required} | {_personal_cell(field.name, personal)} | "
                + _cell(notes)
                + " |"
            )
        return rows


def _str_notes(t: mi.StrType) -> list[str]:
    notes = []
    if t.min_length is not None:
        notes.append(f"min length {t.min_length}")
    if t.max_length is not None:
        notes.append(f"max length {t.max_length}")
    if t.pattern is not None:
        notes.append(f"pattern `{t.pattern}`")
    return notes


def _int_notes(t: mi.IntType) -> list[str]:
    def bound(n: int) -> str:
        return "2^63-1" if n == MAX_CENTS else str(n)

    notes = []
    for symbol, value in (("≥", t.ge), (">", t.gt), ("≤", t.le), ("<", t.lt)):
        if value is not None:
            notes.append(f"{symbol} {bound(value)}")
    if t.multiple_of is not None:
        notes.append(f"multiple of {t.multiple_of}")
    return notes


def _default(field: mi.Field) -> str:
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    return msgspec.json.encode(value).decode()


def _personal_cell(name: str, personal: list[str]) -> str:
    if name in personal:
        return "yes"
    inside = [p[len(name) :].lstrip(".[]") for p in personal if p.startswith((name + ".", name + "[]"))]
    return "inside: " + ", ".join(f"`{p}`" for p in inside) if inside else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _list(names: Iterable[str]) -> str:
    return ", ".join(names) or "-"


def _message_section(catalogue: _Catalogue, cls: type[Message]) -> list[str]:
    lines = [f"### `{cls.TYPE}` v{cls.VERSION}", ""]
    kind = f"Command to `{cls.TARGET}`." if issubclass(cls, Command) else "Fact."
    lines += [f"{kind} {_summary(cls)}", ""]
    older = _upcast_from(cls)
    if older:
        lines += [
            f"Older versions ({', '.join(f'v{v}' for v in older)}) are upcast on read: see [Upcasters](#upcasters).",
            "",
        ]
    lines += [f"Schema: [schemas/{_key(cls)}.json](schemas/{_key(cls)}.json)", ""]
    return lines + catalogue.fields_table(cls) + [""]


def _envelope_section() -> list[str]:
    body = _envelope_body()
    lines = [
        "## Envelope",
        "",
        _ENVELOPE_DESCRIPTION + f" Schema: [schemas/{ENVELOPE_NAME}.json](schemas/{ENVELOPE_NAME}.json)",
        "",
        "| attribute | required | value | meaning |",
        "|---|---|---|---|",
    ]
    for attribute, prop in body["properties"].items():
        required = "yes" if attribute in body["required"] else f"no (default `{json.dumps(prop.get('default'))}`)"
        if "const" in prop:
            value = f"`{prop['const']}`"
        elif "pattern" in prop:
            value = f"string, pattern `{prop['pattern']}`"
        elif "format" in prop:
            value = f"string ({prop['format']})"
        else:
            value = prop.get("type", "any JSON")
        lines.append(f"| `{attribute}` | {required} | {value} | {_cell(prop.get('description', ''))} |")
    return lines + [""]


def events_markdown() -> str:
    """docs/EVENTS.md: every topic, message, field and upcaster, for people."""
    catalogue = _Catalogue(values={})
    out = [
        "_Generated by `make contract` from `shared/contract/`: do not edit by hand (change the contract and "
        "regenerate)._",
        "",
        "# Event and command catalogue",
        "",
        "Every message of the system, by topic. The rules behind it (answering, ids, versioning, personal data) "
        "are in [CONTRACT.md](CONTRACT.md); the same contract in machine-readable form is "
        "[asyncapi.yaml](asyncapi.yaml) (AsyncAPI 3.0.0) and [schemas/](schemas/) (JSON Schema 2020-12).",
        "",
        "## Topics",
        "",
        "| topic | key | sent by | received by | messages |",
        "|---|---|---|---|---|",
    ]
    for channel in CHANNELS:
        carried = "dead letters" if channel.dead_letters else _list(f"`{cls.TYPE}`" for cls in channel.messages)
        out.append(
            f"| [`{channel.topic}`](#{channel.topic.replace('.', '')}) | {channel.key} | {_list(channel.senders)} | "
            f"{_list(channel.receivers)} | {carried} |"
        )
    out += [""] + _envelope_section()
    for channel in CHANNELS:
        out += [
            f"## {channel.topic}",
            "",
            channel.description,
            "",
            f"Key: {channel.key}. Sent by: {_list(channel.senders)}. Received by: {_list(channel.receivers)}.",
            "",
        ]
        if channel.dead_letters:
            out += ["Value: a [dead letter](#dead-letter), `application/json`.", ""]
        else:
            out += [f"Value: a CloudEvent (`{CLOUDEVENTS_CONTENT_TYPE}`) whose `data` is one of:", ""]
            for cls in channel.messages:
                out += _message_section(catalogue, cls)
    out += [
        "## Dead letter",
        "",
        f"`{DEAD_LETTER_NAME}` v{DEAD_LETTER_VERSION}. {_dead_letter_description()} "
        f"Schema: [schemas/{DEAD_LETTER_NAME}.v{DEAD_LETTER_VERSION}.json]"
        f"(schemas/{DEAD_LETTER_NAME}.v{DEAD_LETTER_VERSION}.json)",
        "",
        *catalogue.fields_table(DeadLetter),
        "",
        "## The saga's private facts",
        "",
        PRIVATE_NOTE + " They are versioned and upcast like the published messages all the same: the saga's log is "
        "kept forever and every later version of the saga reads it. In asyncapi.yaml they are listed under "
        "`components.schemas` only.",
        "",
    ]
    for cls in ALL_MESSAGES:
        if _private(cls):
            out += _message_section(catalogue, cls)
    out += _values_section(catalogue) + _upcasters_section()
    return "\n".join(out).rstrip("\n") + "\n"


def _values_section(catalogue: _Catalogue) -> list[str]:
    out = ["## Value objects", ""]
    done: set[str] = set()
    while set(catalogue.values) - done:  # a value may reveal further values
        for name in sorted(set(catalogue.values) - done):
            done.add(name)
            value = catalogue.values[name]
            out += [f"### {name}", ""]
            if _doc(value):
                out += [_doc(value), ""]
            if issubclass(value, msgspec.Struct):
                out += catalogue.fields_table(value) + [""]
            elif issubclass(value, enum.Enum):
                out += ["One of: " + ", ".join(f"`{m.value}`" for m in value) + ".", ""]
    return out


def _upcasters_section() -> list[str]:
    steps: dict[tuple[str, int], Any] = getattr(upcasting, "_STEPS", {})
    out = [
        "## Upcasters",
        "",
        "Registered steps (`registered_steps()`): the codec chains them when it reads an older version, from "
        "PostgreSQL and from Kafka alike.",
        "",
        "| type | step | what it does |",
        "|---|---|---|",
    ]
    for message_type, version in registered_steps():
        out.append(
            f"| `{message_type}` | v{version} → v{version + 1} | {_cell(_doc(steps.get((message_type, version))))} |"
        )
    return out + [""]


# ----------------------------------------------------------------------------------------------- files


def generate() -> dict[str, str]:
    """Every generated file, path relative to the repository root -> its exact text."""
    files = {
        f"{SCHEMAS_DIR}/{name}": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in schema_files().items()
    }
    files[ASYNCAPI_FILE] = asyncapi_yaml()
    files[EVENTS_FILE] = events_markdown()
    return files


def _strays(root: Path, files: dict[str, str]) -> list[str]:
    """Schema files nobody declares any more (docs/schemas/ belongs to the generator)."""
    found = (root / SCHEMAS_DIR).glob("*.json") if (root / SCHEMAS_DIR).is_dir() else []
    return sorted(rel for p in found if (rel := p.relative_to(root).as_posix()) not in files)


def check(root: Path = ROOT) -> list[str]:
    """The drifted files: missing, different from what the code generates, or no longer generated."""
    files = generate()
    drift = []
    for rel, text in files.items():
        path = root / rel
        if not path.is_file():
            drift.append(f"{rel} (missing)")
        elif path.read_bytes() != text.encode():
            drift.append(f"{rel} (differs)")
    drift += [f"{rel} (no longer generated)" for rel in _strays(root, files)]
    return drift


def write(root: Path = ROOT) -> list[str]:
    """Bring the files up to date; the ones changed (unchanged files are not touched)."""
    files = generate()
    changed = []
    for rel, text in files.items():
        path = root / rel
        data = text.encode()
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            changed.append(rel)
    for rel in _strays(root, files):
        (root / rel).unlink()
        changed.append(rel)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.contract.publish", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the drifted files")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        drift = check(args.root)
        for line in drift:
            print(line, file=sys.stderr)
        if drift:
            print(f"the published contract is out of date: {REGENERATE}", file=sys.stderr)
            return 1
        print("the published contract is up to date")
        return 0
    changed = write(args.root)
    for rel in changed:
        print(f"wrote {rel}")
    print(f"{len(changed)} file(s) changed" if changed else "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())

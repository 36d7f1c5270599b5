"""The human-readable catalogue docs/EVENTS.md: topics, messages, fields, value objects, upcasters."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

from shared.contract import upcasting
from shared.contract.base import MAX_CENTS, Command, Message
from shared.contract.dead_letter import DeadLetter
from shared.contract.publish.naming import (
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_NAME,
    DEAD_LETTER_VERSION,
    ENVELOPE_NAME,
    PRIVATE_NOTE,
    _doc,
    _key,
    _private,
    _summary,
    _upcast_from,
)
from shared.contract.publish.schemas import (
    _ENVELOPE_DESCRIPTION,
    _dead_letter_description,
    _envelope_body,
)
from shared.contract.registry import ALL_MESSAGES, CHANNELS, personal_fields
from shared.contract.upcasting import registered_steps


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
            required = "yes" if field.required else _optional(field)
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


def _optional(field: mi.Field) -> str:
    """How an optional field reads: its default, or absent (an attribute a dead letter may lack)."""
    if field.default is msgspec.NODEFAULT and field.default_factory is msgspec.NODEFAULT:
        return "no (may be absent)"
    return f"no (default `{_default(field)}`)"


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
            out += [f"Value: a [dead letter](#dead-letter), a CloudEvent (`{CLOUDEVENTS_CONTENT_TYPE}`).", ""]
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
        "## The order service's private facts",
        "",
        PRIVATE_NOTE + " They are versioned and upcast like the published messages all the same: the order "
        "service's log is kept forever and every later version of the saga reads it. In asyncapi.yaml they are listed "
        "under "
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

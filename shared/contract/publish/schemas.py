"""JSON Schema 2020-12 of every message's data, of the dead letter and of the CloudEvents envelope."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.contract import dead_letter as dead_letter_module
from shared.contract.base import Message
from shared.contract.dead_letter import DeadLetter
from shared.contract.envelope import CLOUDEVENTS_SPEC_VERSION, _CloudEvent
from shared.contract.publish.naming import (
    DEAD_LETTER_NAME,
    DEAD_LETTER_VERSION,
    ENVELOPE_ATTRIBUTES,
    ENVELOPE_NAME,
    ENVELOPE_REQUIRED,
    JSON_SCHEMA_DIALECT,
    _description,
    _doc,
    _key,
)
from shared.contract.registry import ALL_MESSAGES


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
    return _doc(DeadLetter)


def _dead_letter_summary() -> str:
    """The first line of the dead-letter module's docstring: the rest is for the description."""
    return (dead_letter_module.__doc__ or "A dead letter.").strip().splitlines()[0]


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

"""The AsyncAPI 3.0.0 document (docs/asyncapi.yaml) of every channel of the registry."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import yaml

from shared.contract.base import Command, Message
from shared.contract.dead_letter import DeadLetter
from shared.contract.publish.naming import (
    API_TITLE,
    API_VERSION,
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_NAME,
    DEAD_LETTER_VERSION,
    ENVELOPE_NAME,
    INFO_DESCRIPTION,
    KAFKA_BINDING_VERSION,
    SERVICE_DESCRIPTIONS,
    _channel_id,
    _channel_of,
    _dead_letter_message_id,
    _description,
    _doc,
    _key,
    _message_ids,
    _private,
    _summary,
    _title,
)
from shared.contract.publish.schemas import (
    _ENVELOPE_DESCRIPTION,
    _dead_letter_description,
    _dead_letter_summary,
    _envelope_body,
    _with_header,
)
from shared.contract.registry import ALL_MESSAGES, CHANNELS, SERVICES, Channel, personal_fields
from shared.contract.topics import DLQ_SUFFIX


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
        "summary": _dead_letter_summary(),
        "description": f"A message of `{source}` that a consumer could not process, with the error. "
        f"{_doc(DeadLetter)} The record keeps the original key ({channel.key}).",
        "contentType": CLOUDEVENTS_CONTENT_TYPE,
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

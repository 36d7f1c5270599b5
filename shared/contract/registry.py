"""Every message of the contract by its type name, and which service sends and receives each topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from shared.contract.base import PERSONAL_DATA_KEY, Message
from shared.contract.customer import CUSTOMER_FACTS
from shared.contract.order import ORDER_FACTS
from shared.contract.payment import PAYMENT_COMMANDS_DECLARED, PAYMENT_FACTS
from shared.contract.saga import SAGA_FACTS
from shared.contract.shipping import SHIPPING_COMMANDS_DECLARED, SHIPPING_FACTS
from shared.contract.topics import (
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    SHIPPING_EVENTS,
    dlq_topic,
)

ALL_MESSAGES: tuple[type[Message], ...] = (
    *ORDER_FACTS,
    *PAYMENT_COMMANDS_DECLARED,
    *PAYMENT_FACTS,
    *SHIPPING_COMMANDS_DECLARED,
    *SHIPPING_FACTS,
    *SAGA_FACTS,
    *CUSTOMER_FACTS,
)

MESSAGES: dict[str, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}
if len(MESSAGES) != len(ALL_MESSAGES):  # pragma: no cover - a declaration error, caught at import
    raise RuntimeError("two messages of the contract share a type name")


class UnknownMessageType(LookupError):
    """A type name the contract does not declare."""


def message_class(message_type: str) -> type[Message]:
    try:
        return MESSAGES[message_type]
    except KeyError:
        raise UnknownMessageType(f"unknown message type {message_type!r}") from None


def messages_on(topic: str) -> tuple[type[Message], ...]:
    return tuple(cls for cls in ALL_MESSAGES if cls.TOPIC == topic)


@dataclass(frozen=True)
class Channel:
    """A topic: what it carries, who writes it and who reads it (the AsyncAPI document's source)."""

    topic: str
    description: str
    key: str
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    dead_letters: bool = False

    @property
    def messages(self) -> tuple[type[Message], ...]:
        return () if self.dead_letters else messages_on(self.topic)


SERVICES = ("order", "payment", "shipping", "query")

_SOURCE_CHANNELS = (
    Channel(ORDER_EVENTS, "Facts of the Order aggregate. Kept forever.", "order id", ("order",), ("query",)),
    Channel(
        PAYMENT_EVENTS, "Facts of the Payment aggregate. Kept forever.", "payment id", ("payment",), ("order", "query")
    ),
    Channel(
        SHIPPING_EVENTS,
        "Facts of the Shipment aggregate. Kept forever.",
        "shipment id",
        ("shipping",),
        ("order", "query"),
    ),
    Channel(
        PAYMENT_COMMANDS,
        "Commands the saga sends the payment service. Kept a week.",
        "payment id",
        ("order",),
        ("payment",),
    ),
    Channel(
        SHIPPING_COMMANDS,
        "Commands the saga sends the shipping service. Kept a week.",
        "shipment id",
        ("order",),
        ("shipping",),
    ),
)

CHANNELS: tuple[Channel, ...] = _SOURCE_CHANNELS + tuple(
    Channel(
        dlq_topic(c.topic),
        f"Messages of `{c.topic}` a consumer could not process, with the error. Kept forever.",
        c.key,
        c.receivers,
        ("operator",),
        dead_letters=True,
    )
    for c in _SOURCE_CHANNELS
)


def personal_fields(cls: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """Dotted paths of the fields of `cls` marked as personal data (nested values included)."""
    found: list[str] = []
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        found += _personal_in(field.type, prefix + field.name)
    return found


def _personal_in(t: Any, path: str) -> list[str]:
    if isinstance(t, msgspec.inspect.Metadata):
        if (t.extra_json_schema or {}).get(PERSONAL_DATA_KEY):
            return [path]
        return _personal_in(t.type, path)
    if isinstance(t, msgspec.inspect.StructType):
        return personal_fields(t.cls, path + ".")
    if isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
        return _personal_in(t.item_type, path + "[]")
    if isinstance(t, msgspec.inspect.UnionType):
        return [p for member in t.types for p in _personal_in(member, path)]
    return []

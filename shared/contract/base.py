"""The building blocks every message of the contract is made of.

A message is a msgspec Struct: typed, frozen, validated when decoded and fast to encode (the
codec was chosen by measurement, see `bench/codecs.py`). Class variables say what the wire
needs to know about it: its CloudEvents `type`, its schema `VERSION` and the `TOPIC` that
carries it (None for a fact that never leaves its service's log). Field constraints become
the JSON Schema of the message; fields holding personal data are marked `x-personal-data`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

import msgspec

from shared.personal import PERSONAL_PATTERN, legacy

#: PostgreSQL BIGINT upper bound: money beyond it cannot be stored or summed safely.
MAX_CENTS = 2**63 - 1

PERSONAL_DATA_KEY = "x-personal-data"

Id = Annotated[str, msgspec.Meta(min_length=1, description="An identifier (usually a UUID).")]
Text = Annotated[str, msgspec.Meta(min_length=1)]
Cents = Annotated[int, msgspec.Meta(ge=0, le=MAX_CENTS, description="An amount in minor units.")]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$", description="ISO-4217 alphabetic code.")]
Country = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$", description="ISO-3166 alpha-2 code.")]
Personal = Annotated[
    str,
    msgspec.Meta(
        pattern=PERSONAL_PATTERN,
        extra_json_schema={PERSONAL_DATA_KEY: True},
        description="Personal data, sealed with the customer's data key: `pd1.<key id>.<base64url(nonce, "
        "AES-256-GCM ciphertext and tag)>` (shared/personal.py). `pd0.<base64url(text)>` is legacy clear text "
        "of a version 1 fact, made only by the upcasters when such a fact is read.",
    ),
]


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    """Any message of the contract. Every message names the order it belongs to."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str | None] = None

    order_id: Id


class Fact(Message, frozen=True, kw_only=True):
    """An immutable fact, named in the past tense, about one stream (its envelope's subject)."""


class Command(Message, frozen=True, kw_only=True):
    """An intent directed at one service; `TARGET` names the field holding the addressed aggregate."""

    TARGET: ClassVar[str]

    @property
    def target_id(self) -> str:
        value = getattr(self, self.TARGET)
        assert isinstance(value, str)
        return value


class Value(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A value object embedded in messages."""


class Money(Value, frozen=True, kw_only=True):
    amount_cents: Cents
    currency: Currency


class Address(Value, frozen=True, kw_only=True):
    """A postal address. The country stays in clear: shipping decides on it."""

    name: Personal
    line1: Personal
    city: Personal
    postal_code: Personal
    country: Country


#: The fields of an `Address` sealed with the customer's key (each sealed under its own name).
ADDRESS_PERSONAL_FIELDS = ("name", "line1", "city", "postal_code")


def legacy_address(data: dict[str, Any], field: str) -> dict[str, Any]:
    """For a v1 → v2 upcaster: `data` with the clear personal fields of its address `field`
    marked as legacy text (`pd0.`), as the sealed contract requires; nothing is encrypted."""
    address = data.get(field)
    if not isinstance(address, dict):
        return data
    marked = {
        name: legacy(value) if name in ADDRESS_PERSONAL_FIELDS and isinstance(value, str) and value else value
        for name, value in address.items()
    }
    return {**data, field: marked}


class OrderLine(Value, frozen=True, kw_only=True):
    sku: Text
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    unit_price_cents: Cents

    @property
    def line_total_cents(self) -> int:
        return self.quantity * self.unit_price_cents


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class PaymentStatus(StrEnum):
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


class ShipmentStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    FAILED = "FAILED"
    DISPATCHED = "DISPATCHED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"

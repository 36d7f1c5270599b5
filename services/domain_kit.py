"""Small pieces shared by the pure domains: the event shape they fold, and field checks.

Every check raises InvalidCommand naming the bad field, so an API can answer 422 with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, TypeVar

from services.domain_errors import InvalidCommand

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTRY = re.compile(r"[A-Z]{2}")


class EventLike(Protocol):
    """What `evolve` needs of an event: a NewEvent, a RecordedEvent or a Kafka Envelope."""

    @property
    def type(self) -> str: ...

    @property
    def data(self) -> Mapping[str, Any]: ...


#: PostgreSQL BIGINT upper bound: money beyond it cannot be stored or summed safely.
MAX_CENTS = 2**63 - 1


def require_text(value: object, field: str) -> str:
    """A non-blank string (ids, names, tokens)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidCommand(field, f"{field} must be a non-empty string")
    return value


def require_int(value: object, field: str, *, minimum: int, maximum: int = MAX_CENTS) -> int:
    """An integer in [minimum, maximum]; booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCommand(field, f"{field} must be an integer")
    if value < minimum:
        raise InvalidCommand(field, f"{field} must be >= {minimum}")
    if value > maximum:
        raise InvalidCommand(field, f"{field} must be <= {maximum}")
    return value


def require_currency(value: object, field: str = "currency") -> str:
    """ISO-4217 alphabetic code: exactly three upper-case letters."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidCommand(field, f"{field} must be a 3-letter upper-case ISO-4217 code")
    return value


def require_country(value: object, field: str) -> str:
    """ISO-3166 alpha-2 code: exactly two upper-case letters."""
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise InvalidCommand(field, f"{field} must be a 2-letter upper-case ISO-3166 code")
    return value


def require_mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidCommand(field, f"{field} must be an object")
    return value


def field_of(data: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    """Read a required key of message data; a missing key is an invalid command."""
    if name not in data:
        raise InvalidCommand(prefix + name, f"{prefix}{name} is required")
    return data[name]


E = TypeVar("E", bound=EventLike)


def latest_of(history: Sequence[E], types: Iterable[str]) -> E | None:
    """The most recent fact of one of `types`: the recorded answer to a repeated command."""
    wanted = frozenset(types)
    for event in reversed(history):
        if event.type in wanted:
            return event
    return None


@dataclass(frozen=True, slots=True)
class Address:
    """A postal address, as the order records it and the shipment carries it."""

    name: str
    line1: str
    city: str
    postal_code: str
    country: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "line1": self.line1,
            "city": self.city,
            "postal_code": self.postal_code,
            "country": self.country,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: str) -> "Address":
        data = require_mapping(data, field)
        prefix = field + "."
        return cls(
            name=field_of(data, "name", prefix),
            line1=field_of(data, "line1", prefix),
            city=field_of(data, "city", prefix),
            postal_code=field_of(data, "postal_code", prefix),
            country=field_of(data, "country", prefix),
        )

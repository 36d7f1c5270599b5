"""Small pieces the pure domains share: field checks, and the recorded answer to a repeated command.

A message decoded from Kafka has already been validated against the contract, but a command
built in-process (from an HTTP request, by a test, by the saga's simulations) has not: a
domain checks the rules it relies on itself. Every check raises InvalidCommand naming the bad
field, so an API can answer 422 with it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from shared.contract import MAX_CENTS, Fact
from shared.errors import InvalidCommand
from shared.eventstore import Recorded

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTRY = re.compile(r"[A-Z]{2}")


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


def latest_of(history: Sequence[Recorded], kinds: Collection[type[Fact]]) -> Recorded | None:
    """The most recent fact of one of the classes `kinds`: the recorded answer to a repeated command."""
    wanted = tuple(kinds)
    for event in reversed(history):
        if isinstance(event.data, wanted):
            return event
    return None

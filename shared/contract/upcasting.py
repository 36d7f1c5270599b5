"""Schema evolution: a fact is never rewritten; an upcaster turns its data at version N into N+1.

Upcasters are declared beside the message they evolve (`@upcaster(type, from_version=N)`) and
chained by the codec when it reads an older fact, from the database or from Kafka alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_STEPS: dict[tuple[str, int], Upcaster] = {}


def upcaster(*message_types: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn` as the step from `from_version` to `from_version + 1` of each type."""

    def register(fn: Upcaster) -> Upcaster:
        for message_type in message_types:
            key = (message_type, from_version)
            if key in _STEPS:
                raise ValueError(f"an upcaster for {message_type} v{from_version} is already registered")
            _STEPS[key] = fn
        return fn

    return register


def upcast(message_type: str, version: int, to_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Chain the steps from `version` to `to_version`; a missing step is a LookupError."""
    while version < to_version:
        step = _STEPS.get((message_type, version))
        if step is None:
            raise LookupError(f"no upcaster for {message_type} v{version}")
        data = step(data)
        version += 1
    return data


def registered_steps() -> list[tuple[str, int]]:
    """Every (type, from_version) step, for documentation and tests."""
    return sorted(_STEPS)

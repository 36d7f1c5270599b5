"""Schema evolution of stored facts: old payloads are upcast to the current shape on read.

Stored events are never rewritten; an upcaster turns (type, version N) data into version N+1.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: `fn` turns `event_type` data at `from_version` into `from_version + 1`."""

        def add(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
            self._steps[key] = fn
            return fn

        return add

    def upcast(self, event_type: str, schema_version: int, data: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        current = dict(data)
        version = schema_version
        while (step := self._steps.get((event_type, version))) is not None:
            current = step(current)
            version += 1
        return version, current


NO_UPCASTERS = UpcasterRegistry()

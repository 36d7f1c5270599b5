"""Old facts are read in the current shape; stored data is never rewritten."""
from __future__ import annotations

from typing import Any

import pytest

from shared.upcasting import UpcasterRegistry


def test_upcasters_chain_from_any_old_version_to_the_current_one() -> None:
    registry = UpcasterRegistry()

    @registry.register("order.placed", 1)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    @registry.register("order.placed", 2)
    def rename_total(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data["total_cents"] = data.pop("total")
        return data

    original = {"order_id": "o", "total": 100}
    assert registry.upcast("order.placed", 1, original) == (3, {"order_id": "o", "currency": "EUR", "total_cents": 100})
    assert original == {"order_id": "o", "total": 100}, "the stored payload is not mutated"
    assert registry.upcast("order.placed", 2, {"total": 5, "currency": "USD"}) == (3, {"total_cents": 5, "currency": "USD"})
    assert registry.upcast("order.placed", 3, {"total_cents": 5}) == (3, {"total_cents": 5})
    assert registry.upcast("order.cancelled", 1, {"reason": "x"}) == (1, {"reason": "x"})


def test_a_second_upcaster_for_the_same_step_is_refused() -> None:
    registry = UpcasterRegistry()
    registry.register("t", 1)(lambda d: d)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("t", 1)(lambda d: d)

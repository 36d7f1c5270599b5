"""Old facts are read in the current shape; stored data is never rewritten."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contract import PAYMENT_FACTS, MessageFormatError, SagaStepRequested, decode_data, encode_data
from shared.contract import upcasting as registry
from shared.contract.upcasting import registered_steps, upcast, upcaster


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps registered by a test stay out of the contract's own registry."""
    monkeypatch.setattr(registry, "_STEPS", {})


@pytest.mark.usefixtures("private_registry")
def test_upcasters_chain_from_any_old_version_to_the_current_one() -> None:
    @upcaster("test.placed", from_version=1)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    @upcaster("test.placed", from_version=2)
    def rename_total(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data["total_cents"] = data.pop("total")
        return data

    original = {"order_id": "o", "total": 100}
    assert upcast("test.placed", 1, 3, original) == {"order_id": "o", "currency": "EUR", "total_cents": 100}
    assert original == {"order_id": "o", "total": 100}, "the stored payload is not mutated"
    assert upcast("test.placed", 2, 3, {"total": 5, "currency": "USD"}) == {"total_cents": 5, "currency": "USD"}
    assert upcast("test.placed", 3, 3, {"total_cents": 5}) == {"total_cents": 5}
    with pytest.raises(LookupError, match="no upcaster for test.cancelled v1"):
        upcast("test.cancelled", 1, 2, {"reason": "x"})


@pytest.mark.usefixtures("private_registry")
def test_a_second_upcaster_for_the_same_step_is_refused() -> None:
    upcaster("test.t", from_version=1)(lambda d: d)
    with pytest.raises(ValueError, match="already registered"):
        upcaster("test.t", from_version=1)(lambda d: d)


def test_the_contract_registers_a_step_for_every_fact_whose_version_moved_on() -> None:
    steps = set(registered_steps())
    assert {(fact.TYPE, 1) for fact in PAYMENT_FACTS} <= steps
    assert (SagaStepRequested.TYPE, 1) in steps
    with pytest.raises(ValueError, match="already registered"):
        upcaster(PAYMENT_FACTS[0].TYPE, from_version=1)(lambda d: d)


def test_saga_step_requested_v1_names_the_command_and_drops_its_copy_and_the_token() -> None:
    v1 = (
        b'{"command": {"data": {"currency": "EUR", "order_id": "o-1", "payment_id": "p-1", "amount_cents": 3000,'
        b' "payment_token": "tok_visa"}, "type": "payment.authorize", "topic": "payment.commands", "target_id": "p-1",'
        b' "command_id": "c-1"}, "order_id": "o-1", "defensive": false, "requested_at": "2026-11-30T00:04:33.010452+00:00"}'
    )
    step = decode_data(SagaStepRequested.TYPE, 1, v1)
    assert isinstance(step, SagaStepRequested)
    assert (step.command_type, step.target_id, step.command_id, step.defensive) == (
        "payment.authorize",
        "p-1",
        "c-1",
        False,
    )
    assert b"tok_visa" not in encode_data(step)
    with pytest.raises(MessageFormatError, match="does not match its schema"):
        decode_data(SagaStepRequested.TYPE, 1, b'{"order_id": "o-1", "requested_at": "2026-11-30T00:04:33Z"}')

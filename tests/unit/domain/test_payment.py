"""The Payment aggregate: authorize rules, transitions, refusals and duplicate answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.payment import domain as p
from services.payment.domain import PaymentState
from shared.contract import (
    AuthorizePayment,
    CapturePayment,
    Envelope,
    Fact,
    Money,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentCommand,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentStatus,
    PaymentVoided,
    RefundPayment,
    VoidPayment,
    decode_data,
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound
from shared.eventstore import Recorded
from shared.ids import derived_id

ORDER_ID = "order-1"
PAYMENT_ID = derived_id(ORDER_ID, "payment")
LIMIT = p.DEFAULT_LIMIT_CENTS
V1_PAYMENT_FACTS = Path(__file__).parents[2] / "fixtures" / "v1" / "payment_events.jsonl"


def decide(command: PaymentCommand, state: PaymentState, limit: int = LIMIT) -> list[PaymentFact]:
    return p.decide(command, state, limit_cents=limit)


def authorize(
    token: str = "tok_ok", amount: int = 2999, currency: str = "EUR", payment_id: str = PAYMENT_ID
) -> AuthorizePayment:
    return AuthorizePayment(
        payment_id=payment_id, order_id=ORDER_ID, amount_cents=amount, currency=currency, payment_token=token
    )


def capture() -> CapturePayment:
    return CapturePayment(payment_id=PAYMENT_ID, order_id=ORDER_ID)


def void(reason: str = "x") -> VoidPayment:
    return VoidPayment(payment_id=PAYMENT_ID, order_id=ORDER_ID, reason=reason)


def refund(reason: str = "x") -> RefundPayment:
    return RefundPayment(payment_id=PAYMENT_ID, order_id=ORDER_ID, reason=reason)


def run(state: PaymentState, command: PaymentCommand) -> PaymentState:
    for fact in decide(command, state):
        state = p.evolve(state, fact)
    return state


def authorized() -> PaymentState:
    return run(PaymentState(), authorize())


def captured() -> PaymentState:
    return run(authorized(), capture())


def voided() -> PaymentState:
    return run(authorized(), void("cancelled_by_customer"))


def refunded() -> PaymentState:
    return run(captured(), refund("cancelled_by_customer"))


def declined() -> PaymentState:
    return run(PaymentState(), authorize(token="tok_decline"))


def recorded(facts: Sequence[Fact]) -> list[Recorded]:
    """Facts as a stream would record them (for `find_answer`)."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Envelope(
            id=str(uuid.uuid4()),
            source="/test",
            subject=PAYMENT_ID,
            sequence=n,
            time=when,
            correlation_id=ORDER_ID,
            causation_id="c",
            data=fact,
        )
        for n, fact in enumerate(facts, start=1)
    ]


EUR_2999 = Money(amount_cents=2999, currency="EUR")


def test_authorize() -> None:
    [fact] = decide(authorize(), PaymentState())
    assert fact == PaymentAuthorized(payment_id=PAYMENT_ID, order_id=ORDER_ID, amount=EUR_2999)
    assert msgspec.to_builtins(fact) == {
        "order_id": ORDER_ID,
        "payment_id": PAYMENT_ID,
        "amount": {"amount_cents": 2999, "currency": "EUR"},
    }
    state = authorized()
    assert state.status is PaymentStatus.AUTHORIZED and state.version == 1 and state.amount_cents == 2999
    assert state.amount == EUR_2999


def test_decline_token() -> None:
    [fact] = decide(authorize(token="tok_decline"), PaymentState())
    assert isinstance(fact, PaymentDeclined)
    assert fact.reason == "card_declined"
    assert declined().status is PaymentStatus.DECLINED and declined().reason == "card_declined"


def test_decline_over_limit_but_not_at_limit() -> None:
    [fact] = decide(authorize(amount=1_000_001), PaymentState())
    assert isinstance(fact, PaymentDeclined) and fact.reason == "amount_over_limit"
    assert isinstance(decide(authorize(amount=1_000_000), PaymentState())[0], PaymentAuthorized)
    [fact] = decide(authorize(amount=600), PaymentState(), limit=500)
    assert isinstance(fact, PaymentDeclined) and fact.reason == "amount_over_limit"


def test_the_limit_is_a_policy_argument_not_a_command_field() -> None:
    assert "limit_cents" not in AuthorizePayment.__struct_fields__
    with pytest.raises(TypeError):
        p.decide(authorize(), PaymentState())  # type: ignore[call-arg]


def test_duplicate_authorize_yields_nothing_and_find_answer_re_answers() -> None:
    history = recorded(decide(authorize(), PaymentState()))
    state = p.fold(e.data for e in history)
    assert decide(authorize(), state) == []
    assert decide(authorize(token="tok_decline"), state) == []
    assert p.find_answer(authorize(), history) is history[0]
    assert p.find_answer(capture(), history) is None


def test_find_answer_takes_the_latest_answering_fact() -> None:
    history = recorded([*decide(authorize(), PaymentState()), *decide(capture(), authorized())])
    assert p.find_answer(capture(), history) is history[1]
    assert p.find_answer(authorize(), history) is history[0]
    assert p.find_answer(void(), history) is None


def test_capture_void_refund() -> None:
    assert captured().status is PaymentStatus.CAPTURED
    [fact] = decide(capture(), authorized())
    assert fact == PaymentCaptured(payment_id=PAYMENT_ID, order_id=ORDER_ID, amount=EUR_2999)
    [fact] = decide(void("shipping_failed:destination_not_served"), authorized())
    assert fact == PaymentVoided(
        payment_id=PAYMENT_ID, order_id=ORDER_ID, amount=EUR_2999, reason="shipping_failed:destination_not_served"
    )
    assert voided().status is PaymentStatus.VOIDED
    [fact] = decide(refund("cancelled_by_customer"), captured())
    assert isinstance(fact, PaymentRefunded) and fact.amount.amount_cents == 2999
    assert refunded().status is PaymentStatus.REFUNDED and refunded().version == 3


def test_repeats_are_idempotent() -> None:
    assert decide(capture(), captured()) == []
    assert decide(capture(), refunded()) == []
    assert decide(void(), voided()) == []
    assert decide(refund(), refunded()) == []


@pytest.mark.parametrize(
    ("state_factory", "command"),
    [
        (voided, capture()),
        (declined, capture()),
        (captured, void()),
        (refunded, void()),
        (declined, void()),
        (authorized, refund()),
        (voided, refund()),
        (declined, refund()),
    ],
)
def test_illegal_transitions(state_factory: Any, command: PaymentCommand) -> None:
    with pytest.raises(IllegalTransition):
        decide(command, state_factory())


@pytest.mark.parametrize("command", [capture(), void("payment_timeout"), refund()])
def test_commands_before_authorize_are_not_found_and_record_nothing(command: PaymentCommand) -> None:
    with pytest.raises(NotFound):
        decide(command, PaymentState())
    # The refused void leaves no trace: a later (in-order) authorize still works.
    assert isinstance(decide(authorize(), PaymentState())[0], PaymentAuthorized)


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (authorize(amount=-1), "amount_cents"),
        (authorize(currency="eu"), "currency"),
        (authorize(token=""), "payment_token"),
        (authorize(payment_id=""), "payment_id"),
        (void(""), "reason"),
    ],
)
def test_invalid_commands(command: PaymentCommand, field: str) -> None:
    """Commands built in-process are not validated by the codec: the domain checks its rules."""
    with pytest.raises(InvalidCommand) as info:
        decide(command, authorized() if isinstance(command, VoidPayment) else PaymentState())
    assert info.value.field == field


def test_fold_rebuilds_state() -> None:
    facts: list[Fact] = []
    state = PaymentState()
    for command in (authorize(), capture(), refund("r")):
        new = decide(command, state)
        facts += new
        for fact in new:
            state = p.evolve(state, fact)
    assert p.fold(facts) == state
    assert (state.status, state.reason, state.version) == (PaymentStatus.REFUNDED, "r", 3)


def fact_of(message_type: str, schema_version: int, data: str | bytes) -> Fact:
    fact = decode_data(message_type, schema_version, data)
    assert isinstance(fact, Fact)
    return fact


def _v1_streams() -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = {}
    for line in V1_PAYMENT_FACTS.read_text().splitlines():
        row = json.loads(line)
        streams.setdefault(row["stream_id"], []).append(row)
    return streams


def _v2_equivalent(row: dict[str, Any]) -> bytes:
    """The fact as the current code writes it: the flat amount as one `amount` value."""
    data = {k: v for k, v in row["data"].items() if k not in ("amount_cents", "currency")}
    data["amount"] = {"amount_cents": row["data"]["amount_cents"], "currency": row["data"]["currency"]}
    return json.dumps(data).encode()


def test_v1_payment_facts_upcast_to_the_same_state_as_their_v2_equivalents() -> None:
    streams = _v1_streams()
    assert sum(len(rows) for rows in streams.values()) == 40
    statuses = set()
    for rows in streams.values():
        assert {row["schema_version"] for row in rows} == {1}
        v1 = [fact_of(row["type"], 1, json.dumps(row["data"])) for row in rows]
        v2 = [fact_of(row["type"], 2, _v2_equivalent(row)) for row in rows]
        assert v1 == v2
        state = p.fold(v1)
        assert state == p.fold(v2)
        first = rows[0]["data"]
        assert (state.amount_cents, state.currency, state.version) == (
            first["amount_cents"],
            first["currency"],
            len(rows),
        )
        assert state.payment_id == rows[0]["stream_id"] and state.order_id == first["order_id"]
        statuses.add(state.status)
    # The fixture covers every outcome a finished payment can reach (none is left only authorized).
    assert statuses == set(PaymentStatus) - {PaymentStatus.AUTHORIZED}


def test_a_v1_captured_payment_can_still_be_refunded() -> None:
    rows = next(rows for rows in _v1_streams().values() if rows[-1]["type"] == PaymentCaptured.TYPE)
    state = p.fold(fact_of(row["type"], 1, json.dumps(row["data"])) for row in rows)
    [fact] = p.decide(
        RefundPayment(payment_id=state.payment_id, order_id=state.order_id, reason="r"), state, limit_cents=LIMIT
    )
    assert fact == PaymentRefunded(
        payment_id=state.payment_id,
        order_id=state.order_id,
        amount=Money(amount_cents=rows[0]["data"]["amount_cents"], currency=rows[0]["data"]["currency"]),
        reason="r",
    )

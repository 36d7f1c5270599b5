"""The Payment aggregate: authorize rules, transitions, refusals and duplicate answers."""
from __future__ import annotations

from typing import Any

import pytest

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.payment import domain as p
from services.payment.domain import (
    AuthorizePayment,
    CapturePayment,
    PaymentState,
    PaymentStatus,
    RefundPayment,
    VoidPayment,
)
from shared.ids import derived_id

ORDER_ID = "order-1"
PAYMENT_ID = derived_id(ORDER_ID, "payment")


def authorize(token: str = "tok_ok", amount: int = 2999, limit: int = p.DEFAULT_LIMIT_CENTS) -> AuthorizePayment:
    return AuthorizePayment(PAYMENT_ID, ORDER_ID, amount, "EUR", token, limit)


def run(state: PaymentState, command: p.PaymentCommand) -> PaymentState:
    for event in p.decide(command, state):
        state = p.evolve(state, event)
    return state


def authorized() -> PaymentState:
    return run(PaymentState(), authorize())


def captured() -> PaymentState:
    return run(authorized(), CapturePayment(PAYMENT_ID, ORDER_ID))


def voided() -> PaymentState:
    return run(authorized(), VoidPayment(PAYMENT_ID, ORDER_ID, "cancelled_by_customer"))


def refunded() -> PaymentState:
    return run(captured(), RefundPayment(PAYMENT_ID, ORDER_ID, "cancelled_by_customer"))


def declined() -> PaymentState:
    return run(PaymentState(), authorize(token="tok_decline"))


def test_authorize() -> None:
    [event] = p.decide(authorize(), PaymentState())
    assert event.type == "payment.authorized"
    assert event.data == {"payment_id": PAYMENT_ID, "order_id": ORDER_ID, "amount_cents": 2999, "currency": "EUR"}
    state = authorized()
    assert state.status is PaymentStatus.AUTHORIZED and state.version == 1 and state.amount_cents == 2999


def test_decline_token() -> None:
    [event] = p.decide(authorize(token="tok_decline"), PaymentState())
    assert event.type == "payment.declined"
    assert event.data["reason"] == "card_declined"
    assert declined().status is PaymentStatus.DECLINED and declined().reason == "card_declined"


def test_decline_over_limit_but_not_at_limit() -> None:
    [event] = p.decide(authorize(amount=1_000_001), PaymentState())
    assert event.type == "payment.declined" and event.data["reason"] == "amount_over_limit"
    assert p.decide(authorize(amount=1_000_000), PaymentState())[0].type == "payment.authorized"
    assert p.decide(authorize(amount=600, limit=500), PaymentState())[0].data["reason"] == "amount_over_limit"


def test_duplicate_authorize_yields_nothing_and_find_answer_re_answers() -> None:
    history = p.decide(authorize(), PaymentState())
    state = p.fold(history)
    assert p.decide(authorize(), state) == []
    assert p.decide(authorize(token="tok_decline"), state) == []
    assert p.find_answer(authorize(), history) is history[0]
    assert p.find_answer(CapturePayment(PAYMENT_ID, ORDER_ID), history) is None


def test_capture_void_refund() -> None:
    assert captured().status is PaymentStatus.CAPTURED
    [event] = p.decide(CapturePayment(PAYMENT_ID, ORDER_ID), authorized())
    assert event.type == "payment.captured"
    assert event.data == {"payment_id": PAYMENT_ID, "order_id": ORDER_ID, "amount_cents": 2999, "currency": "EUR"}
    [event] = p.decide(VoidPayment(PAYMENT_ID, ORDER_ID, "shipping_failed:destination_not_served"), authorized())
    assert event.type == "payment.voided" and event.data["reason"] == "shipping_failed:destination_not_served"
    assert voided().status is PaymentStatus.VOIDED
    [event] = p.decide(RefundPayment(PAYMENT_ID, ORDER_ID, "cancelled_by_customer"), captured())
    assert event.type == "payment.refunded" and event.data["amount_cents"] == 2999
    assert refunded().status is PaymentStatus.REFUNDED and refunded().version == 3


def test_repeats_are_idempotent() -> None:
    assert p.decide(CapturePayment(PAYMENT_ID, ORDER_ID), captured()) == []
    assert p.decide(CapturePayment(PAYMENT_ID, ORDER_ID), refunded()) == []
    assert p.decide(VoidPayment(PAYMENT_ID, ORDER_ID, "x"), voided()) == []
    assert p.decide(RefundPayment(PAYMENT_ID, ORDER_ID, "x"), refunded()) == []


@pytest.mark.parametrize(
    ("state_factory", "command"),
    [
        (voided, CapturePayment(PAYMENT_ID, ORDER_ID)),
        (declined, CapturePayment(PAYMENT_ID, ORDER_ID)),
        (captured, VoidPayment(PAYMENT_ID, ORDER_ID, "x")),
        (refunded, VoidPayment(PAYMENT_ID, ORDER_ID, "x")),
        (declined, VoidPayment(PAYMENT_ID, ORDER_ID, "x")),
        (authorized, RefundPayment(PAYMENT_ID, ORDER_ID, "x")),
        (voided, RefundPayment(PAYMENT_ID, ORDER_ID, "x")),
        (declined, RefundPayment(PAYMENT_ID, ORDER_ID, "x")),
    ],
)
def test_illegal_transitions(state_factory: Any, command: p.PaymentCommand) -> None:
    with pytest.raises(IllegalTransition):
        p.decide(command, state_factory())


@pytest.mark.parametrize(
    "command",
    [
        CapturePayment(PAYMENT_ID, ORDER_ID),
        VoidPayment(PAYMENT_ID, ORDER_ID, "payment_timeout"),
        RefundPayment(PAYMENT_ID, ORDER_ID, "x"),
    ],
)
def test_commands_before_authorize_are_not_found_and_record_nothing(command: p.PaymentCommand) -> None:
    with pytest.raises(NotFound):
        p.decide(command, PaymentState())
    # The refused void leaves no trace: a later (in-order) authorize still works.
    assert p.decide(authorize(), PaymentState())[0].type == "payment.authorized"


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (AuthorizePayment(PAYMENT_ID, ORDER_ID, -1, "EUR", "tok"), "amount_cents"),
        (AuthorizePayment(PAYMENT_ID, ORDER_ID, 1, "eu", "tok"), "currency"),
        (AuthorizePayment(PAYMENT_ID, ORDER_ID, 1, "EUR", ""), "payment_token"),
        (AuthorizePayment("", ORDER_ID, 1, "EUR", "tok"), "payment_id"),
        (VoidPayment(PAYMENT_ID, ORDER_ID, ""), "reason"),
    ],
)
def test_invalid_commands(command: p.PaymentCommand, field: str) -> None:
    with pytest.raises(InvalidCommand) as info:
        p.decide(command, authorized() if isinstance(command, VoidPayment) else PaymentState())
    assert info.value.field == field


def test_command_from_message() -> None:
    data = {"payment_id": PAYMENT_ID, "order_id": ORDER_ID, "amount_cents": 5, "currency": "EUR", "payment_token": "t"}
    command = p.command_from_message("payment.authorize", data, limit_cents=7)
    assert command == AuthorizePayment(PAYMENT_ID, ORDER_ID, 5, "EUR", "t", 7)
    assert p.command_from_message("payment.capture", data) == CapturePayment(PAYMENT_ID, ORDER_ID)
    assert p.command_from_message("payment.void", {**data, "reason": "r"}) == VoidPayment(PAYMENT_ID, ORDER_ID, "r")
    assert p.command_from_message("payment.refund", {**data, "reason": "r"}) == RefundPayment(PAYMENT_ID, ORDER_ID, "r")
    with pytest.raises(InvalidCommand) as info:
        p.command_from_message("payment.authorize", {"payment_id": PAYMENT_ID, "order_id": ORDER_ID})
    assert info.value.field == "amount_cents"
    with pytest.raises(InvalidCommand):
        p.command_from_message("payment.steal", data)


def test_fold_rebuilds_state() -> None:
    events = []
    state = PaymentState()
    for command in (authorize(), CapturePayment(PAYMENT_ID, ORDER_ID), RefundPayment(PAYMENT_ID, ORDER_ID, "r")):
        new = p.decide(command, state)
        events += new
        for event in new:
            state = p.evolve(state, event)
    assert p.fold(events) == state
    assert state.to_dict()["status"] == "REFUNDED" and state.to_dict()["reason"] == "r"

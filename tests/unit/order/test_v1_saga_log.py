"""The saga's log written by the previous code (schema version 1, tests/fixtures/v1) is still the
truth: read through the contract (v1 `saga.step_requested` upcast to v2, which drops its copy of
the command and the payment token in it), it folds to the state the new code reaches on the
same journey, and the new code, fed the same triggers at the same moments, decides exactly the
same facts and sends exactly the same commands (ids included)."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest

from services.order import domain, saga
from services.order.domain import OrderState
from shared.contract import (
    AuthorizePayment,
    Fact,
    OrderFact,
    SagaCancelRequested,
    SagaFact,
    SagaReplyReceived,
    SagaStarted,
    SagaStepRequested,
    SagaTimedOut,
    ScheduleShipment,
    encode_data,
)
from tests.unit.order import v1_fixtures as v1

ORDERS = v1.order_ids()


def _trigger(fact: Fact, order: OrderState, token: str) -> tuple[saga.SagaTrigger, datetime]:
    """The trigger that began a v1 decision (its first fact says which, and when)."""
    match fact:
        case SagaStarted():
            assert fact.started_at is not None
            return saga.StartSaga.for_order(order, token, fact.step_timeout_s), fact.started_at
        case SagaReplyReceived():
            return saga.ReplyReceived(fact.reply_id, v1.participant_facts()[fact.reply_id]), fact.received_at
        case SagaCancelRequested():
            return saga.CancelRequested(), fact.requested_at
        case SagaTimedOut():
            return saga.StepTimedOut(), fact.at
    raise AssertionError(f"a decision cannot begin with {fact!r}")


def test_the_fixtures_hold_every_journey_and_the_tokens_they_must_no_longer_show() -> None:
    assert len(ORDERS) == 21
    step_rows = [r for r in v1.order_rows() if r.type == "saga.step_requested"]
    with_token = [r for r in step_rows if "payment_token" in r.data["command"]["data"]]
    assert len(with_token) == 21 and all(r.schema_version == 1 for r in step_rows)


@pytest.mark.parametrize("order_id", ORDERS)
def test_v1_saga_log_folds_to_what_the_new_code_decides(order_id: str) -> None:
    token: str = v1.expected()["orders"][order_id]["input"]["payment_token"]
    old_saga: list[SagaFact] = []
    for row in v1.streams()[saga.saga_stream_id(order_id)]:
        fact = row.fact
        assert isinstance(fact, SagaFact)
        old_saga.append(fact)
    old_order: list[OrderFact] = []
    for row in v1.streams()[order_id]:
        fact = row.fact
        assert isinstance(fact, OrderFact)
        old_order.append(fact)

    # Read through the contract, the old log holds no token any more.
    for fact in old_saga:
        assert token.encode() not in encode_data(fact)
    steps = [f for f in old_saga if isinstance(f, SagaStepRequested)]
    assert steps and all(f.command_type and f.target_id and f.command_id for f in steps)

    # Replay the journey's triggers through the new code, at the moments the old code saw them.
    state, order = saga.SagaState(), domain.fold(old_order[:1])
    new_saga: list[SagaFact] = []
    new_order: list[OrderFact] = list(old_order[:1])
    sent: list[saga.Outgoing] = []
    while len(new_saga) < len(old_saga):
        trigger, now = _trigger(old_saga[len(new_saga)], order, token)
        decision = saga.decide(trigger, state, now)
        assert decision.saga_facts, (order_id, trigger)
        new_saga += decision.saga_facts
        sent += decision.commands
        for command in decision.order_commands:
            for fact in domain.decide(command, order):
                order = domain.evolve(order, fact)
                new_order.append(fact)
        state = decision.state

    assert new_saga == old_saga
    assert new_order == old_order
    assert saga.fold(old_saga) == state == saga.fold(new_saga)
    assert domain.fold(old_order) == order

    # The commands are the ones the old code sent, ids and payment token included; the new code
    # adds the order's customer (payment.authorize v2, shipment.schedule v2), which v1 lacked.
    messages = v1.command_messages()
    for outgoing in sent:
        topic, message = messages[outgoing.command_id]
        command = outgoing.command
        if isinstance(command, AuthorizePayment | ScheduleShipment):
            assert command.customer_id == order.customer_id
            command = msgspec.structs.replace(command, customer_id=None)
        assert (topic, message) == (outgoing.command.TOPIC, command)
    authorize = [o.command for o in sent if isinstance(o.command, AuthorizePayment)]
    assert [a.payment_token for a in authorize] == [token]
    assert state.order_id == order_id and state.history

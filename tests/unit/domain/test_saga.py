"""The fulfillment saga: every fulfilment path, cancels, timeouts, duplicates, late and
out-of-order replies, driven through the real domains in a simulated world.

One module on purpose, over the usual size: it is the saga's catalogue of behaviours, section
by section, and every section shares the same world and helpers."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from services.order import saga
from services.order.domain import CancelOrder, ConfirmOrder, DeliverOrder, RejectOrder, ShipOrder
from services.order.views import SagaView
from shared.contract import (
    PAYMENT_FACTS,
    AuthorizePayment,
    CapturePayment,
    Fact,
    Money,
    OrderLine,
    OrderPlaced,
    OrderStatus,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentStatus,
    RefundPayment,
    SagaOrderCommandIssued,
    SagaStepRequested,
    SagaTimedOut,
    ScheduleShipment,
    ShipmentScheduled,
    ShipmentStatus,
    VoidPayment,
    encode_data,
)
from shared.errors import IllegalTransition, NotFound
from shared.ids import derived_id

from .world import ADDRESS, ITEMS, T0, World

ORDER_ID = "order-1"
PAYMENT_ID = derived_id(ORDER_ID, "payment")
SHIPMENT_ID = derived_id(ORDER_ID, "shipment")
TOTAL = 2 * 1250 + 499


def payment_answers(w: World) -> saga.SagaDecision | None:
    """The payment service processes its oldest command and the saga gets the answer."""
    assert w.run_command(PAYMENT_ID)
    return w.deliver_reply("payment")


def shipping_answers(w: World) -> saga.SagaDecision | None:
    assert w.run_command(SHIPMENT_ID)
    return w.deliver_reply("shipping")


def status(w: World) -> OrderStatus | None:
    """The order's status now (a call, so earlier checks do not narrow it for mypy)."""
    return w.order.status


def types(decision: saga.SagaDecision) -> list[str]:
    return [f.TYPE for f in decision.saga_facts]


def command_types(decision: saga.SagaDecision | None) -> list[str]:
    assert decision is not None
    return [c.command.TYPE for c in decision.commands]


def timed_out_of(decision: saga.SagaDecision) -> SagaTimedOut:
    return next(f for f in decision.saga_facts if isinstance(f, SagaTimedOut))


def confirmed_world(**kwargs: Any) -> World:
    w = World(**kwargs)
    w.place()
    payment_answers(w)
    shipping_answers(w)
    payment_answers(w)
    assert status(w) is OrderStatus.CONFIRMED
    return w


def reply(kind: type[Fact], reply_id: str | None = None, **fields: Any) -> saga.ReplyReceived:
    """A participant's fact about this order (its usual fields, unless `fields` say otherwise)."""
    base: dict[str, Any] = {"order_id": ORDER_ID}
    if kind in PAYMENT_FACTS:
        base |= {"payment_id": PAYMENT_ID, "amount": Money(amount_cents=TOTAL, currency="EUR")}
    elif kind is not OrderPlaced:
        base |= {"shipment_id": SHIPMENT_ID}
    return saga.ReplyReceived(reply_id or str(uuid.uuid4()), kind(**(base | fields)))


# --------------------------------------------------------------------------- 1. start


def test_start_requests_authorization_with_a_deadline() -> None:
    w = World()
    d = w.place()
    assert types(d) == ["saga.started", "saga.step_requested", "saga.deadline_set"]
    [sent] = d.commands
    assert sent.command.TYPE == "payment.authorize" and sent.command.target_id == PAYMENT_ID
    assert sent.command == AuthorizePayment(
        payment_id=PAYMENT_ID,
        order_id=ORDER_ID,
        amount_cents=TOTAL,
        currency="EUR",
        payment_token="tok_ok",
        customer_id="cust-1",  # the order's customer, so the payment service can scope reads
    )
    assert sent.command_id == derived_id(ORDER_ID, "saga-command:2")  # the version of its step fact
    assert d.order_commands == []
    assert d.state.deadline == T0 + timedelta(seconds=30)
    assert d.state.awaiting == ("payment.authorize",)
    assert d.state.step == "authorizing_payment"
    assert saga.saga_stream_id(ORDER_ID) == "saga-order-1"
    assert all(f.order_id == ORDER_ID for f in d.saga_facts)


def test_decisions_are_deterministic() -> None:
    first, second = World(), World()
    first.place()
    second.place()
    assert first.saga_log == second.saga_log
    assert [c.command_id for c in first.sent] == [c.command_id for c in second.sent]
    first.settle()
    second.settle()
    assert first.saga_log == second.saga_log


def test_repeated_start_decides_nothing() -> None:
    w = World()
    w.place()
    d = w.feed(saga.StartSaga.for_order(w.order, "tok_ok"))
    assert d.is_empty and d.commands == [] and d.state == w.saga


# --------------------------------------------------------------------------- 2-6. the fulfilment paths


def test_happy_path_to_delivered() -> None:
    w = World()
    w.place()
    assert command_types(payment_answers(w)) == ["shipment.schedule"]
    assert w.sent[-1].command == ScheduleShipment(
        shipment_id=SHIPMENT_ID, order_id=ORDER_ID, address=ADDRESS, customer_id="cust-1"
    )
    assert w.saga.step == "scheduling_shipment"
    assert command_types(shipping_answers(w)) == ["payment.capture"]
    capture = w.sent[-1]
    assert capture.command == CapturePayment(payment_id=PAYMENT_ID, order_id=ORDER_ID)
    d = payment_answers(w)
    assert d is not None and d.order_commands == [ConfirmOrder(ORDER_ID, PAYMENT_ID, SHIPMENT_ID)]
    assert status(w) is OrderStatus.CONFIRMED
    assert w.saga.deadline is None and w.saga.step == "awaiting_dispatch"
    w.check_invariants()

    assert w.operator("dispatch")
    d = w.deliver_reply("shipping")
    assert d is not None and d.order_commands == [ShipOrder(ORDER_ID, SHIPMENT_ID)]
    assert w.saga.step == "awaiting_delivery"
    assert w.operator("deliver")
    d = w.deliver_reply("shipping")
    assert d is not None and d.order_commands == [DeliverOrder(ORDER_ID, SHIPMENT_ID)]
    assert "saga.completed" in types(d)
    assert w.saga.completed and w.saga.step == "completed"
    assert w.sent_types() == ["payment.authorize", "shipment.schedule", "payment.capture"]
    w.check_invariants()
    assert status(w) is OrderStatus.DELIVERED


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"token": "tok_decline"}, "payment_declined:card_declined"),
        ({"limit_cents": 1000}, "payment_declined:amount_over_limit"),
    ],
)
def test_declined_payment_rejects_the_order(kwargs: dict[str, object], reason: str) -> None:
    w = World(**kwargs)  # type: ignore[arg-type]
    w.place()
    d = payment_answers(w)
    assert d is not None and d.commands == []
    assert d.order_commands == [RejectOrder(ORDER_ID, reason)]
    assert status(w) is OrderStatus.REJECTED and w.order.reason == reason
    assert w.saga.completed and w.saga.deadline is None
    w.check_invariants()


def test_shipping_failure_voids_then_cancels() -> None:
    w = World(country="AQ")
    w.place()
    payment_answers(w)
    d = shipping_answers(w)
    assert command_types(d) == ["payment.void"]
    assert w.sent[-1].command == VoidPayment(
        payment_id=PAYMENT_ID, order_id=ORDER_ID, reason="shipping_failed:destination_not_served"
    )
    assert status(w) is OrderStatus.PENDING  # not before the void is confirmed
    assert w.saga.awaiting == ("payment.void",) and w.saga.deadline is not None
    d = payment_answers(w)
    assert d is not None and d.order_commands == [CancelOrder(ORDER_ID, "shipping_failed:destination_not_served")]
    assert w.payment_state.status is PaymentStatus.VOIDED
    w.check_invariants()


# --------------------------------------------------------------------------- 7. cancel at every stage


def test_cancel_before_authorization_answer() -> None:
    w = World()
    w.place()
    assert w.cancel()
    # Defensive void, queued behind the authorize on the same key; still awaiting the answer.
    assert w.sent_types() == ["payment.authorize", "payment.void"]
    assert status(w) is OrderStatus.PENDING
    assert w.saga.awaiting == ("payment.authorize",)
    d = payment_answers(w)  # authorized → the saga voids it (again: idempotent)
    assert command_types(d) == ["payment.void"]
    w.settle()
    assert status(w) is OrderStatus.CANCELLED and w.order.reason == "cancelled_by_customer"
    assert "shipment.schedule" not in w.sent_types()
    assert w.payment_state.status is PaymentStatus.VOIDED
    w.check_invariants()


def test_cancel_before_answer_then_declined() -> None:
    w = World(token="tok_decline")
    w.place()
    assert w.cancel()
    w.settle()
    assert status(w) is OrderStatus.CANCELLED and w.order.reason == "cancelled_by_customer"
    assert w.payment_state.status is PaymentStatus.DECLINED
    w.check_invariants()


def test_cancel_after_authorized_cancels_shipment_first_then_voids() -> None:
    w = World()
    w.place()
    payment_answers(w)  # schedule in flight
    assert w.cancel()
    assert w.sent_types()[-1] == "shipment.cancel"  # money untouched until the shipment is undone
    assert "payment.void" not in w.sent_types()
    shipping_answers(w)  # scheduled (the defensive cancel is queued behind it)
    d = shipping_answers(w)  # cancelled
    assert command_types(d) == ["payment.void"]
    payment_answers(w)
    assert status(w) is OrderStatus.CANCELLED and w.order.reason == "cancelled_by_customer"
    w.settle()
    w.check_invariants()
    assert w.shipment_state.status is ShipmentStatus.CANCELLED
    assert w.payment_state.status is PaymentStatus.VOIDED


def test_cancel_while_capture_in_flight_refunds_the_capture() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)  # capture in flight
    assert w.cancel()
    assert w.sent_types()[-1] == "shipment.cancel"
    d = shipping_answers(w)  # cancelled, before the capture is processed → void
    assert command_types(d) == ["payment.void"]
    d = payment_answers(w)  # the capture was first on the key: captured → refund
    assert command_types(d) == ["payment.refund"]
    assert w.run_command(PAYMENT_ID)  # the void: refused (already captured), no answer
    assert not w.reply_queues["payment"]
    d = payment_answers(w)  # refunded
    assert d is not None and d.order_commands == [CancelOrder(ORDER_ID, "cancelled_by_customer")]
    w.settle()
    w.check_invariants()
    assert w.payment_state.status is PaymentStatus.REFUNDED


def test_cancel_confirmed_order_refunds() -> None:
    w = confirmed_world()
    assert w.cancel()
    assert w.sent_types()[-1] == "shipment.cancel"
    d = shipping_answers(w)
    assert command_types(d) == ["payment.refund"]
    assert w.sent[-1].command == RefundPayment(payment_id=PAYMENT_ID, order_id=ORDER_ID, reason="cancelled_by_customer")
    assert status(w) is OrderStatus.CONFIRMED
    d = payment_answers(w)
    assert d is not None and d.order_commands == [CancelOrder(ORDER_ID, "cancelled_by_customer")]
    w.check_invariants()
    assert w.payment_state.status is PaymentStatus.REFUNDED
    assert w.saga.step == "compensated"


def test_cancel_twice_is_accepted_once() -> None:
    w = World()
    w.place()
    assert w.cancel()
    before = len(w.saga_log)
    d = w.feed(saga.CancelRequested())
    assert d.is_empty and len(w.saga_log) == before


def test_cancel_after_shipped_or_final_is_refused() -> None:
    w = confirmed_world()
    w.operator("dispatch")
    w.deliver_reply("shipping")
    assert status(w) is OrderStatus.SHIPPED
    with pytest.raises(IllegalTransition) as info:
        saga.decide(saga.CancelRequested(), w.saga, w.now)
    assert info.value.code == "order_not_cancellable"
    w.operator("deliver")
    w.deliver_reply("shipping")
    with pytest.raises(IllegalTransition):
        saga.decide(saga.CancelRequested(), w.saga, w.now)

    rejected = World(token="tok_decline")
    rejected.place()
    rejected.settle()
    with pytest.raises(IllegalTransition):
        saga.decide(saga.CancelRequested(), rejected.saga, rejected.now)


def test_cancel_unknown_saga_is_not_found() -> None:
    with pytest.raises(NotFound):
        saga.decide(saga.CancelRequested(), saga.SagaState(), T0)


def test_dispatch_before_capture_confirms_then_ships_and_refuses_cancel() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)  # capture in flight
    assert w.operator("dispatch")
    d = w.deliver_reply("shipping")
    assert d is not None and d.order_commands == []  # not confirmed before the money is captured
    with pytest.raises(IllegalTransition) as info:
        saga.decide(saga.CancelRequested(), w.saga, w.now)
    assert info.value.code == "shipment_already_dispatched"
    d = payment_answers(w)
    assert d is not None
    assert d.order_commands == [ConfirmOrder(ORDER_ID, PAYMENT_ID, SHIPMENT_ID), ShipOrder(ORDER_ID, SHIPMENT_ID)]
    w.check_invariants()


def test_cancel_loses_the_race_with_dispatch() -> None:
    w = confirmed_world()
    assert w.cancel()  # shipment.cancel queued...
    assert w.operator("dispatch")  # ...but the warehouse dispatches first
    assert w.run_command(SHIPMENT_ID)  # the cancel is refused: no answer
    d = w.deliver_reply("shipping")  # dispatched
    assert d is not None
    assert "saga.compensation_aborted" in types(d)
    assert d.order_commands == [ShipOrder(ORDER_ID, SHIPMENT_ID)]
    assert not {"payment.void", "payment.refund"} & set(w.sent_types())
    w.settle()
    w.check_invariants()
    assert status(w) is OrderStatus.SHIPPED
    assert w.payment_state.status is PaymentStatus.CAPTURED


def test_cancel_during_capture_loses_race_with_dispatch_still_captures() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)  # capture in flight
    assert w.cancel()
    assert w.operator("dispatch")
    w.settle()
    w.check_invariants()
    assert status(w) is OrderStatus.SHIPPED
    assert w.saga.cancel_requested


# --------------------------------------------------------------------------- 8. timeouts


def test_timer_before_deadline_or_without_deadline_is_a_no_op() -> None:
    w = World()
    w.place()
    early = saga.decide(saga.StepTimedOut(), w.saga, T0 + timedelta(seconds=29))
    assert early.is_empty
    c = confirmed_world()
    assert c.saga.deadline is None
    assert saga.decide(saga.StepTimedOut(), c.saga, T0 + timedelta(days=1)).is_empty
    assert saga.decide(saga.StepTimedOut(), saga.SagaState(), T0).is_empty


def test_payment_timeout_rejects_and_voids_defensively() -> None:
    w = World()
    w.place()
    d = w.timeout()
    assert "saga.timed_out" in types(d)
    timed_out = timed_out_of(d)
    assert timed_out.step == "payment" and timed_out.gave_up == ("payment",)
    assert command_types(d) == ["payment.void"]
    assert d.order_commands == [RejectOrder(ORDER_ID, "payment_timeout")]
    assert w.saga.deadline is None and w.saga.completed
    # The payment service was only slow: the authorize and then the void are processed in order.
    late = payment_answers(w)  # late authorized → void (again)
    assert command_types(late) == ["payment.void"] and late is not None and late.order_commands == []
    assert w.saga.awaiting == ("payment.void",) and w.saga.deadline is not None
    w.settle()
    w.check_invariants()
    assert w.order.reason == "payment_timeout"
    assert w.payment_state.status is PaymentStatus.VOIDED
    assert "shipment.schedule" not in w.sent_types()


def test_late_capture_after_payment_timeout_is_refunded() -> None:
    # Out of order and late (e.g. a redelivery): the saga learns of a capture after giving up.
    w = World()
    w.place()
    w.timeout()
    d = w.feed(reply(PaymentCaptured))
    assert command_types(d) == ["payment.refund"]
    assert w.saga.awaiting == ("payment.refund",)


def test_shipping_timeout_cancels_defensively_voids_and_cancels_order() -> None:
    w = World()
    w.place()
    payment_answers(w)
    d = w.timeout()
    assert timed_out_of(d).step == "shipping"
    assert command_types(d) == ["shipment.cancel", "payment.void"]
    assert status(w) is OrderStatus.PENDING
    payment_answers(w)  # voided
    assert status(w) is OrderStatus.CANCELLED and w.order.reason == "shipping_timeout"
    # The shipping service was slow: the schedule is processed, then the queued cancel.
    late = shipping_answers(w)  # late scheduled → cancel it
    assert command_types(late) == ["shipment.cancel"]
    assert w.saga.deadline is not None
    w.settle()
    w.check_invariants()
    assert w.shipment_state.status is ShipmentStatus.CANCELLED


def test_capture_timeout_compensates_and_cancels() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)
    d = w.timeout()
    timed_out = timed_out_of(d)
    assert timed_out.step == "capture" and timed_out.gave_up == ()
    assert command_types(d) == ["shipment.cancel"]
    w.settle()
    w.check_invariants()
    assert status(w) is OrderStatus.CANCELLED and w.order.reason == "capture_timeout"
    assert w.payment_state.status in (PaymentStatus.VOIDED, PaymentStatus.REFUNDED)


def test_capture_timeout_when_capture_never_happened_voids() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)
    w.command_queues[PAYMENT_ID].clear()  # the capture is lost on the way (worst case)
    w.timeout()
    w.settle()
    w.check_invariants()
    assert w.order.reason == "capture_timeout"
    assert w.payment_state.status is PaymentStatus.VOIDED


def test_compensation_timeout_reissues_and_extends_the_deadline() -> None:
    w = World(country="AQ")
    w.place()
    payment_answers(w)
    shipping_answers(w)  # failed → void issued
    first_deadline = w.saga.deadline
    assert first_deadline is not None
    d = w.timeout()
    timed_out = timed_out_of(d)
    assert timed_out.action == "retry" and timed_out.step == "compensation"
    assert command_types(d) == ["payment.void"]
    assert w.saga.deadline == first_deadline + timedelta(seconds=30)
    assert status(w) is OrderStatus.PENDING  # never gives up on money
    w.timeout()
    assert w.sent_types().count("payment.void") == 3
    w.settle()
    w.check_invariants()
    assert w.order.reason == "shipping_failed:destination_not_served"


def test_capture_timeout_after_dispatch_retries_capture() -> None:
    w = World()
    w.place()
    payment_answers(w)
    shipping_answers(w)
    w.operator("dispatch")
    w.deliver_reply("shipping")
    d = w.timeout()
    assert command_types(d) == ["payment.capture"]
    assert d.order_commands == [] and w.saga.mode is saga.SagaMode.FULFIL
    w.settle()
    w.check_invariants()
    assert status(w) is OrderStatus.SHIPPED


def test_cancel_then_payment_silent_cancels_after_timeout() -> None:
    w = World()
    w.place()
    w.cancel()
    d = w.timeout()  # the authorize is given up on; the defensive void is already queued
    assert d.order_commands == [CancelOrder(ORDER_ID, "cancelled_by_customer")]
    w.settle()
    w.check_invariants()
    assert w.payment_state.status is PaymentStatus.VOIDED


def test_timeout_reasons_all_end_in_timeout() -> None:
    assert all(
        r.endswith("_timeout")
        for r in (saga.REASON_PAYMENT_TIMEOUT, saga.REASON_SHIPPING_TIMEOUT, saga.REASON_CAPTURE_TIMEOUT)
    )


# --------------------------------------------------------------------------- duplicates, late, out of order


def test_duplicate_reply_same_id_decides_nothing() -> None:
    w = World()
    w.place()
    payment_answers(w)
    before = (w.saga, len(w.sent))
    d = w.redeliver(0)
    assert d is not None and d.is_empty and d.commands == [] and d.order_commands == []
    assert (w.saga, len(w.sent)) == before


def test_same_type_reply_with_other_id_decides_nothing() -> None:
    w = World()
    w.place()
    payment_answers(w)
    d = w.feed(reply(PaymentAuthorized))
    assert d.is_empty


def test_redelivering_everything_after_the_end_changes_nothing() -> None:
    w = confirmed_world()
    w.operator("dispatch")
    w.operator("deliver")
    w.settle()
    state = w.saga
    for i in range(len(w.delivered)):
        assert w.redeliver(i) is not None
    assert w.saga == state
    w.check_invariants()


def test_duplicate_command_is_reanswered_and_ignored() -> None:
    w = World(country="AQ")
    w.place()
    payment_answers(w)
    shipping_answers(w)
    w.timeout()  # void re-issued while the first is still queued
    w.settle()
    # The second void was answered with the recorded voided fact (same id): nothing new.
    assert w.sent_types().count("payment.void") == 2
    w.check_invariants()


def test_scheduled_before_authorized_is_handled() -> None:
    w = World()
    w.place()
    d = w.feed(reply(ShipmentScheduled, address=ADDRESS))
    assert d.commands == [] and w.saga.shipment is ShipmentStatus.SCHEDULED
    d = w.feed(reply(PaymentAuthorized))
    assert command_types(d) == ["payment.capture"]  # no second schedule
    d = w.feed(reply(PaymentCaptured))
    assert d.order_commands == [ConfirmOrder(ORDER_ID, PAYMENT_ID, SHIPMENT_ID)]


def test_stale_reply_does_not_move_knowledge_back() -> None:
    w = World()
    w.place()
    w.feed(reply(PaymentCaptured))  # e.g. seen before the authorized it follows
    assert w.saga.payment is PaymentStatus.CAPTURED
    d = w.feed(reply(PaymentAuthorized))
    assert d.is_empty and w.saga.payment is PaymentStatus.CAPTURED


def test_replies_about_other_orders_or_aggregates_are_ignored() -> None:
    w = World()
    w.place()
    assert w.feed(reply(PaymentAuthorized, order_id="other")).is_empty
    assert w.feed(reply(PaymentAuthorized, payment_id="other")).is_empty
    assert w.feed(reply(ShipmentScheduled, shipment_id="other", address=ADDRESS)).is_empty
    placed: dict[str, Any] = {
        "customer_id": "c",
        "items": ITEMS,
        "currency": "EUR",
        "total_cents": TOTAL,
        "shipping_address": ADDRESS,
    }
    assert w.feed(reply(OrderPlaced, **placed)).is_empty
    assert saga.decide(reply(PaymentAuthorized), saga.SagaState(), T0).is_empty


def test_late_schedule_after_customer_cancel_and_final_state() -> None:
    w = World()
    w.place()
    payment_answers(w)
    w.cancel()
    w.timeout()  # the schedule is given up on → void
    payment_answers(w)
    assert status(w) is OrderStatus.CANCELLED
    w.settle()
    w.check_invariants()


# --------------------------------------------------------------------------- the log is the truth


def test_fold_and_the_log_name_every_decision() -> None:
    w = World()
    w.place()
    w.cancel()
    w.settle()
    assert saga.fold(w.saga_log) == w.saga
    # The saga's log names every command it sent (type, target, deterministic id) ...
    steps = [(f.command_type, f.target_id, f.command_id) for f in w.saga_log if isinstance(f, SagaStepRequested)]
    assert steps == [(c.command.TYPE, c.command.target_id, c.command_id) for c in w.sent]
    # ... and every command it gave the order.
    issued = [f for f in w.saga_log if isinstance(f, SagaOrderCommandIssued)]
    assert [(f.command, f.reason) for f in issued] == [("cancel", "cancelled_by_customer")]
    assert w.order_commands == [CancelOrder(ORDER_ID, "cancelled_by_customer")]
    # Every intermediate state is rebuilt by folding a prefix of the log.
    state = saga.SagaState()
    for i, fact in enumerate(w.saga_log, start=1):
        state = saga.evolve(state, fact)
        assert state == saga.fold(w.saga_log[:i]) and state.version == i


def test_deadline_survives_a_restart() -> None:
    w = World()
    w.place()
    rebuilt = saga.fold(w.saga_log)
    assert rebuilt.deadline == T0 + timedelta(seconds=30)
    d = saga.decide(saga.StepTimedOut(), rebuilt, rebuilt.deadline)
    assert d.order_commands == [RejectOrder(ORDER_ID, "payment_timeout")]


def test_no_fact_holds_the_token_and_the_view_is_json() -> None:
    w = World(token="tok_secret_4242")
    w.place()
    [sent] = w.sent
    assert isinstance(sent.command, AuthorizePayment) and sent.command.payment_token == "tok_secret_4242"
    for fact in [*w.saga_log, *w.order_log]:
        assert b"tok_secret_4242" not in encode_data(fact), fact
    assert "tok_secret_4242" not in repr(saga.StartSaga.for_order(w.order, "tok_secret_4242"))
    step = next(f for f in w.saga_log if isinstance(f, SagaStepRequested))
    assert (step.command_type, step.command_id) == ("payment.authorize", sent.command_id)
    view = SagaView.of(w.saga, [])
    assert view.step == "authorizing_payment" and "tok_secret_4242" not in view.model_dump_json()


def test_zero_total_order_still_goes_through_the_saga() -> None:
    w = World(items=(OrderLine(sku="free", quantity=1, unit_price_cents=0),))
    w.place()
    w.settle()
    w.check_invariants()
    assert status(w) is OrderStatus.CONFIRMED

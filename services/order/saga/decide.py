"""The saga's decision: `decide(trigger, state, now)`, then reconcile until nothing is left to do.

After every trigger `_reconcile` derives the next steps from the knowledge, the mode and what
was already issued, so any interleaving of replies converges:

* FULFIL: authorize → (authorized) schedule → (scheduled) capture → (captured) confirm the
  order; dispatched → ship; delivered → deliver. declined → REJECTED `payment_declined:<code>`;
  shipment failed → compensate, CANCELLED `shipping_failed:<code>`.
* COMPENSATE undoes the shipment first and the money second: cancel the shipment (or, if a
  schedule is in flight, a defensive cancel that the shipping service processes after it,
  commands being keyed by shipment id), then void an authorization / refund a capture (or a
  defensive void after an authorize in flight), and only when every compensation is confirmed
  reject/cancel the order. Shipment first means that if the shipment was dispatched before our
  cancel got there, no money has been given back yet and the saga *aborts* the compensation:
  the goods are out, so the order goes on to CONFIRMED/SHIPPED (the cancel lost the race).
* A compensation the saga learns is needed is sent even if a defensive one is already queued
  (e.g. a late authorized → a second void): participants answer the duplicate with the fact
  already recorded, which the saga then ignores.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum

from services.domain_kit import require_currency, require_int, require_text
from services.order.domain import (
    CANCELLABLE_STATUSES,
    FINAL_STATUSES,
    CancelOrder,
    ConfirmOrder,
    DeliverOrder,
    RejectOrder,
    ShipOrder,
)
from services.order.saga.builder import Builder, SagaDecision
from services.order.saga.state import (
    ANOMALY_DISPATCHED_DURING_COMPENSATION,
    ANOMALY_PAYMENT_LOST,
    ANOMALY_SHIPMENT_LOST,
    AUTHORIZE,
    CANCEL_SHIPMENT,
    CAPTURE,
    GOODS_OUT,
    PAYMENT,
    REASON_CANCELLED_BY_CUSTOMER,
    REFUND,
    SCHEDULE,
    SHIPMENT,
    SHIPMENT_EXISTS,
    VOID,
    SagaMode,
    SagaState,
    defensive,
    payment_id_for,
    shipment_id_for,
)
from services.order.saga.timeouts import on_timeout, refresh_deadline
from services.order.saga.triggers import (
    CancelRequested,
    ReplyReceived,
    SagaTrigger,
    StartSaga,
    StepTimedOut,
    advances,
    amount_of,
    reason_of,
)
from shared.contract import (
    OrderStatus,
    PaymentStatus,
    SagaAnomalyDetected,
    SagaCancelRequested,
    SagaCompensationAborted,
    SagaCompensationStarted,
    SagaCompleted,
    SagaReplyReceived,
    SagaStarted,
    ShipmentStatus,
)
from shared.errors import IllegalTransition, NotFound


def decide(trigger: SagaTrigger, state: SagaState, now: datetime) -> SagaDecision:
    """Decide what one trigger means for the saga. Raises only for a refused cancel."""
    if isinstance(trigger, StartSaga):
        b = Builder(state, now, trigger.payment_token)
        if state.exists:
            return b.result()  # a repeated start (e.g. a retried placement) decides nothing
        require_text(trigger.order_id, "order_id")
        require_int(trigger.total_cents, "total_cents", minimum=0)
        require_currency(trigger.currency, "currency")
        require_text(trigger.payment_token, "payment_token")
        b.emit(
            SagaStarted(
                order_id=trigger.order_id,
                customer_id=trigger.customer_id,
                payment_id=payment_id_for(trigger.order_id),
                shipment_id=shipment_id_for(trigger.order_id),
                amount_cents=trigger.total_cents,
                currency=trigger.currency,
                shipping_address=trigger.shipping_address,
                step_timeout_s=float(trigger.step_timeout_s),
                started_at=now,
            )
        )
        return _finish(b, restart_deadline=True)

    b = Builder(state, now)
    if isinstance(trigger, CancelRequested):
        if not state.exists:
            raise NotFound("saga_not_found", "no saga for this order")
        if state.order_status not in CANCELLABLE_STATUSES:
            raise IllegalTransition("order_not_cancellable", f"cannot cancel an order that is {state.order_status}")
        if state.mode is SagaMode.COMPENSATE:
            return b.result()  # already being cancelled (or compensated): accepted, nothing new
        if state.shipment in GOODS_OUT:
            raise IllegalTransition(
                "shipment_already_dispatched", "the goods have left: the order can no longer be cancelled"
            )
        b.emit(SagaCancelRequested(order_id=state.order_id, requested_at=now))
        b.emit(
            SagaCompensationStarted(
                order_id=state.order_id, outcome=OrderStatus.CANCELLED, reason=REASON_CANCELLED_BY_CUSTOMER
            )
        )
        return _finish(b)

    if not state.exists:
        return b.result()  # nothing to drive: a stray reply or timer

    if isinstance(trigger, ReplyReceived):
        if not advances(state, trigger):
            return b.result()
        fact = trigger.fact
        b.emit(
            SagaReplyReceived(
                order_id=state.order_id,
                reply_type=fact.TYPE,
                reply_id=trigger.reply_id,
                received_at=now,
                reason=reason_of(fact),
                amount_cents=amount_of(fact),
            )
        )
        return _finish(b)

    if isinstance(trigger, StepTimedOut):
        if state.deadline is None or now < state.deadline:
            return b.result()
        on_timeout(b)
        return _finish(b, restart_deadline=True)

    raise TypeError(f"unknown saga trigger {trigger!r}")  # pragma: no cover


def _finish(b: Builder, restart_deadline: bool = False) -> SagaDecision:
    _reconcile(b)
    refresh_deadline(b, restart_deadline)
    return b.result()


def _reconcile(b: Builder) -> None:
    """Take every step the current knowledge allows, one at a time, until none is left."""
    for _ in range(32):
        before = b.state.version
        if b.state.mode is SagaMode.FULFIL:
            _fulfil_step(b)
        else:
            _compensate_step(b)
        if b.state.version == before:
            return
    raise RuntimeError("saga reconcile did not settle")  # pragma: no cover - a bug, not an input


def _compensate(b: Builder, outcome: OrderStatus, reason: str) -> None:
    b.emit(SagaCompensationStarted(order_id=b.state.order_id, outcome=outcome, reason=reason))


def _anomaly(b: Builder, anomaly: str) -> None:
    b.emit(SagaAnomalyDetected(order_id=b.state.order_id, anomaly=anomaly))


def _fulfil_step(b: Builder) -> None:
    s = b.state
    open_order = s.order_status in CANCELLABLE_STATUSES
    if s.payment is PaymentStatus.DECLINED and open_order:
        _compensate(b, OrderStatus.REJECTED, f"payment_declined:{s.payment_reason}")
        return
    if s.shipment is ShipmentStatus.FAILED and open_order:
        _compensate(b, OrderStatus.CANCELLED, f"shipping_failed:{s.shipment_reason}")
        return
    if s.payment in (PaymentStatus.VOIDED, PaymentStatus.REFUNDED) and open_order:
        # Money went back without the saga asking: the order cannot go on.
        _anomaly(b, ANOMALY_PAYMENT_LOST)
        _compensate(b, OrderStatus.CANCELLED, f"payment_{str(s.payment).lower()}")
        return
    if s.shipment is ShipmentStatus.CANCELLED and open_order:
        _anomaly(b, ANOMALY_SHIPMENT_LOST)
        _compensate(b, OrderStatus.CANCELLED, "shipment_cancelled")
        return

    if s.payment is None and AUTHORIZE not in s.issued:
        b.issue(AUTHORIZE)
    elif (
        s.payment in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED)
        and s.shipment is None
        and SCHEDULE not in s.issued
    ):
        b.issue(SCHEDULE)
    elif s.payment is PaymentStatus.AUTHORIZED and s.shipment in SHIPMENT_EXISTS and CAPTURE not in s.issued:
        b.issue(CAPTURE)
    elif (
        s.order_status is OrderStatus.PENDING and s.payment is PaymentStatus.CAPTURED and s.shipment in SHIPMENT_EXISTS
    ):
        b.order(ConfirmOrder(s.order_id, s.payment_id, s.shipment_id))
    elif s.order_status is OrderStatus.CONFIRMED and s.shipment in GOODS_OUT:
        b.order(ShipOrder(s.order_id, s.shipment_id))
    elif s.order_status is OrderStatus.SHIPPED and s.shipment is ShipmentStatus.DELIVERED:
        b.order(DeliverOrder(s.order_id, s.shipment_id))
    elif s.order_status is OrderStatus.DELIVERED and not s.completed:
        b.emit(SagaCompleted(order_id=s.order_id, status=OrderStatus.DELIVERED))


def _undo_in_flight(b: Builder, known: StrEnum | None, start: str, undo: str) -> bool:
    """`start` was sent to a participant that has not answered yet: queue `undo` right behind it,
    once (a defensive compensation: commands are keyed by the participant's id, so it is
    processed after the start). True if it was queued now."""
    s = b.state
    if known is None and start in s.issued and defensive(undo) not in s.issued:
        b.issue(undo, defensive=True)
        return True
    return False


def _settled(s: SagaState, known: StrEnum | None, undone: Collection[StrEnum], start: str, participant: str) -> bool:
    """Nothing of a participant is left to undo: its status is one of `undone`, or it never
    answered and either was never asked (`start` not issued) or was given up on."""
    return known in undone or (known is None and (start not in s.issued or participant in s.gave_up))


def _compensate_step(b: Builder) -> None:
    s = b.state
    # 1. The shipment first: while it is not undone, no money is given back, so a shipment
    #    that turns out to be dispatched can still be paid for (compensation aborted).
    if s.shipment in GOODS_OUT:
        money_untouched = not ({VOID, REFUND} & s.issued)
        if (
            s.order_status in CANCELLABLE_STATUSES
            and s.payment in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED)
            and money_untouched
        ):
            b.emit(SagaCompensationAborted(order_id=s.order_id, reason="shipment_already_dispatched"))
            return
        if ANOMALY_DISPATCHED_DURING_COMPENSATION not in s.anomalies:
            _anomaly(b, ANOMALY_DISPATCHED_DURING_COMPENSATION)
            return
        shipment_settled = True  # cannot be recalled; flagged above
    else:
        if s.shipment is ShipmentStatus.SCHEDULED and CANCEL_SHIPMENT not in s.issued:
            b.issue(CANCEL_SHIPMENT)
            return
        if _undo_in_flight(b, s.shipment, SCHEDULE, CANCEL_SHIPMENT):
            return
        shipment_settled = _settled(
            s, s.shipment, (ShipmentStatus.FAILED, ShipmentStatus.CANCELLED), SCHEDULE, SHIPMENT
        )
    if not shipment_settled:
        return

    # 2. Then the money.
    if s.payment is PaymentStatus.AUTHORIZED and VOID not in s.issued:
        b.issue(VOID)
        return
    if s.payment is PaymentStatus.CAPTURED and REFUND not in s.issued:
        b.issue(REFUND)
        return
    if _undo_in_flight(b, s.payment, AUTHORIZE, VOID):
        return
    if not _settled(
        s, s.payment, (PaymentStatus.DECLINED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED), AUTHORIZE, PAYMENT
    ):
        return

    # 3. Everything is undone: record the outcome on the order, once.
    if s.order_status not in FINAL_STATUSES:
        assert s.outcome_reason is not None
        if s.outcome is OrderStatus.REJECTED and s.order_status is OrderStatus.PENDING:
            b.order(RejectOrder(s.order_id, s.outcome_reason))
        else:
            b.order(CancelOrder(s.order_id, s.outcome_reason))
        return
    if not s.completed:
        b.emit(SagaCompleted(order_id=s.order_id, status=s.order_status, reason=s.outcome_reason))

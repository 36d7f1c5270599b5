"""Deadlines and what a timeout means.

Deadlines are data (`SagaDeadlineSet`) so they survive restarts: `state.deadline` is the
moment the awaited step times out, None when nothing is awaited.

While fulfilling, no answer within the step timeout ends the order with `payment_timeout`
(REJECTED: no money was ever authorized), `shipping_timeout` or `capture_timeout` (CANCELLED,
after compensating). A start command in flight whose answer never came (authorize/schedule)
is "given up": its defensive compensation is already queued behind it, and a late reply is
still handled. While compensating, a timeout re-issues the compensations (they are
idempotent) and extends the deadline: money is never given up. Once the goods are out
(dispatched), a capture timeout re-issues the capture instead.
"""

from __future__ import annotations

from datetime import timedelta

from services.order.saga.builder import Builder
from services.order.saga.state import (
    AUTHORIZE,
    CANCEL_SHIPMENT,
    CAPTURE,
    GOODS_OUT,
    PAYMENT,
    REFUND,
    SCHEDULE,
    SHIPMENT,
    VOID,
    SagaMode,
    SagaState,
)
from shared.contract import (
    OrderStatus,
    PaymentStatus,
    SagaCompensationStarted,
    SagaDeadlineSet,
    SagaTimedOut,
    ShipmentStatus,
)

# The step named in a fulfil timeout reason, by the command whose answer did not come.
_TIMEOUT_STEP = {AUTHORIZE: "payment", SCHEDULE: "shipping", CAPTURE: "capture"}


def awaiting(s: SagaState) -> tuple[str, ...]:
    """The command types whose answer the saga is waiting for."""
    waiting: list[str] = []
    if s.mode is SagaMode.FULFIL:
        if s.payment is None and AUTHORIZE in s.issued:
            waiting.append(AUTHORIZE)
        if s.shipment is None and SCHEDULE in s.issued:
            waiting.append(SCHEDULE)
        if s.payment is PaymentStatus.AUTHORIZED and CAPTURE in s.issued:
            waiting.append(CAPTURE)
    else:
        if s.shipment is ShipmentStatus.SCHEDULED and CANCEL_SHIPMENT in s.issued:
            waiting.append(CANCEL_SHIPMENT)
        if s.shipment is None and SCHEDULE in s.issued and SHIPMENT not in s.gave_up:
            waiting.append(SCHEDULE)
        if s.payment is PaymentStatus.AUTHORIZED and VOID in s.issued:
            waiting.append(VOID)
        if s.payment is PaymentStatus.CAPTURED and REFUND in s.issued:
            waiting.append(REFUND)
        if s.payment is None and AUTHORIZE in s.issued and PAYMENT not in s.gave_up:
            waiting.append(AUTHORIZE)
    return tuple(waiting)


def refresh_deadline(b: Builder, restart: bool) -> None:
    """Keep `deadline` = now + step timeout for a newly awaited step; None when idle."""
    s = b.state
    waiting = awaiting(s)
    if not waiting:
        deadline = None
    elif restart or b.commands or waiting != s.awaiting or s.deadline is None:
        deadline = b.now + timedelta(seconds=s.step_timeout_s)
    else:
        deadline = s.deadline
    if deadline != s.deadline or waiting != s.awaiting:
        b.emit(SagaDeadlineSet(order_id=s.order_id, deadline=deadline, awaiting=waiting))


def on_timeout(b: Builder) -> None:
    """The awaited step's deadline passed: compensate (fulfilling) or ask again (compensating)."""
    s = b.state
    waiting = awaiting(s)
    # Start commands still unanswered: stop waiting for them (their defensive
    # compensations are queued behind them; late answers are still handled).
    in_flight_starts: set[str] = set()
    if AUTHORIZE in waiting:
        in_flight_starts.add(PAYMENT)
    if SCHEDULE in waiting:
        in_flight_starts.add(SHIPMENT)

    def timed_out(step: str, action: str, gave_up: set[str]) -> SagaTimedOut:
        return SagaTimedOut(
            order_id=s.order_id,
            step=step,
            action=action,
            awaiting=tuple(sorted(waiting)),
            deadline=s.deadline,
            gave_up=tuple(sorted(gave_up)),
            at=b.now,
        )

    if s.mode is SagaMode.FULFIL and s.shipment not in GOODS_OUT and waiting:
        step = _TIMEOUT_STEP[waiting[0]]
        b.emit(timed_out(step, "compensate", in_flight_starts))
        # No money was ever authorized while the authorize is unanswered: reject, not cancel.
        outcome = OrderStatus.REJECTED if s.payment is None else OrderStatus.CANCELLED
        b.emit(SagaCompensationStarted(order_id=s.order_id, outcome=outcome, reason=f"{step}_timeout"))
        return
    # Compensating (or the goods are already out): never give up on money, ask again.
    if s.mode is SagaMode.COMPENSATE:
        step, gave_up = "compensation", in_flight_starts
    else:
        step, gave_up = (_TIMEOUT_STEP.get(waiting[0], "step") if waiting else "step"), set()
    b.emit(timed_out(step, "retry", gave_up))
    for command_type in waiting:
        if command_type not in (AUTHORIZE, SCHEDULE):
            b.issue(command_type)

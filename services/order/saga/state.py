"""What the saga knows and has done, rebuilt from its own facts: `SagaState`, `evolve`, `fold`.

The saga's knowledge of each participant is the furthest fact it has seen of it, ranked along
the participant's lifecycle (`PAYMENT_REPLIES`, `SHIPMENT_REPLIES`), so knowledge only moves
forward: duplicates, stale redeliveries and out-of-order replies cannot move it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from shared.contract import (
    Address,
    AuthorizePayment,
    CancelShipment,
    CapturePayment,
    Fact,
    OrderStatus,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentStatus,
    PaymentVoided,
    RefundPayment,
    SagaAnomalyDetected,
    SagaCancelRequested,
    SagaCompensationAborted,
    SagaCompensationStarted,
    SagaCompleted,
    SagaDeadlineSet,
    SagaOrderCommandIssued,
    SagaReplyReceived,
    SagaStarted,
    SagaStepRequested,
    SagaTimedOut,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentStatus,
    VoidPayment,
)
from shared.ids import derived_id

SAGA_STREAM_PREFIX = "saga-"
DEFAULT_STEP_TIMEOUT_S = 30.0

REASON_CANCELLED_BY_CUSTOMER = "cancelled_by_customer"
REASON_PAYMENT_TIMEOUT = "payment_timeout"
REASON_SHIPPING_TIMEOUT = "shipping_timeout"
REASON_CAPTURE_TIMEOUT = "capture_timeout"

ANOMALY_DISPATCHED_DURING_COMPENSATION = "shipment_dispatched_during_compensation"
ANOMALY_PAYMENT_LOST = "payment_compensated_outside_saga"
ANOMALY_SHIPMENT_LOST = "shipment_cancelled_outside_saga"

# The commands the saga sends, by type: the keys of `issued` and `awaiting`.
AUTHORIZE = AuthorizePayment.TYPE
CAPTURE = CapturePayment.TYPE
VOID = VoidPayment.TYPE
REFUND = RefundPayment.TYPE
SCHEDULE = ScheduleShipment.TYPE
CANCEL_SHIPMENT = CancelShipment.TYPE

# Participants whose in-flight start command may be "given up" on.
PAYMENT = "payment"
SHIPMENT = "shipment"

# (knowledge, rank) by reply type: a reply is applied only if its rank is above what is known.
PAYMENT_REPLIES: dict[str, tuple[PaymentStatus, int]] = {
    PaymentAuthorized.TYPE: (PaymentStatus.AUTHORIZED, 1),
    PaymentDeclined.TYPE: (PaymentStatus.DECLINED, 1),
    PaymentCaptured.TYPE: (PaymentStatus.CAPTURED, 2),
    PaymentVoided.TYPE: (PaymentStatus.VOIDED, 2),
    PaymentRefunded.TYPE: (PaymentStatus.REFUNDED, 3),
}
SHIPMENT_REPLIES: dict[str, tuple[ShipmentStatus, int]] = {
    ShipmentScheduled.TYPE: (ShipmentStatus.SCHEDULED, 1),
    ShipmentFailed.TYPE: (ShipmentStatus.FAILED, 1),
    ShipmentDispatched.TYPE: (ShipmentStatus.DISPATCHED, 2),
    ShipmentCancelled.TYPE: (ShipmentStatus.CANCELLED, 2),
    ShipmentDelivered.TYPE: (ShipmentStatus.DELIVERED, 3),
}
PAYMENT_RANK = {knowledge: rank for knowledge, rank in PAYMENT_REPLIES.values()}
SHIPMENT_RANK = {knowledge: rank for knowledge, rank in SHIPMENT_REPLIES.values()}

GOODS_OUT = frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.DELIVERED})
SHIPMENT_EXISTS = frozenset({ShipmentStatus.SCHEDULED}) | GOODS_OUT


def saga_stream_id(order_id: str) -> str:
    return SAGA_STREAM_PREFIX + order_id


def payment_id_for(order_id: str) -> str:
    return derived_id(order_id, "payment")


def shipment_id_for(order_id: str) -> str:
    return derived_id(order_id, "shipment")


def defensive(command_type: str) -> str:
    """The `issued` key of a compensation sent before the saga knew there was anything to undo."""
    return command_type + "#defensive"


class SagaMode(StrEnum):
    FULFIL = "FULFIL"
    COMPENSATE = "COMPENSATE"


@dataclass(frozen=True, slots=True)
class SagaState:
    """What the saga knows and has done; version 0 means it has not started."""

    version: int = 0
    order_id: str = ""
    customer_id: str = ""
    payment_id: str = ""
    shipment_id: str = ""
    amount_cents: int = 0
    currency: str = ""
    shipping_address: Address | None = None
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    started_at: datetime | None = None
    mode: SagaMode = SagaMode.FULFIL
    #: The order status the saga has driven the Order aggregate to.
    order_status: OrderStatus = OrderStatus.PENDING
    #: The furthest payment / shipment fact seen.
    payment: PaymentStatus | None = None
    shipment: ShipmentStatus | None = None
    payment_reason: str | None = None
    shipment_reason: str | None = None
    #: Command types sent at least once; a compensation sent before there was anything known
    #: to undo (queued behind a start command in flight) is keyed `<type>#defensive`.
    issued: frozenset[str] = frozenset()
    #: Participants whose in-flight start command (authorize/schedule) is no longer awaited.
    gave_up: frozenset[str] = frozenset()
    #: While compensating: the final order status and reason to record once all is undone.
    outcome: OrderStatus | None = None
    outcome_reason: str | None = None
    cancel_requested: bool = False
    #: When the step being awaited times out; None when nothing is awaited.
    deadline: datetime | None = None
    #: Command types whose answer is awaited.
    awaiting: tuple[str, ...] = ()
    timeouts: int = 0
    seen_replies: frozenset[str] = frozenset()
    completed: bool = False
    anomalies: tuple[str, ...] = ()
    #: A compact trail of what happened, for GET /sagas/{order_id}.
    history: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def step(self) -> str:
        """A human name for where the saga stands."""
        if not self.exists:
            return "not_started"
        if self.mode is SagaMode.COMPENSATE:
            return "compensated" if self.completed and not self.awaiting else "compensating"
        if self.completed:
            return "completed"
        if AUTHORIZE in self.awaiting:
            return "authorizing_payment"
        if SCHEDULE in self.awaiting:
            return "scheduling_shipment"
        if CAPTURE in self.awaiting:
            return "capturing_payment"
        if self.order_status is OrderStatus.CONFIRMED:
            return "awaiting_dispatch"
        if self.order_status is OrderStatus.SHIPPED:
            return "awaiting_delivery"
        return "running"


def _knowing(s: SagaState, fact: SagaReplyReceived) -> dict[str, object]:
    """The knowledge a recorded reply brings (its reason only for a failure), as field changes."""
    if fact.reply_type in PAYMENT_REPLIES:
        payment = PAYMENT_REPLIES[fact.reply_type][0]
        reason = fact.reason if payment is PaymentStatus.DECLINED else s.payment_reason
        return {"payment": payment, "payment_reason": reason}
    if fact.reply_type in SHIPMENT_REPLIES:
        shipment = SHIPMENT_REPLIES[fact.reply_type][0]
        reason = fact.reason if shipment is ShipmentStatus.FAILED else s.shipment_reason
        return {"shipment": shipment, "shipment_reason": reason}
    return {}


def evolve(state: SagaState, fact: Fact) -> SagaState:
    """Apply one saga fact. Facts of other kinds only advance the version. One `replace` per
    fact: the reply consumer folds every saga fact it decides, and copying the state is its cost."""
    s, version = state, state.version + 1
    match fact:
        case SagaStarted():
            return replace(
                s,
                version=version,
                order_id=fact.order_id,
                customer_id=fact.customer_id,
                payment_id=fact.payment_id,
                shipment_id=fact.shipment_id,
                amount_cents=fact.amount_cents,
                currency=fact.currency,
                shipping_address=fact.shipping_address,
                step_timeout_s=fact.step_timeout_s,
                started_at=fact.started_at,
                history=s.history + ("started",),
            )
        case SagaStepRequested():
            key = defensive(fact.command_type) if fact.defensive else fact.command_type
            return replace(s, version=version, issued=s.issued | {key}, history=s.history + (key,))
        case SagaReplyReceived():
            return replace(
                s,
                version=version,
                seen_replies=s.seen_replies | {fact.reply_id},
                history=s.history + (fact.reply_type,),
                **_knowing(s, fact),  # type: ignore[arg-type]
            )
        case SagaCancelRequested():
            return replace(s, version=version, cancel_requested=True, history=s.history + ("cancel_requested",))
        case SagaTimedOut():
            return replace(
                s,
                version=version,
                timeouts=s.timeouts + 1,
                gave_up=s.gave_up | set(fact.gave_up),
                history=s.history + (f"timed_out:{fact.step}",),
            )
        case SagaCompensationStarted():
            return replace(
                s,
                version=version,
                mode=SagaMode.COMPENSATE,
                outcome=fact.outcome,
                outcome_reason=fact.reason,
                history=s.history + (f"compensating:{fact.reason}",),
            )
        case SagaCompensationAborted():
            return replace(
                s,
                version=version,
                mode=SagaMode.FULFIL,
                outcome=None,
                outcome_reason=None,
                history=s.history + (f"compensation_aborted:{fact.reason}",),
            )
        case SagaOrderCommandIssued():
            return replace(s, version=version, order_status=fact.status, history=s.history + (f"order:{fact.command}",))
        case SagaDeadlineSet():
            return replace(s, version=version, deadline=fact.deadline, awaiting=tuple(fact.awaiting))
        case SagaCompleted():
            return replace(s, version=version, completed=True, history=s.history + ("completed",))
        case SagaAnomalyDetected():
            return replace(
                s,
                version=version,
                anomalies=s.anomalies + (fact.anomaly,),
                history=s.history + (f"anomaly:{fact.anomaly}",),
            )
        case _:
            return replace(s, version=version)


def fold(facts: Iterable[Fact]) -> SagaState:
    state = SagaState()
    for fact in facts:
        state = evolve(state, fact)
    return state

"""The order-fulfillment saga (process manager) of SPEC §6: event-sourced and pure.

One saga per order, stream id `saga-<order_id>` (see `saga_stream_id`). The service feeds it
triggers and persists what it decides:

    decision = decide(trigger, state, now)
    # in ONE transaction of the order database:
    #   append decision.saga_events to stream saga-<order_id> (expected version = state.version)
    #   apply decision.order_commands, in order, to the Order aggregate (order.decide) and append
    #   put decision.commands in the command outbox (payment.commands / shipping.commands)
    # then index decision.state.deadline (None = nothing awaited) for the deadline scheduler.

Triggers: `SagaStarted` (with the order placement; carries the payment token, which is not
in order.placed), `ReplyReceived` (every fact on payment.events / shipping.events about this
order: its event id, type and data), `CancelRequested` (POST /orders/{id}/cancel) and
`StepTimedOut` (the scheduler, once `now >= state.deadline`; early or repeated firings are
no-ops).

How it stays safe
-----------------
The saga keeps *knowledge* (the furthest payment and shipment facts seen, monotonic, so
duplicates, stale redeliveries and out-of-order replies cannot move it backwards), a *mode*
(FULFIL, or COMPENSATE towards a final REJECTED/CANCELLED with a reason) and which commands it
already *issued*. After every trigger `_reconcile` derives the next commands from those, so any
interleaving of replies converges:

* FULFIL: authorize → (authorized) schedule → (scheduled) capture → (captured) confirm the order;
  dispatched → ship; delivered → deliver. declined → REJECTED `payment_declined:<code>`;
  shipment failed → compensate, CANCELLED `shipping_failed:<code>`.
* COMPENSATE undoes the shipment first and the money second: cancel the shipment (or, if a
  schedule is in flight, send a defensive cancel that the shipping service processes after it,
  commands being keyed by shipment_id), then void an authorization / refund a capture (or a
  defensive void after an authorize in flight), and only when every compensation is confirmed
  reject/cancel the order. Shipment-first means that if the shipment was dispatched before our
  cancel got there, no money has been given back yet and the saga *aborts* the compensation:
  the goods are out, so the order goes on to CONFIRMED/SHIPPED (the cancel lost the race).
* A start command in flight whose answer never came (authorize/schedule past its deadline) is
  "given up": its defensive compensation is already queued behind it, and any late reply is
  still handled — a late authorized → void, a late captured → refund, a late scheduled →
  cancel — even after the order is final.
* Timeouts: while fulfilling, no answer within the step timeout ends the order with
  `payment_timeout` (REJECTED: no money was ever authorized), `shipping_timeout` or
  `capture_timeout` (CANCELLED, after compensating). While compensating, a timeout re-issues
  the compensations (they are idempotent) and extends the deadline: money is never given up.
  Once the goods are out (dispatched) a capture timeout re-issues the capture instead.
* Idempotent: a reply already seen (same event id) or not advancing the knowledge (same-type
  reply already applied) decides nothing; a repeated start or cancel decides nothing.

A compensation the saga learns is needed is sent even if a defensive one is already queued
(e.g. a late authorized → a second void): participants answer the duplicate with the fact
already recorded, which the saga then ignores.

Every command is also recorded whole in its `saga.step_requested` event (with a deterministic
command id derived from the saga version), so `command_from_event` / `order_command_from_event`
can rebuild what a decision sent — e.g. for a relay that tails the saga log. The payment token
is in the authorize command: show saga events through `redacted`.

Deadlines are data (`saga.deadline_set`) so they survive restarts: `state.deadline` is the
moment the step being awaited times out, None when nothing is awaited.

Residual risk (documented, flagged with `saga.anomaly_detected`): a shipment whose schedule
timed out, that is then scheduled *and* dispatched by an operator in the instant before the
queued defensive cancel reaches it, cannot be recalled; the order still ends CANCELLED.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Iterable, Mapping, TypeAlias

from services.domain_errors import IllegalTransition, NotFound
from services.domain_kit import EventLike, require_currency, require_int, require_text
from services.order.domain.order import CANCELLABLE_STATUSES, FINAL_STATUSES, CancelOrder, ConfirmOrder, DeliverOrder, OrderCommand, OrderState, OrderStatus, RejectOrder, ShipOrder
from services.domain_kit import Address
from shared.ids import derived_id
from shared.messages import Command, NewEvent

SAGA_STREAM_PREFIX = "saga-"
DEFAULT_STEP_TIMEOUT_S = 30.0

REASON_CANCELLED_BY_CUSTOMER = "cancelled_by_customer"
REASON_PAYMENT_TIMEOUT = "payment_timeout"
REASON_SHIPPING_TIMEOUT = "shipping_timeout"
REASON_CAPTURE_TIMEOUT = "capture_timeout"


def saga_stream_id(order_id: str) -> str:
    return SAGA_STREAM_PREFIX + order_id


def payment_id_for(order_id: str) -> str:
    return derived_id(order_id, "payment")


def shipment_id_for(order_id: str) -> str:
    return derived_id(order_id, "shipment")


class SagaMode(StrEnum):
    FULFIL = "FULFIL"
    COMPENSATE = "COMPENSATE"


class PaymentFact(StrEnum):
    """The furthest payment fact the saga has seen."""

    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


class ShipmentFact(StrEnum):
    """The furthest shipment fact the saga has seen."""

    SCHEDULED = "SCHEDULED"
    FAILED = "FAILED"
    DISPATCHED = "DISPATCHED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


# --------------------------------------------------------------------------- replies it consumes

REPLY_PAYMENT_AUTHORIZED = "payment.authorized"
REPLY_PAYMENT_DECLINED = "payment.declined"
REPLY_PAYMENT_CAPTURED = "payment.captured"
REPLY_PAYMENT_VOIDED = "payment.voided"
REPLY_PAYMENT_REFUNDED = "payment.refunded"
REPLY_SHIPMENT_SCHEDULED = "shipment.scheduled"
REPLY_SHIPMENT_FAILED = "shipment.failed"
REPLY_SHIPMENT_DISPATCHED = "shipment.dispatched"
REPLY_SHIPMENT_DELIVERED = "shipment.delivered"
REPLY_SHIPMENT_CANCELLED = "shipment.cancelled"

# (knowledge, rank): a reply is applied only if its rank is above what is known, so the
# knowledge only moves forward along each aggregate's lifecycle.
_PAYMENT_REPLIES: dict[str, tuple[PaymentFact, int]] = {
    REPLY_PAYMENT_AUTHORIZED: (PaymentFact.AUTHORIZED, 1),
    REPLY_PAYMENT_DECLINED: (PaymentFact.DECLINED, 1),
    REPLY_PAYMENT_CAPTURED: (PaymentFact.CAPTURED, 2),
    REPLY_PAYMENT_VOIDED: (PaymentFact.VOIDED, 2),
    REPLY_PAYMENT_REFUNDED: (PaymentFact.REFUNDED, 3),
}
_SHIPMENT_REPLIES: dict[str, tuple[ShipmentFact, int]] = {
    REPLY_SHIPMENT_SCHEDULED: (ShipmentFact.SCHEDULED, 1),
    REPLY_SHIPMENT_FAILED: (ShipmentFact.FAILED, 1),
    REPLY_SHIPMENT_DISPATCHED: (ShipmentFact.DISPATCHED, 2),
    REPLY_SHIPMENT_CANCELLED: (ShipmentFact.CANCELLED, 2),
    REPLY_SHIPMENT_DELIVERED: (ShipmentFact.DELIVERED, 3),
}
_PAYMENT_RANK = {fact: rank for fact, rank in _PAYMENT_REPLIES.values()}
_SHIPMENT_RANK = {fact: rank for fact, rank in _SHIPMENT_REPLIES.values()}

#: Every fact type the service should feed to the saga as a ReplyReceived.
REPLY_TYPES = frozenset(_PAYMENT_REPLIES) | frozenset(_SHIPMENT_REPLIES)

_GOODS_OUT = frozenset({ShipmentFact.DISPATCHED, ShipmentFact.DELIVERED})
_SHIPMENT_EXISTS = frozenset({ShipmentFact.SCHEDULED}) | _GOODS_OUT

# --------------------------------------------------------------------------- commands it sends

PAYMENT_AUTHORIZE = "payment.authorize"
PAYMENT_CAPTURE = "payment.capture"
PAYMENT_VOID = "payment.void"
PAYMENT_REFUND = "payment.refund"
SHIPMENT_SCHEDULE = "shipment.schedule"
SHIPMENT_CANCEL = "shipment.cancel"

COMMAND_TOPICS = {
    PAYMENT_AUTHORIZE: "payment.commands",
    PAYMENT_CAPTURE: "payment.commands",
    PAYMENT_VOID: "payment.commands",
    PAYMENT_REFUND: "payment.commands",
    SHIPMENT_SCHEDULE: "shipping.commands",
    SHIPMENT_CANCEL: "shipping.commands",
}

#: Fields never shown outside the order service (e.g. in GET /sagas/{id}): see `redacted`.
SECRET_FIELDS = frozenset({"payment_token"})

# Participants whose in-flight start command may be "given up" on.
_PAYMENT = "payment"
_SHIPMENT = "shipment"

# The step named in a fulfil timeout reason, by the command whose answer did not come.
_TIMEOUT_STEP = {PAYMENT_AUTHORIZE: "payment", SHIPMENT_SCHEDULE: "shipping", PAYMENT_CAPTURE: "capture"}


# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True, slots=True)
class SagaStarted:
    """The order was placed: start fulfilling it. Fed in the same transaction as order.placed."""

    order_id: str
    customer_id: str
    total_cents: int
    currency: str
    shipping_address: Address
    payment_token: str
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S

    @classmethod
    def for_order(
        cls, order: OrderState, payment_token: str, step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    ) -> SagaStarted:
        if order.shipping_address is None:
            raise NotFound("order_not_found", f"order {order.order_id} does not exist")
        return cls(
            order_id=order.order_id,
            customer_id=order.customer_id,
            total_cents=order.total_cents,
            currency=order.currency,
            shipping_address=order.shipping_address,
            payment_token=payment_token,
            step_timeout_s=step_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A fact from payment.events or shipping.events about this order."""

    event_id: str
    type: str
    data: Mapping[str, Any]

    @classmethod
    def of(cls, event: Any) -> ReplyReceived:
        """From a RecordedEvent (`event_id`) or an Envelope (`id`)."""
        event_id = getattr(event, "event_id", None) or getattr(event, "id")
        return cls(event_id=str(event_id), type=str(event.type), data=event.data)


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The customer asked to cancel (POST /orders/{id}/cancel)."""


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    """The deadline scheduler fired; a no-op unless `now >= state.deadline`."""


SagaTrigger: TypeAlias = SagaStarted | ReplyReceived | CancelRequested | StepTimedOut


# --------------------------------------------------------------------------- saga events (internal facts)

SAGA_STARTED = "saga.started"
SAGA_STEP_REQUESTED = "saga.step_requested"
SAGA_REPLY_RECEIVED = "saga.reply_received"
SAGA_CANCEL_REQUESTED = "saga.cancel_requested"
SAGA_TIMED_OUT = "saga.timed_out"
SAGA_COMPENSATION_STARTED = "saga.compensation_started"
SAGA_COMPENSATION_ABORTED = "saga.compensation_aborted"
SAGA_ORDER_COMMAND_ISSUED = "saga.order_command_issued"
SAGA_DEADLINE_SET = "saga.deadline_set"
SAGA_COMPLETED = "saga.completed"
SAGA_ANOMALY_DETECTED = "saga.anomaly_detected"

SAGA_EVENT_TYPES = frozenset(
    {
        SAGA_STARTED,
        SAGA_STEP_REQUESTED,
        SAGA_REPLY_RECEIVED,
        SAGA_CANCEL_REQUESTED,
        SAGA_TIMED_OUT,
        SAGA_COMPENSATION_STARTED,
        SAGA_COMPENSATION_ABORTED,
        SAGA_ORDER_COMMAND_ISSUED,
        SAGA_DEADLINE_SET,
        SAGA_COMPLETED,
        SAGA_ANOMALY_DETECTED,
    }
)

ANOMALY_DISPATCHED_DURING_COMPENSATION = "shipment_dispatched_during_compensation"
ANOMALY_PAYMENT_LOST = "payment_compensated_outside_saga"
ANOMALY_SHIPMENT_LOST = "shipment_cancelled_outside_saga"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def saga_started(trigger: SagaStarted, now: datetime) -> NewEvent:
    return NewEvent(
        SAGA_STARTED,
        {
            "order_id": trigger.order_id,
            "customer_id": trigger.customer_id,
            "payment_id": payment_id_for(trigger.order_id),
            "shipment_id": shipment_id_for(trigger.order_id),
            "amount_cents": trigger.total_cents,
            "currency": trigger.currency,
            "shipping_address": trigger.shipping_address.to_dict(),
            "step_timeout_s": float(trigger.step_timeout_s),
            "started_at": now.isoformat(),
        },
    )


def _defensive(command_type: str) -> str:
    """The `issued` key of a compensation sent before the saga knew there was anything to undo."""
    return command_type + "#defensive"


def saga_step_requested(order_id: str, command: Command, now: datetime, *, defensive: bool = False) -> NewEvent:
    """Carries the whole command, so the saga log can also serve as the command outbox.

    `defensive`: a compensation sent for a start command still in flight (queued behind it).
    """
    return NewEvent(
        SAGA_STEP_REQUESTED,
        {
            "order_id": order_id,
            "defensive": defensive,
            "command": {
                "type": command.type,
                "topic": COMMAND_TOPICS[command.type],
                "target_id": command.target_id,
                "command_id": str(command.command_id),
                "data": dict(command.data),
            },
            "requested_at": now.isoformat(),
        },
    )


def saga_reply_received(order_id: str, reply: ReplyReceived, now: datetime) -> NewEvent:
    data: dict[str, Any] = {
        "order_id": order_id,
        "reply_type": reply.type,
        "reply_id": reply.event_id,
        "received_at": now.isoformat(),
    }
    for key in ("reason", "amount_cents"):
        if key in reply.data:
            data[key] = reply.data[key]
    return NewEvent(SAGA_REPLY_RECEIVED, data)


def saga_cancel_requested(order_id: str, now: datetime) -> NewEvent:
    return NewEvent(SAGA_CANCEL_REQUESTED, {"order_id": order_id, "requested_at": now.isoformat()})


def saga_timed_out(
    order_id: str,
    step: str,
    action: str,
    awaiting: Iterable[str],
    deadline: datetime | None,
    gave_up: Iterable[str],
    now: datetime,
) -> NewEvent:
    """`action`: "compensate" (the step failed) or "retry" (compensations asked again)."""
    return NewEvent(
        SAGA_TIMED_OUT,
        {
            "order_id": order_id,
            "step": step,
            "action": action,
            "awaiting": sorted(awaiting),
            "deadline": _iso(deadline),
            "gave_up": sorted(gave_up),
            "at": now.isoformat(),
        },
    )


def saga_compensation_started(order_id: str, outcome: OrderStatus, reason: str) -> NewEvent:
    return NewEvent(SAGA_COMPENSATION_STARTED, {"order_id": order_id, "outcome": str(outcome), "reason": reason})


def saga_compensation_aborted(order_id: str, reason: str) -> NewEvent:
    return NewEvent(SAGA_COMPENSATION_ABORTED, {"order_id": order_id, "reason": reason})


def saga_order_command_issued(command: OrderCommand) -> NewEvent:
    data: dict[str, Any] = {"order_id": command.order_id}
    if isinstance(command, ConfirmOrder):
        data |= {"command": "confirm", "status": "CONFIRMED", "payment_id": command.payment_id,
                 "shipment_id": command.shipment_id}
    elif isinstance(command, ShipOrder):
        data |= {"command": "ship", "status": "SHIPPED", "shipment_id": command.shipment_id}
    elif isinstance(command, DeliverOrder):
        data |= {"command": "deliver", "status": "DELIVERED", "shipment_id": command.shipment_id}
    elif isinstance(command, RejectOrder):
        data |= {"command": "reject", "status": "REJECTED", "reason": command.reason}
    elif isinstance(command, CancelOrder):
        data |= {"command": "cancel", "status": "CANCELLED", "reason": command.reason}
    else:  # pragma: no cover - the saga never places orders
        raise TypeError(f"not a saga order command: {command!r}")
    return NewEvent(SAGA_ORDER_COMMAND_ISSUED, data)


def saga_deadline_set(order_id: str, deadline: datetime | None, awaiting: Iterable[str]) -> NewEvent:
    return NewEvent(SAGA_DEADLINE_SET, {"order_id": order_id, "deadline": _iso(deadline), "awaiting": list(awaiting)})


def saga_completed(order_id: str, status: OrderStatus, reason: str | None) -> NewEvent:
    data: dict[str, Any] = {"order_id": order_id, "status": str(status)}
    if reason is not None:
        data["reason"] = reason
    return NewEvent(SAGA_COMPLETED, data)


def saga_anomaly_detected(order_id: str, anomaly: str) -> NewEvent:
    return NewEvent(SAGA_ANOMALY_DETECTED, {"order_id": order_id, "anomaly": anomaly})


# --------------------------------------------------------------------------- state


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
    payment: PaymentFact | None = None
    shipment: ShipmentFact | None = None
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
        """A human name for where the saga stands (GET /sagas/{order_id})."""
        if not self.exists:
            return "not_started"
        if self.mode is SagaMode.COMPENSATE:
            return "compensated" if self.completed and not self.awaiting else "compensating"
        if self.completed:
            return "completed"
        if PAYMENT_AUTHORIZE in self.awaiting:
            return "authorizing_payment"
        if SHIPMENT_SCHEDULE in self.awaiting:
            return "scheduling_shipment"
        if PAYMENT_CAPTURE in self.awaiting:
            return "capturing_payment"
        if self.order_status is OrderStatus.CONFIRMED:
            return "awaiting_dispatch"
        if self.order_status is OrderStatus.SHIPPED:
            return "awaiting_delivery"
        return "running"

    def to_dict(self) -> dict[str, Any]:
        """The saga's state for GET /sagas/{order_id} (its history = the saga's events)."""
        return {
            "order_id": self.order_id,
            "payment_id": self.payment_id,
            "shipment_id": self.shipment_id,
            "version": self.version,
            "mode": str(self.mode),
            "step": self.step,
            "order_status": str(self.order_status),
            "payment_status": None if self.payment is None else str(self.payment),
            "shipment_status": None if self.shipment is None else str(self.shipment),
            "outcome": None if self.outcome is None else str(self.outcome),
            "reason": self.outcome_reason,
            "awaiting": list(self.awaiting),
            "deadline": _iso(self.deadline),
            "completed": self.completed,
            "cancel_requested": self.cancel_requested,
            "timeouts": self.timeouts,
            "anomalies": list(self.anomalies),
            "history": list(self.history),
        }


@dataclass(frozen=True, slots=True)
class SagaDecision:
    """What one trigger decided; persist all three atomically (see the module docstring)."""

    saga_events: list[NewEvent]
    commands: list[Command]
    order_commands: list[OrderCommand]
    #: The saga's state after `saga_events` (saves the caller a fold); `.deadline` to index.
    state: SagaState

    @property
    def is_empty(self) -> bool:
        return not self.saga_events


# --------------------------------------------------------------------------- evolve / fold


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def evolve(state: SagaState, event: EventLike) -> SagaState:
    """Apply one saga fact. Unknown types only advance the version."""
    data = event.data
    s = replace(state, version=state.version + 1)
    kind = event.type
    if kind == SAGA_STARTED:
        return replace(
            s,
            order_id=data["order_id"],
            customer_id=data.get("customer_id", ""),
            payment_id=data["payment_id"],
            shipment_id=data["shipment_id"],
            amount_cents=data["amount_cents"],
            currency=data["currency"],
            shipping_address=Address.from_dict(data["shipping_address"], "shipping_address"),
            step_timeout_s=float(data["step_timeout_s"]),
            started_at=_parse_time(data.get("started_at")),
            history=s.history + ("started",),
        )
    if kind == SAGA_STEP_REQUESTED:
        command_type = data["command"]["type"]
        key = _defensive(command_type) if data.get("defensive") else command_type
        return replace(s, issued=s.issued | {key}, history=s.history + (key,))
    if kind == SAGA_REPLY_RECEIVED:
        reply_type = data["reply_type"]
        s = replace(s, seen_replies=s.seen_replies | {data["reply_id"]}, history=s.history + (reply_type,))
        if reply_type in _PAYMENT_REPLIES:
            fact = _PAYMENT_REPLIES[reply_type][0]
            reason = data.get("reason") if fact is PaymentFact.DECLINED else s.payment_reason
            return replace(s, payment=fact, payment_reason=reason)
        if reply_type in _SHIPMENT_REPLIES:
            shipment_fact = _SHIPMENT_REPLIES[reply_type][0]
            reason = data.get("reason") if shipment_fact is ShipmentFact.FAILED else s.shipment_reason
            return replace(s, shipment=shipment_fact, shipment_reason=reason)
        return s
    if kind == SAGA_CANCEL_REQUESTED:
        return replace(s, cancel_requested=True, history=s.history + ("cancel_requested",))
    if kind == SAGA_TIMED_OUT:
        return replace(
            s,
            timeouts=s.timeouts + 1,
            gave_up=s.gave_up | set(data.get("gave_up", ())),
            history=s.history + (f"timed_out:{data['step']}",),
        )
    if kind == SAGA_COMPENSATION_STARTED:
        return replace(
            s,
            mode=SagaMode.COMPENSATE,
            outcome=OrderStatus(data["outcome"]),
            outcome_reason=data["reason"],
            history=s.history + (f"compensating:{data['reason']}",),
        )
    if kind == SAGA_COMPENSATION_ABORTED:
        return replace(
            s, mode=SagaMode.FULFIL, outcome=None, outcome_reason=None,
            history=s.history + (f"compensation_aborted:{data['reason']}",),
        )
    if kind == SAGA_ORDER_COMMAND_ISSUED:
        return replace(s, order_status=OrderStatus(data["status"]), history=s.history + (f"order:{data['command']}",))
    if kind == SAGA_DEADLINE_SET:
        return replace(s, deadline=_parse_time(data["deadline"]), awaiting=tuple(data["awaiting"]))
    if kind == SAGA_COMPLETED:
        return replace(s, completed=True, history=s.history + ("completed",))
    if kind == SAGA_ANOMALY_DETECTED:
        return replace(s, anomalies=s.anomalies + (data["anomaly"],), history=s.history + (f"anomaly:{data['anomaly']}",))
    return s


def fold(events: Iterable[EventLike]) -> SagaState:
    state = SagaState()
    for event in events:
        state = evolve(state, event)
    return state


# --------------------------------------------------------------------------- reading saga events back


def command_from_event(event: EventLike) -> Command | None:
    """The command a `saga.step_requested` carries (for a relay that tails the saga log)."""
    if event.type != SAGA_STEP_REQUESTED:
        return None
    raw = event.data["command"]
    return Command(
        type=raw["type"], target_id=raw["target_id"], data=dict(raw["data"]), command_id=uuid.UUID(raw["command_id"])
    )


def order_command_from_event(event: EventLike) -> OrderCommand | None:
    """The order command a `saga.order_command_issued` carries (to re-apply after a crash)."""
    if event.type != SAGA_ORDER_COMMAND_ISSUED:
        return None
    data = event.data
    kind = data["command"]
    if kind == "confirm":
        return ConfirmOrder(data["order_id"], data["payment_id"], data["shipment_id"])
    if kind == "ship":
        return ShipOrder(data["order_id"], data["shipment_id"])
    if kind == "deliver":
        return DeliverOrder(data["order_id"], data["shipment_id"])
    if kind == "reject":
        return RejectOrder(data["order_id"], data["reason"])
    if kind == "cancel":
        return CancelOrder(data["order_id"], data["reason"])
    return None


def redacted(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of saga event data safe to show (the payment token never leaves the service)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECRET_FIELDS:
            out[key] = "***"
        elif isinstance(value, Mapping):
            out[key] = redacted(value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- decide


class _Builder:
    """Accumulates one decision: emits saga events and evolves the state as it goes."""

    def __init__(self, state: SagaState, now: datetime, payment_token: str | None = None) -> None:
        self.state = state
        self.now = now
        self.payment_token = payment_token
        self.events: list[NewEvent] = []
        self.commands: list[Command] = []
        self.order_commands: list[OrderCommand] = []

    def emit(self, event: NewEvent) -> None:
        self.events.append(event)
        self.state = evolve(self.state, event)

    def issue(self, command_type: str, *, defensive: bool = False) -> None:
        """Send a command to a participant (first time or again)."""
        s = self.state
        # Deterministic id: the saga stream version the step_requested event is about to get.
        command_id = uuid.UUID(derived_id(s.order_id, f"saga-command:{s.version + 1}"))
        reason = s.outcome_reason or "compensation"
        if command_type == PAYMENT_AUTHORIZE:
            if self.payment_token is None:  # pragma: no cover - authorize is only issued at start
                raise RuntimeError("payment.authorize needs the payment token of SagaStarted")
            target, data = s.payment_id, {
                "payment_id": s.payment_id, "order_id": s.order_id, "amount_cents": s.amount_cents,
                "currency": s.currency, "payment_token": self.payment_token,
            }
        elif command_type == PAYMENT_CAPTURE:
            target, data = s.payment_id, {"payment_id": s.payment_id, "order_id": s.order_id}
        elif command_type in (PAYMENT_VOID, PAYMENT_REFUND):
            target, data = s.payment_id, {"payment_id": s.payment_id, "order_id": s.order_id, "reason": reason}
        elif command_type == SHIPMENT_SCHEDULE:
            assert s.shipping_address is not None
            target, data = s.shipment_id, {
                "shipment_id": s.shipment_id, "order_id": s.order_id, "address": s.shipping_address.to_dict(),
            }
        elif command_type == SHIPMENT_CANCEL:
            target, data = s.shipment_id, {"shipment_id": s.shipment_id, "order_id": s.order_id, "reason": reason}
        else:  # pragma: no cover
            raise ValueError(command_type)
        command = Command(type=command_type, target_id=target, data=data, command_id=command_id)
        self.commands.append(command)
        self.emit(saga_step_requested(s.order_id, command, self.now, defensive=defensive))

    def order(self, command: OrderCommand) -> None:
        self.order_commands.append(command)
        self.emit(saga_order_command_issued(command))

    def result(self) -> SagaDecision:
        return SagaDecision(list(self.events), list(self.commands), list(self.order_commands), self.state)


def decide(trigger: SagaTrigger, state: SagaState, now: datetime) -> SagaDecision:
    """Decide what one trigger means for the saga. Raises only for a refused cancel."""
    if isinstance(trigger, SagaStarted):
        b = _Builder(state, now, trigger.payment_token)
        if state.exists:
            return b.result()  # a repeated start (e.g. a retried placement) decides nothing
        require_text(trigger.order_id, "order_id")
        require_int(trigger.total_cents, "total_cents", minimum=0)
        require_currency(trigger.currency, "currency")
        require_text(trigger.payment_token, "payment_token")
        b.emit(saga_started(trigger, now))
        return _finish(b, restart_deadline=True)

    b = _Builder(state, now)
    if isinstance(trigger, CancelRequested):
        if not state.exists:
            raise NotFound("saga_not_found", "no saga for this order")
        if state.order_status not in CANCELLABLE_STATUSES:
            raise IllegalTransition("order_not_cancellable", f"cannot cancel an order that is {state.order_status}")
        if state.mode is SagaMode.COMPENSATE:
            return b.result()  # already being cancelled (or compensated): accepted, nothing new
        if state.shipment in _GOODS_OUT:
            raise IllegalTransition("shipment_already_dispatched", "the goods have left: the order can no longer be cancelled")
        b.emit(saga_cancel_requested(state.order_id, now))
        b.emit(saga_compensation_started(state.order_id, OrderStatus.CANCELLED, REASON_CANCELLED_BY_CUSTOMER))
        return _finish(b)

    if not state.exists:
        return b.result()  # nothing to drive: a stray reply or timer

    if isinstance(trigger, ReplyReceived):
        if not _advances(state, trigger):
            return b.result()
        b.emit(saga_reply_received(state.order_id, trigger, now))
        return _finish(b)

    if isinstance(trigger, StepTimedOut):
        if state.deadline is None or now < state.deadline:
            return b.result()
        _on_timeout(b)
        return _finish(b, restart_deadline=True)

    raise TypeError(f"unknown saga trigger {trigger!r}")  # pragma: no cover


def _advances(state: SagaState, reply: ReplyReceived) -> bool:
    """True if the reply is about this saga's order and moves the knowledge forward."""
    if reply.event_id in state.seen_replies:
        return False
    order_id = reply.data.get("order_id")
    if order_id is not None and order_id != state.order_id:
        return False
    if reply.type in _PAYMENT_REPLIES:
        if reply.data.get("payment_id", state.payment_id) != state.payment_id:
            return False
        known = 0 if state.payment is None else _PAYMENT_RANK[state.payment]
        return _PAYMENT_REPLIES[reply.type][1] > known
    if reply.type in _SHIPMENT_REPLIES:
        if reply.data.get("shipment_id", state.shipment_id) != state.shipment_id:
            return False
        known = 0 if state.shipment is None else _SHIPMENT_RANK[state.shipment]
        return _SHIPMENT_REPLIES[reply.type][1] > known
    return False


def _finish(b: _Builder, restart_deadline: bool = False) -> SagaDecision:
    _reconcile(b)
    _refresh_deadline(b, restart_deadline)
    return b.result()


def _awaiting(s: SagaState) -> tuple[str, ...]:
    """The command types whose answer the saga is waiting for."""
    waiting: list[str] = []
    if s.mode is SagaMode.FULFIL:
        if s.payment is None and PAYMENT_AUTHORIZE in s.issued:
            waiting.append(PAYMENT_AUTHORIZE)
        if s.shipment is None and SHIPMENT_SCHEDULE in s.issued:
            waiting.append(SHIPMENT_SCHEDULE)
        if s.payment is PaymentFact.AUTHORIZED and PAYMENT_CAPTURE in s.issued:
            waiting.append(PAYMENT_CAPTURE)
    else:
        if s.shipment is ShipmentFact.SCHEDULED and SHIPMENT_CANCEL in s.issued:
            waiting.append(SHIPMENT_CANCEL)
        if s.shipment is None and SHIPMENT_SCHEDULE in s.issued and _SHIPMENT not in s.gave_up:
            waiting.append(SHIPMENT_SCHEDULE)
        if s.payment is PaymentFact.AUTHORIZED and PAYMENT_VOID in s.issued:
            waiting.append(PAYMENT_VOID)
        if s.payment is PaymentFact.CAPTURED and PAYMENT_REFUND in s.issued:
            waiting.append(PAYMENT_REFUND)
        if s.payment is None and PAYMENT_AUTHORIZE in s.issued and _PAYMENT not in s.gave_up:
            waiting.append(PAYMENT_AUTHORIZE)
    return tuple(waiting)


def _refresh_deadline(b: _Builder, restart: bool) -> None:
    """Keep `deadline` = now + step timeout for a newly awaited step; None when idle."""
    s = b.state
    awaiting = _awaiting(s)
    if not awaiting:
        deadline = None
    elif restart or b.commands or awaiting != s.awaiting or s.deadline is None:
        deadline = b.now + timedelta(seconds=s.step_timeout_s)
    else:
        deadline = s.deadline
    if deadline != s.deadline or awaiting != s.awaiting:
        b.emit(saga_deadline_set(s.order_id, deadline, awaiting))


def _on_timeout(b: _Builder) -> None:
    s = b.state
    awaiting = _awaiting(s)
    # Start commands still unanswered: stop waiting for them (their defensive
    # compensations are queued behind them; late answers are still handled).
    in_flight_starts: set[str] = set()
    if PAYMENT_AUTHORIZE in awaiting:
        in_flight_starts.add(_PAYMENT)
    if SHIPMENT_SCHEDULE in awaiting:
        in_flight_starts.add(_SHIPMENT)
    if s.mode is SagaMode.FULFIL and s.shipment not in _GOODS_OUT and awaiting:
        step = _TIMEOUT_STEP[awaiting[0]]
        b.emit(saga_timed_out(s.order_id, step, "compensate", awaiting, s.deadline, in_flight_starts, b.now))
        # No money was ever authorized while the authorize is unanswered: reject, not cancel.
        outcome = OrderStatus.REJECTED if s.payment is None else OrderStatus.CANCELLED
        b.emit(saga_compensation_started(s.order_id, outcome, f"{step}_timeout"))
        return
    # Compensating (or the goods are already out): never give up on money, ask again.
    if s.mode is SagaMode.COMPENSATE:
        step, gave_up = "compensation", in_flight_starts
    else:
        step, gave_up = (_TIMEOUT_STEP.get(awaiting[0], "step") if awaiting else "step"), set()
    b.emit(saga_timed_out(s.order_id, step, "retry", awaiting, s.deadline, gave_up, b.now))
    for command_type in awaiting:
        if command_type not in (PAYMENT_AUTHORIZE, SHIPMENT_SCHEDULE):
            b.issue(command_type)


def _reconcile(b: _Builder) -> None:
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


def _fulfil_step(b: _Builder) -> None:
    s = b.state
    open_order = s.order_status in CANCELLABLE_STATUSES
    if s.payment is PaymentFact.DECLINED and open_order:
        b.emit(saga_compensation_started(s.order_id, OrderStatus.REJECTED, f"payment_declined:{s.payment_reason}"))
        return
    if s.shipment is ShipmentFact.FAILED and open_order:
        b.emit(saga_compensation_started(s.order_id, OrderStatus.CANCELLED, f"shipping_failed:{s.shipment_reason}"))
        return
    if s.payment in (PaymentFact.VOIDED, PaymentFact.REFUNDED) and open_order:
        # Money went back without the saga asking: the order cannot go on.
        b.emit(saga_anomaly_detected(s.order_id, ANOMALY_PAYMENT_LOST))
        b.emit(saga_compensation_started(s.order_id, OrderStatus.CANCELLED, f"payment_{str(s.payment).lower()}"))
        return
    if s.shipment is ShipmentFact.CANCELLED and open_order:
        b.emit(saga_anomaly_detected(s.order_id, ANOMALY_SHIPMENT_LOST))
        b.emit(saga_compensation_started(s.order_id, OrderStatus.CANCELLED, "shipment_cancelled"))
        return

    if s.payment is None and PAYMENT_AUTHORIZE not in s.issued:
        b.issue(PAYMENT_AUTHORIZE)
    elif (
        s.payment in (PaymentFact.AUTHORIZED, PaymentFact.CAPTURED)
        and s.shipment is None
        and SHIPMENT_SCHEDULE not in s.issued
    ):
        b.issue(SHIPMENT_SCHEDULE)
    elif s.payment is PaymentFact.AUTHORIZED and s.shipment in _SHIPMENT_EXISTS and PAYMENT_CAPTURE not in s.issued:
        b.issue(PAYMENT_CAPTURE)
    elif s.order_status is OrderStatus.PENDING and s.payment is PaymentFact.CAPTURED and s.shipment in _SHIPMENT_EXISTS:
        b.order(ConfirmOrder(s.order_id, s.payment_id, s.shipment_id))
    elif s.order_status is OrderStatus.CONFIRMED and s.shipment in _GOODS_OUT:
        b.order(ShipOrder(s.order_id, s.shipment_id))
    elif s.order_status is OrderStatus.SHIPPED and s.shipment is ShipmentFact.DELIVERED:
        b.order(DeliverOrder(s.order_id, s.shipment_id))
    elif s.order_status is OrderStatus.DELIVERED and not s.completed:
        b.emit(saga_completed(s.order_id, OrderStatus.DELIVERED, None))


def _compensate_step(b: _Builder) -> None:
    s = b.state
    # 1. The shipment first: while it is not undone, no money is given back, so a shipment
    #    that turns out to be dispatched can still be paid for (compensation aborted).
    if s.shipment in _GOODS_OUT:
        money_untouched = not ({PAYMENT_VOID, PAYMENT_REFUND} & s.issued)
        if (
            s.order_status in CANCELLABLE_STATUSES
            and s.payment in (PaymentFact.AUTHORIZED, PaymentFact.CAPTURED)
            and money_untouched
        ):
            b.emit(saga_compensation_aborted(s.order_id, "shipment_already_dispatched"))
            return
        if ANOMALY_DISPATCHED_DURING_COMPENSATION not in s.anomalies:
            b.emit(saga_anomaly_detected(s.order_id, ANOMALY_DISPATCHED_DURING_COMPENSATION))
            return
        shipment_settled = True  # cannot be recalled; flagged above
    else:
        if s.shipment is ShipmentFact.SCHEDULED and SHIPMENT_CANCEL not in s.issued:
            b.issue(SHIPMENT_CANCEL)
            return
        if s.shipment is None and SHIPMENT_SCHEDULE in s.issued and _defensive(SHIPMENT_CANCEL) not in s.issued:
            b.issue(SHIPMENT_CANCEL, defensive=True)  # processed after the schedule in flight
            return
        shipment_settled = s.shipment in (ShipmentFact.FAILED, ShipmentFact.CANCELLED) or (
            s.shipment is None and (SHIPMENT_SCHEDULE not in s.issued or _SHIPMENT in s.gave_up)
        )
    if not shipment_settled:
        return

    # 2. Then the money.
    if s.payment is PaymentFact.AUTHORIZED and PAYMENT_VOID not in s.issued:
        b.issue(PAYMENT_VOID)
        return
    if s.payment is PaymentFact.CAPTURED and PAYMENT_REFUND not in s.issued:
        b.issue(PAYMENT_REFUND)
        return
    if s.payment is None and PAYMENT_AUTHORIZE in s.issued and _defensive(PAYMENT_VOID) not in s.issued:
        b.issue(PAYMENT_VOID, defensive=True)  # processed after the authorize in flight
        return
    payment_settled = s.payment in (PaymentFact.DECLINED, PaymentFact.VOIDED, PaymentFact.REFUNDED) or (
        s.payment is None and (PAYMENT_AUTHORIZE not in s.issued or _PAYMENT in s.gave_up)
    )
    if not payment_settled:
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
        b.emit(saga_completed(s.order_id, s.order_status, s.outcome_reason))

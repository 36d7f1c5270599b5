"""The Payment aggregate: money held (authorized), taken (captured) or given back.

Pure: `decide(command, state) -> list[NewEvent]`, `evolve`, `fold`. Stream id = payment_id =
`derived_id(order_id, "payment")`, so every retried command addresses the same payment.

Answering rules (docs/EVENTS.md): a command whose effect is already recorded returns [] and
the service re-answers with the recorded fact (`find_answer`); a refused command raises a
DomainError and the service answers nothing (the saga's step timeout covers it).

  * AuthorizePayment on an existing payment → [] (whatever the outcome was: authorized or declined).
  * CapturePayment: AUTHORIZED → captured; CAPTURED/REFUNDED → [] (already captured once);
    DECLINED/VOIDED → IllegalTransition; unknown payment → NotFound.
  * VoidPayment: AUTHORIZED → voided; VOIDED → []; DECLINED/CAPTURED/REFUNDED → IllegalTransition;
    unknown payment → NotFound, recording nothing.
  * RefundPayment: CAPTURED → refunded; REFUNDED → []; others → IllegalTransition; unknown → NotFound.

Void before authorize: commands are keyed (Kafka key = payment_id) and so arrive in the order
the saga sent them. A void the saga sends defensively after an authorize that timed out is
processed after that authorize: either the payment exists by then (void → voided), or the
authorize never reached us and we refuse the void with NotFound and record nothing. Nothing is
recorded for a refused void, so a later authorize is not blocked by a tombstone; the saga keeps
watching the payment's stream and voids any late authorization itself.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence, TypeAlias, TypeVar

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.domain_kit import E, EventLike, field_of, latest_of, require_currency, require_int, require_text
from shared.messages import NewEvent

#: SPEC §5 default of PAYMENT_LIMIT_CENTS.
DEFAULT_LIMIT_CENTS = 1_000_000
#: SPEC §5: this token is always declined with `card_declined`.
DECLINING_TOKEN = "tok_decline"

DECLINE_CARD_DECLINED = "card_declined"
DECLINE_AMOUNT_OVER_LIMIT = "amount_over_limit"


class PaymentStatus(StrEnum):
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


# --------------------------------------------------------------------------- commands

PAYMENT_AUTHORIZE = "payment.authorize"
PAYMENT_CAPTURE = "payment.capture"
PAYMENT_VOID = "payment.void"
PAYMENT_REFUND = "payment.refund"


@dataclass(frozen=True, slots=True)
class AuthorizePayment:
    payment_id: str
    order_id: str
    amount_cents: int
    currency: str
    payment_token: str
    limit_cents: int = DEFAULT_LIMIT_CENTS


@dataclass(frozen=True, slots=True)
class CapturePayment:
    payment_id: str
    order_id: str


@dataclass(frozen=True, slots=True)
class VoidPayment:
    payment_id: str
    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RefundPayment:
    payment_id: str
    order_id: str
    reason: str


PaymentCommand: TypeAlias = AuthorizePayment | CapturePayment | VoidPayment | RefundPayment


def command_from_message(
    command_type: str, data: Mapping[str, Any], *, limit_cents: int = DEFAULT_LIMIT_CENTS
) -> PaymentCommand:
    """Build a domain command from a `payment.commands` message (InvalidCommand if malformed)."""
    payment_id = field_of(data, "payment_id")
    order_id = field_of(data, "order_id")
    if command_type == PAYMENT_AUTHORIZE:
        return AuthorizePayment(
            payment_id=payment_id,
            order_id=order_id,
            amount_cents=field_of(data, "amount_cents"),
            currency=field_of(data, "currency"),
            payment_token=field_of(data, "payment_token"),
            limit_cents=limit_cents,
        )
    if command_type == PAYMENT_CAPTURE:
        return CapturePayment(payment_id=payment_id, order_id=order_id)
    if command_type == PAYMENT_VOID:
        return VoidPayment(payment_id=payment_id, order_id=order_id, reason=data.get("reason") or "voided")
    if command_type == PAYMENT_REFUND:
        return RefundPayment(payment_id=payment_id, order_id=order_id, reason=data.get("reason") or "refunded")
    raise InvalidCommand("type", f"unknown payment command {command_type!r}", code="unknown_command")


# --------------------------------------------------------------------------- events (facts)

PAYMENT_AUTHORIZED = "payment.authorized"
PAYMENT_DECLINED = "payment.declined"
PAYMENT_CAPTURED = "payment.captured"
PAYMENT_VOIDED = "payment.voided"
PAYMENT_REFUNDED = "payment.refunded"

PAYMENT_EVENT_TYPES = frozenset(
    {PAYMENT_AUTHORIZED, PAYMENT_DECLINED, PAYMENT_CAPTURED, PAYMENT_VOIDED, PAYMENT_REFUNDED}
)


def _money(payment_id: str, order_id: str, amount_cents: int, currency: str) -> dict[str, Any]:
    return {"payment_id": payment_id, "order_id": order_id, "amount_cents": amount_cents, "currency": currency}


def payment_authorized(payment_id: str, order_id: str, amount_cents: int, currency: str) -> NewEvent:
    return NewEvent(PAYMENT_AUTHORIZED, _money(payment_id, order_id, amount_cents, currency))


def payment_declined(payment_id: str, order_id: str, amount_cents: int, currency: str, reason: str) -> NewEvent:
    return NewEvent(PAYMENT_DECLINED, {**_money(payment_id, order_id, amount_cents, currency), "reason": reason})


def payment_captured(payment_id: str, order_id: str, amount_cents: int, currency: str) -> NewEvent:
    return NewEvent(PAYMENT_CAPTURED, _money(payment_id, order_id, amount_cents, currency))


def payment_voided(payment_id: str, order_id: str, amount_cents: int, currency: str, reason: str) -> NewEvent:
    return NewEvent(PAYMENT_VOIDED, {**_money(payment_id, order_id, amount_cents, currency), "reason": reason})


def payment_refunded(payment_id: str, order_id: str, amount_cents: int, currency: str, reason: str) -> NewEvent:
    return NewEvent(PAYMENT_REFUNDED, {**_money(payment_id, order_id, amount_cents, currency), "reason": reason})


#: Which recorded facts answer each command (used to re-answer a duplicate).
ANSWER_TYPES: dict[type, frozenset[str]] = {
    AuthorizePayment: frozenset({PAYMENT_AUTHORIZED, PAYMENT_DECLINED}),
    CapturePayment: frozenset({PAYMENT_CAPTURED}),
    VoidPayment: frozenset({PAYMENT_VOIDED}),
    RefundPayment: frozenset({PAYMENT_REFUNDED}),
}

def find_answer(command: PaymentCommand, history: Sequence[E]) -> E | None:
    """The recorded fact that already answers `command` (for a duplicate), if any."""
    return latest_of(history, ANSWER_TYPES[type(command)])


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class PaymentState:
    """A payment as its facts say; version 0 means it does not exist."""

    payment_id: str = ""
    order_id: str = ""
    version: int = 0
    status: PaymentStatus | None = None
    amount_cents: int = 0
    currency: str = ""
    reason: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0

    def to_dict(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "status": None if self.status is None else str(self.status),
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "version": self.version,
        }
        if self.reason is not None:
            view["reason"] = self.reason
        return view


# --------------------------------------------------------------------------- decide


def _not_found(payment_id: str) -> NotFound:
    return NotFound("payment_not_found", f"payment {payment_id} does not exist")


def _illegal(action: str, state: PaymentState) -> IllegalTransition:
    return IllegalTransition("illegal_payment_transition", f"cannot {action} a payment that is {state.status}")


def decide(command: PaymentCommand, state: PaymentState) -> list[NewEvent]:
    """Turn a command into the facts it causes, or refuse it with a DomainError."""
    require_text(command.payment_id, "payment_id")
    require_text(command.order_id, "order_id")

    if isinstance(command, AuthorizePayment):
        require_int(command.amount_cents, "amount_cents", minimum=0)
        require_currency(command.currency, "currency")
        require_text(command.payment_token, "payment_token")
        if state.exists:
            return []  # duplicate: the caller re-answers with the recorded fact
        args = (command.payment_id, command.order_id, command.amount_cents, command.currency)
        if command.payment_token == DECLINING_TOKEN:
            return [payment_declined(*args, DECLINE_CARD_DECLINED)]
        if command.amount_cents > command.limit_cents:
            return [payment_declined(*args, DECLINE_AMOUNT_OVER_LIMIT)]
        return [payment_authorized(*args)]

    if not state.exists:
        raise _not_found(command.payment_id)
    money = (state.payment_id, state.order_id, state.amount_cents, state.currency)

    if isinstance(command, CapturePayment):
        if state.status is PaymentStatus.AUTHORIZED:
            return [payment_captured(*money)]
        if state.status in (PaymentStatus.CAPTURED, PaymentStatus.REFUNDED):
            return []
        raise _illegal("capture", state)

    if isinstance(command, VoidPayment):
        require_text(command.reason, "reason")
        if state.status is PaymentStatus.AUTHORIZED:
            return [payment_voided(*money, command.reason)]
        if state.status is PaymentStatus.VOIDED:
            return []
        raise _illegal("void", state)

    if isinstance(command, RefundPayment):
        require_text(command.reason, "reason")
        if state.status is PaymentStatus.CAPTURED:
            return [payment_refunded(*money, command.reason)]
        if state.status is PaymentStatus.REFUNDED:
            return []
        raise _illegal("refund", state)

    raise InvalidCommand("command", f"unknown payment command {type(command).__name__}", code="unknown_command")


# --------------------------------------------------------------------------- evolve / fold

_STATUS_BY_EVENT = {
    PAYMENT_AUTHORIZED: PaymentStatus.AUTHORIZED,
    PAYMENT_DECLINED: PaymentStatus.DECLINED,
    PAYMENT_CAPTURED: PaymentStatus.CAPTURED,
    PAYMENT_VOIDED: PaymentStatus.VOIDED,
    PAYMENT_REFUNDED: PaymentStatus.REFUNDED,
}


def evolve(state: PaymentState, event: EventLike) -> PaymentState:
    """Apply one fact. Unknown types only advance the version (the stream position)."""
    data = event.data
    version = state.version + 1
    status = _STATUS_BY_EVENT.get(event.type)
    if status is None:
        return replace(state, version=version)
    if event.type in (PAYMENT_AUTHORIZED, PAYMENT_DECLINED):
        return PaymentState(
            payment_id=data["payment_id"],
            order_id=data["order_id"],
            version=version,
            status=status,
            amount_cents=data["amount_cents"],
            currency=data["currency"],
            reason=data.get("reason"),
        )
    return replace(state, version=version, status=status, reason=data.get("reason", state.reason))


def fold(events: Iterable[EventLike]) -> PaymentState:
    state = PaymentState()
    for event in events:
        state = evolve(state, event)
    return state

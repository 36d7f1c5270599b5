"""The Payment aggregate: money held (authorized), taken (captured) or given back.

Pure: `decide(command, state, limit_cents=...) -> list[PaymentFact]`, `evolve`, `fold`. The
commands and facts are the contract's (shared/contract/payment.py). Stream id = payment_id =
`derived_id(order_id, "payment")`, so every retried command addresses the same payment. The
authorization limit is a policy of the service (PAYMENT_LIMIT_CENTS), bound by its service layer.

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from services.domain_kit import latest_of, require_currency, require_int, require_text
from shared.contract import (
    AuthorizePayment,
    CapturePayment,
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
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound
from shared.eventstore import Recorded

#: Default of PAYMENT_LIMIT_CENTS: authorizations above it are declined.
DEFAULT_LIMIT_CENTS = 1_000_000
#: This token is always declined with `card_declined` (the system's test card).
DECLINING_TOKEN = "tok_decline"

DECLINE_CARD_DECLINED = "card_declined"
DECLINE_AMOUNT_OVER_LIMIT = "amount_over_limit"

#: Which recorded facts answer each command (used to re-answer a duplicate).
ANSWERS: dict[type[PaymentCommand], tuple[type[PaymentFact], ...]] = {
    AuthorizePayment: (PaymentAuthorized, PaymentDeclined),
    CapturePayment: (PaymentCaptured,),
    VoidPayment: (PaymentVoided,),
    RefundPayment: (PaymentRefunded,),
}


def find_answer(command: PaymentCommand, history: Sequence[Recorded]) -> Recorded | None:
    """The recorded fact that already answers `command` (for a duplicate), if any."""
    return latest_of(history, ANSWERS.get(type(command), ()))


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
    customer_id: str | None = None  # None: a payment started before the field (staff-only)

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def amount(self) -> Money:
        return Money(amount_cents=self.amount_cents, currency=self.currency)


# --------------------------------------------------------------------------- decide


def _not_found(payment_id: str) -> NotFound:
    return NotFound("payment_not_found", f"payment {payment_id} does not exist")


def _illegal(action: str, state: PaymentState) -> IllegalTransition:
    return IllegalTransition("illegal_payment_transition", f"cannot {action} a payment that is {state.status}")


def decide(command: PaymentCommand, state: PaymentState, *, limit_cents: int) -> list[PaymentFact]:
    """Turn a command into the facts it causes, or refuse it with a DomainError.

    `limit_cents`: authorizations of a larger amount are declined `amount_over_limit`.
    """
    require_text(command.payment_id, "payment_id")
    require_text(command.order_id, "order_id")

    if isinstance(command, AuthorizePayment):
        require_int(command.amount_cents, "amount_cents", minimum=0)
        require_currency(command.currency, "currency")
        require_text(command.payment_token, "payment_token")
        if state.exists:
            return []  # duplicate: the caller re-answers with the recorded fact
        payment_id, order_id, customer_id = command.payment_id, command.order_id, command.customer_id
        amount = Money(amount_cents=command.amount_cents, currency=command.currency)
        if command.payment_token == DECLINING_TOKEN or command.amount_cents > limit_cents:
            reason = DECLINE_CARD_DECLINED if command.payment_token == DECLINING_TOKEN else DECLINE_AMOUNT_OVER_LIMIT
            return [
                PaymentDeclined(
                    payment_id=payment_id, order_id=order_id, amount=amount, reason=reason, customer_id=customer_id
                )
            ]
        return [PaymentAuthorized(payment_id=payment_id, order_id=order_id, amount=amount, customer_id=customer_id)]

    if not state.exists:
        raise _not_found(command.payment_id)
    payment_id, order_id, amount = state.payment_id, state.order_id, state.amount

    if isinstance(command, CapturePayment):
        if state.status is PaymentStatus.AUTHORIZED:
            return [PaymentCaptured(payment_id=payment_id, order_id=order_id, amount=amount)]
        if state.status in (PaymentStatus.CAPTURED, PaymentStatus.REFUNDED):
            return []
        raise _illegal("capture", state)

    if isinstance(command, VoidPayment):
        require_text(command.reason, "reason")
        if state.status is PaymentStatus.AUTHORIZED:
            return [PaymentVoided(payment_id=payment_id, order_id=order_id, amount=amount, reason=command.reason)]
        if state.status is PaymentStatus.VOIDED:
            return []
        raise _illegal("void", state)

    if isinstance(command, RefundPayment):
        require_text(command.reason, "reason")
        if state.status is PaymentStatus.CAPTURED:
            return [PaymentRefunded(payment_id=payment_id, order_id=order_id, amount=amount, reason=command.reason)]
        if state.status is PaymentStatus.REFUNDED:
            return []
        raise _illegal("refund", state)

    raise InvalidCommand("command", f"unknown payment command {type(command).__name__}", code="unknown_command")


# --------------------------------------------------------------------------- evolve / fold


def evolve(state: PaymentState, fact: Fact) -> PaymentState:
    """Apply one fact. Facts of other kinds only advance the version (the stream position)."""
    version = state.version + 1
    match fact:
        case PaymentAuthorized() | PaymentDeclined():
            return PaymentState(
                payment_id=fact.payment_id,
                order_id=fact.order_id,
                version=version,
                status=PaymentStatus.AUTHORIZED if isinstance(fact, PaymentAuthorized) else PaymentStatus.DECLINED,
                amount_cents=fact.amount.amount_cents,
                currency=fact.amount.currency,
                reason=fact.reason if isinstance(fact, PaymentDeclined) else None,
                customer_id=fact.customer_id,
            )
        case PaymentCaptured():
            return replace(state, version=version, status=PaymentStatus.CAPTURED)
        case PaymentVoided(reason=reason):
            return replace(state, version=version, status=PaymentStatus.VOIDED, reason=reason)
        case PaymentRefunded(reason=reason):
            return replace(state, version=version, status=PaymentStatus.REFUNDED, reason=reason)
        case _:
            return replace(state, version=version)


def fold(facts: Iterable[Fact]) -> PaymentState:
    state = PaymentState()
    for fact in facts:
        state = evolve(state, fact)
    return state

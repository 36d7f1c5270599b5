"""What the service feeds the saga: a start, a participant's reply, a cancel, a timer.

* `StartSaga`: the order was placed (fed in the same transaction as `OrderPlaced`). It carries
  the payment token, in memory only, for the one decision that sends `AuthorizePayment`.
* `ReplyReceived`: a payment or shipment fact (their topics) about this order.
* `CancelRequested`: POST /orders/{id}/cancel.
* `StepTimedOut`: the deadline scheduler; a no-op unless `now >= state.deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from services.order.domain import OrderState
from services.order.saga.state import (
    DEFAULT_STEP_TIMEOUT_S,
    PAYMENT_RANK,
    PAYMENT_REPLIES,
    SHIPMENT_RANK,
    SHIPMENT_REPLIES,
    SagaState,
)
from shared.contract import (
    PAYMENT_FACTS,
    SHIPPING_FACTS,
    Address,
    Fact,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentVoided,
    ShipmentCancelled,
    ShipmentFact,
    ShipmentFailed,
)
from shared.errors import NotFound

#: Every fact the service feeds to the saga as a ReplyReceived.
REPLY_FACTS: tuple[type[Fact], ...] = (*PAYMENT_FACTS, *SHIPPING_FACTS)


@dataclass(frozen=True, slots=True)
class StartSaga:
    """The order was placed: start fulfilling it. No fact records `payment_token`."""

    order_id: str
    customer_id: str
    total_cents: int
    currency: str
    shipping_address: Address
    payment_token: str = field(repr=False)
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S

    @classmethod
    def for_order(
        cls, order: OrderState, payment_token: str, step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    ) -> StartSaga:
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
    """A participant's fact (`reply_id`: its message id); other facts decide nothing."""

    reply_id: str
    fact: Fact


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The customer asked to cancel (POST /orders/{id}/cancel)."""


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    """The deadline scheduler fired; a no-op unless `now >= state.deadline`."""


SagaTrigger: TypeAlias = StartSaga | ReplyReceived | CancelRequested | StepTimedOut


def advances(state: SagaState, reply: ReplyReceived) -> bool:
    """True if the reply is about this saga's order and moves the knowledge forward."""
    fact = reply.fact
    if reply.reply_id in state.seen_replies or fact.order_id != state.order_id:
        return False
    if isinstance(fact, PaymentFact):
        if fact.payment_id != state.payment_id or fact.TYPE not in PAYMENT_REPLIES:
            return False
        known = 0 if state.payment is None else PAYMENT_RANK[state.payment]
        return PAYMENT_REPLIES[fact.TYPE][1] > known
    if isinstance(fact, ShipmentFact):
        if fact.shipment_id != state.shipment_id or fact.TYPE not in SHIPMENT_REPLIES:
            return False
        known = 0 if state.shipment is None else SHIPMENT_RANK[state.shipment]
        return SHIPMENT_REPLIES[fact.TYPE][1] > known
    return False


def reason_of(fact: Fact) -> str | None:
    """Why a participant said no (or gave back), when its fact says."""
    match fact:
        case PaymentDeclined() | PaymentVoided() | PaymentRefunded() | ShipmentFailed() | ShipmentCancelled():
            return fact.reason
        case _:
            return None


def amount_of(fact: Fact) -> int | None:
    """The amount a payment fact is about (recorded with the reply)."""
    return fact.amount.amount_cents if isinstance(fact, PaymentFact) else None

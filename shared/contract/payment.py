"""The payment service's commands (`payment.commands`) and facts (`payment.events`), key: payment id.

Version 2 of every payment fact carries the amount as one `Money` value; version 1 had the
flat `amount_cents` and `currency` fields. Facts written as version 1 are never rewritten:
`_money_from_flat_fields` upcasts them when they are read.

`customer_id` (the order's customer, so the payment service can show a customer only its own
payments) was added as an optional field: `payment.authorize` v2 and the facts that start a
payment, `payment.authorized` / `payment.declined` v3. Older messages have none (`None`): their
payments are visible to staff and admins only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.contract.base import Cents, Command, Currency, Fact, Id, Money, Text
from shared.contract.topics import PAYMENT_COMMANDS, PAYMENT_EVENTS
from shared.contract.upcasting import upcaster


class PaymentCommand(Command, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = PAYMENT_COMMANDS
    TARGET: ClassVar[str] = "payment_id"

    payment_id: Id


class AuthorizePayment(PaymentCommand, frozen=True, kw_only=True):
    """Hold the order's total on the customer's card. The only message that carries the token."""

    TYPE: ClassVar[str] = "payment.authorize"
    VERSION: ClassVar[int] = 2

    amount_cents: Cents
    currency: Currency
    payment_token: Text
    customer_id: Id | None = None


class CapturePayment(PaymentCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.capture"


class VoidPayment(PaymentCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.void"

    reason: Text


class RefundPayment(PaymentCommand, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.refund"

    reason: Text


class PaymentFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = PAYMENT_EVENTS
    VERSION: ClassVar[int] = 2

    payment_id: Id
    amount: Money


class PaymentAuthorized(PaymentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.authorized"
    VERSION: ClassVar[int] = 3

    customer_id: Id | None = None


class PaymentDeclined(PaymentFact, frozen=True, kw_only=True):
    """`reason`: `card_declined` or `amount_over_limit`."""

    TYPE: ClassVar[str] = "payment.declined"
    VERSION: ClassVar[int] = 3

    reason: Text
    customer_id: Id | None = None


class PaymentCaptured(PaymentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.captured"


class PaymentVoided(PaymentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.voided"

    reason: Text


class PaymentRefunded(PaymentFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "payment.refunded"

    reason: Text


PAYMENT_COMMANDS_DECLARED: tuple[type[PaymentCommand], ...] = (
    AuthorizePayment,
    CapturePayment,
    VoidPayment,
    RefundPayment,
)
PAYMENT_FACTS: tuple[type[PaymentFact], ...] = (
    PaymentAuthorized,
    PaymentDeclined,
    PaymentCaptured,
    PaymentVoided,
    PaymentRefunded,
)


@upcaster(*(fact.TYPE for fact in PAYMENT_FACTS), from_version=1)
def _money_from_flat_fields(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: `amount_cents` + `currency` become `amount: {amount_cents, currency}`."""
    upcast = {k: v for k, v in data.items() if k not in ("amount_cents", "currency")}
    upcast["amount"] = {"amount_cents": data.get("amount_cents"), "currency": data.get("currency")}
    return upcast


@upcaster(AuthorizePayment.TYPE, from_version=1)
@upcaster(PaymentAuthorized.TYPE, PaymentDeclined.TYPE, from_version=2)
def _customer_unknown(data: dict[str, Any]) -> dict[str, Any]:
    """Additive: the data is unchanged; `customer_id` defaults to None (staff-only visibility)."""
    return data

"""REST API of the payment service: read-only views of the write side.

The REST view is not the event contract: it shows the amount as flat `amount_cents` and
`currency`, as it always has, whatever shape the facts carry it in.
"""

from __future__ import annotations

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from services.payment.domain import PaymentState
from services.payment.handlers import Payments
from shared.contract import PaymentStatus
from shared.rest import add_reads

_PAYMENT_EXAMPLE: dict[str, JsonValue] = {
    "payment_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
    "order_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
    "status": "AUTHORIZED",
    "amount_cents": 4200,
    "currency": "EUR",
    "version": 1,
}


class PaymentView(BaseModel):
    """A payment as its facts say (the write-side state, folded on every read)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _PAYMENT_EXAMPLE,
                {**_PAYMENT_EXAMPLE, "status": "DECLINED", "reason": "card_declined"},
            ]
        }
    )

    payment_id: str
    order_id: str
    status: PaymentStatus
    amount_cents: int = Field(description="integer minor units")
    currency: str = Field(description="ISO-4217")
    version: int = Field(description="number of facts in the payment's stream")
    reason: str | None = Field(default=None, description="why it was declined, voided or refunded (absent otherwise)")

    @classmethod
    def of(cls, state: PaymentState) -> PaymentView:
        assert state.status is not None, "a payment that exists has a status"
        return cls(
            payment_id=state.payment_id,
            order_id=state.order_id,
            status=state.status,
            amount_cents=state.amount_cents,
            currency=state.currency,
            version=state.version,
            reason=state.reason,
        )


PaymentId = Path(description="the payment id (= uuid5 of the order id, see docs/EVENTS.md)")


def router(payments: Payments) -> APIRouter:
    """The payment endpoints, reading through the service's Payment aggregate."""
    api = APIRouter(tags=["payments"])
    add_reads(api, payments, PaymentView, id_param=PaymentId)
    return api

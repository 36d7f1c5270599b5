"""Composition of the payment service on the kernel (shared/runtime.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.payment import api, handlers
from services.payment.settings import PaymentSettings
from shared.contract import (
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    AuthorizePayment,
    CapturePayment,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    VoidPayment,
)
from shared.eventstore import EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

SCHEMA = Path(__file__).with_name("schema.sql")

DESCRIPTION = f"""
Owns the **Payment** aggregate (event-sourced, its own PostgreSQL database).

Commands arrive on Kafka `{PAYMENT_COMMANDS}` (`{AuthorizePayment.TYPE}`, `{CapturePayment.TYPE}`,
`{VoidPayment.TYPE}`, `{RefundPayment.TYPE}`) and every one is answered with a fact on `{PAYMENT_EVENTS}`:
`{PaymentAuthorized.TYPE}` / `{PaymentDeclined.TYPE}` (`card_declined`, `amount_over_limit`),
`{PaymentCaptured.TYPE}`, `{PaymentVoided.TYPE}`, `{PaymentRefunded.TYPE}`. A repeated command is answered
again with the fact already recorded (same event id); a refused one (e.g. capture after
void) appends nothing and is logged and counted (`commands_refused_total`).

This API only reads: `GET /payments/{{id}}`, `GET /payments?order_id=`, `GET /payments/{{id}}/events`.
The REST views show the amount as `amount_cents` and `currency`; the facts carry it as `amount`.
"""


def definition(settings: PaymentSettings) -> ServiceDefinition:
    payments = handlers.payments(settings)

    def consumers(store: EventStore) -> list[ConsumerSpec]:
        handler = handlers.command_handler(payments)
        return [
            ConsumerSpec(name=handlers.COMMAND_CONSUMER, topics=[PAYMENT_COMMANDS], handler=handler, one_statement=True)
        ]

    return ServiceDefinition(
        name="payment",
        settings=settings,
        routers=[api.router(payments)],
        schema=[SCHEMA],
        consumers=consumers,
        description=DESCRIPTION,
        openapi_tags=[{"name": "payments", "description": "the Payment aggregate's write-side state and facts"}],
    )


def create_app(settings: PaymentSettings | None = None) -> FastAPI:
    return build_app(definition(settings or PaymentSettings()))

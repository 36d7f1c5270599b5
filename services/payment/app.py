"""Composition of the payment service on the kernel (shared/runtime.py)."""
from __future__ import annotations

from fastapi import FastAPI

from services.domain_errors import DomainError
from services.payment import api, handlers
from services.payment.settings import PaymentSettings
from shared.eventstore import EventRoutes, EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

PAYMENT_COMMANDS = "payment.commands"
PAYMENT_EVENTS = "payment.events"

DESCRIPTION = """
Owns the **Payment** aggregate (event-sourced, its own PostgreSQL database).

Commands arrive on Kafka `payment.commands` (`payment.authorize`, `payment.capture`,
`payment.void`, `payment.refund`) and every one is answered with a fact on `payment.events`:
`payment.authorized` / `payment.declined` (`card_declined`, `amount_over_limit`),
`payment.captured`, `payment.voided`, `payment.refunded`. A repeated command is answered
again with the fact already recorded (same event id); a refused one (e.g. capture after
void) appends nothing and is logged and counted (`commands_refused_total`).

This API only reads: `GET /payments/{id}`, `GET /payments?order_id=`, `GET /payments/{id}/events`.
"""


def definition(settings: PaymentSettings) -> ServiceDefinition:
    def consumers(store: EventStore) -> list[ConsumerSpec]:
        handler = handlers.command_handler(store, settings.payment_limit_cents)
        return [ConsumerSpec(name=handlers.COMMAND_CONSUMER, topics=[PAYMENT_COMMANDS], handler=handler)]

    return ServiceDefinition(
        name="payment",
        settings=settings,
        routers=[api.router],
        routes=EventRoutes({"payment.": PAYMENT_EVENTS}),
        schema=[handlers.PAYMENTS.schema()],
        consumers=consumers,
        refusal_type=DomainError,
        description=DESCRIPTION,
        openapi_tags=[{"name": "payments", "description": "the Payment aggregate's write-side state and facts"}],
    )


def create_app(settings: PaymentSettings | None = None) -> FastAPI:
    return build_app(definition(settings or PaymentSettings()))

"""Composition of the order service on the kernel (shared/runtime.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.order import api, deadlines, erasure, handlers
from services.order.settings import OrderSettings
from shared.contract import (
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    SHIPPING_EVENTS,
    AuthorizePayment,
    CancelShipment,
    CapturePayment,
    OrderPlaced,
    RefundPayment,
    ScheduleShipment,
    VoidPayment,
)
from shared.eventstore import EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

SCHEMA = Path(__file__).with_name("schema.sql")

DESCRIPTION = f"""
Owns the **Order** aggregate and the **order-fulfilment saga** (an event-sourced process
manager), both in the order service's own PostgreSQL database.

`POST /orders` appends `{OrderPlaced.TYPE}` and starts the saga in one transaction; the saga sends
`{AuthorizePayment.TYPE}`, `{ScheduleShipment.TYPE}`, `{CapturePayment.TYPE}` (and `{CancelShipment.TYPE}`,
`{VoidPayment.TYPE}`, `{RefundPayment.TYPE}` to compensate) through the transactional outbox, reacts to the
facts on `{PAYMENT_EVENTS}` / `{SHIPPING_EVENTS}` and moves the order to CONFIRMED, SHIPPED,
DELIVERED, or REJECTED / CANCELLED with a `reason`. A participant that does not answer within
`SAGA_STEP_TIMEOUT_S` makes the saga compensate (`*_timeout`).

Order facts are published on `{ORDER_EVENTS}`; the saga's own facts stay private and are shown at
`GET /sagas/{{order_id}}`. The payment token is in no fact: only the authorization command carries it.
"""


def definition(settings: OrderSettings) -> ServiceDefinition:
    def consumers(store: EventStore) -> list[ConsumerSpec]:
        return [
            ConsumerSpec(
                name=handlers.SAGA_CONSUMER,
                topics=handlers.REPLY_TOPICS,
                handler=handlers.handle_replies,
                one_statement=True,
            )
        ]

    return ServiceDefinition(
        name="order",
        settings=settings,
        routers=[api.router, erasure.router],
        schema=[SCHEMA],
        consumers=consumers,
        loops=[deadlines.deadline_loop(settings)],
        description=DESCRIPTION,
        keystore_writer=True,
        openapi_tags=[
            {"name": "orders", "description": "the Order aggregate: place, read (and time-travel), cancel"},
            {"name": "sagas", "description": "the order-fulfilment saga of each order"},
            {"name": "customers", "description": "erasure of a customer's personal data (crypto-shredding)"},
        ],
    )


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    return build_app(definition(settings or OrderSettings()))

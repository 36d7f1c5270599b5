"""Composition of the order service on the kernel (shared/runtime.py)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.domain_errors import DomainError
from services.order import api, deadlines, handlers
from services.order.settings import OrderSettings
from shared.eventstore import EventRoutes, EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

SCHEMA = Path(__file__).with_name("schema.sql")

DESCRIPTION = """
Owns the **Order** aggregate and the **order-fulfilment saga** (an event-sourced process
manager), both in the order service's own PostgreSQL database.

`POST /orders` appends `order.placed` and starts the saga in one transaction; the saga sends
`payment.authorize`, `shipment.schedule`, `payment.capture` (and `shipment.cancel`,
`payment.void`, `payment.refund` to compensate) through the transactional outbox, reacts to the
facts on `payment.events` / `shipping.events` and moves the order to CONFIRMED, SHIPPED,
DELIVERED, or REJECTED / CANCELLED with a `reason` (SPEC §6). A participant that does not
answer within `SAGA_STEP_TIMEOUT_S` makes the saga compensate (`*_timeout`).

Order facts are published on `order.events`; the saga's own facts (`saga.*`) stay private and
are shown, with the payment token redacted, at `GET /sagas/{order_id}`.
"""


def definition(settings: OrderSettings) -> ServiceDefinition:
    def consumers(store: EventStore) -> list[ConsumerSpec]:
        return [ConsumerSpec(name=handlers.SAGA_CONSUMER, topics=handlers.REPLY_TOPICS, handler=handlers.handle_replies)]

    return ServiceDefinition(
        name="order",
        settings=settings,
        routers=[api.router],
        routes=EventRoutes({"order.": handlers.ORDER_EVENTS}),
        schema=[SCHEMA],
        consumers=consumers,
        loops=[deadlines.deadline_loop(settings)],
        refusal_type=DomainError,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "orders", "description": "the Order aggregate: place, read (and time-travel), cancel"},
            {"name": "sagas", "description": "the order-fulfilment saga of each order"},
        ],
    )


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    return build_app(definition(settings or OrderSettings()))

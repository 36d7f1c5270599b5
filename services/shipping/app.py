"""Composition of the shipping service on the kernel (shared/runtime.py)."""
from __future__ import annotations

from fastapi import FastAPI

from services.domain_errors import DomainError
from services.shipping import api, handlers
from services.shipping.settings import ShippingSettings
from shared.eventstore import EventRoutes, EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

SHIPPING_COMMANDS = "shipping.commands"
SHIPPING_EVENTS = "shipping.events"

DESCRIPTION = """
Owns the **Shipment** aggregate (event-sourced, its own PostgreSQL database).

Commands arrive on Kafka `shipping.commands` (`shipment.schedule`, `shipment.cancel`) and every
one is answered with a fact on `shipping.events`: `shipment.scheduled`, `shipment.failed`
(`destination_not_served` for a country in `SHIPPING_UNSERVED_COUNTRIES`), `shipment.cancelled`.
The warehouse and the carrier drive the rest over HTTP: `POST /shipments/{id}/dispatch`
(`shipment.dispatched`) and `POST /shipments/{id}/deliver` (`shipment.delivered`), 409 on an
illegal transition. A repeated command is answered again with the fact already recorded; a
refused one appends nothing and is logged and counted (`commands_refused_total`).
"""


def definition(settings: ShippingSettings) -> ServiceDefinition:
    def consumers(store: EventStore) -> list[ConsumerSpec]:
        handler = handlers.command_handler(store, settings.unserved_countries)
        return [ConsumerSpec(name=handlers.COMMAND_CONSUMER, topics=[SHIPPING_COMMANDS], handler=handler)]

    return ServiceDefinition(
        name="shipping",
        settings=settings,
        routers=[api.router],
        routes=EventRoutes({"shipment.": SHIPPING_EVENTS}),
        schema=[handlers.SHIPMENTS.schema()],
        consumers=consumers,
        refusal_type=DomainError,
        description=DESCRIPTION,
        openapi_tags=[{"name": "shipments", "description": "the Shipment aggregate: state, facts, dispatch, deliver"}],
    )


def create_app(settings: ShippingSettings | None = None) -> FastAPI:
    return build_app(definition(settings or ShippingSettings()))

"""Composition of the shipping service on the kernel (shared/runtime.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.shipping import api, handlers
from services.shipping.settings import ShippingSettings
from shared.contract import (
    SHIPPING_COMMANDS,
    SHIPPING_EVENTS,
    CancelShipment,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFailed,
    ShipmentScheduled,
)
from shared.eventstore import EventStore
from shared.runtime import ConsumerSpec, ServiceDefinition, build_app

SCHEMA = Path(__file__).with_name("schema.sql")

DESCRIPTION = f"""
Owns the **Shipment** aggregate (event-sourced, its own PostgreSQL database).

Commands arrive on Kafka `{SHIPPING_COMMANDS}` (`{ScheduleShipment.TYPE}`, `{CancelShipment.TYPE}`) and every
one is answered with a fact on `{SHIPPING_EVENTS}`: `{ShipmentScheduled.TYPE}`, `{ShipmentFailed.TYPE}`
(`destination_not_served` for a country in `SHIPPING_UNSERVED_COUNTRIES`), `{ShipmentCancelled.TYPE}`.
The warehouse and the carrier drive the rest over HTTP: `POST /shipments/{{id}}/dispatch`
(`{ShipmentDispatched.TYPE}`) and `POST /shipments/{{id}}/deliver` (`{ShipmentDelivered.TYPE}`), 409 on an
illegal transition. A repeated command is answered again with the fact already recorded; a
refused one appends nothing and is logged and counted (`commands_refused_total`).
"""


def definition(settings: ShippingSettings) -> ServiceDefinition:
    shipments = handlers.shipments(settings)

    def consumers(store: EventStore) -> list[ConsumerSpec]:
        handler = handlers.command_handler(shipments)
        return [
            ConsumerSpec(
                name=handlers.COMMAND_CONSUMER, topics=[SHIPPING_COMMANDS], handler=handler, one_statement=True
            )
        ]

    return ServiceDefinition(
        name="shipping",
        settings=settings,
        routers=[api.router(shipments)],
        schema=[SCHEMA],
        consumers=consumers,
        description=DESCRIPTION,
        openapi_tags=[{"name": "shipments", "description": "the Shipment aggregate: state, facts, dispatch, deliver"}],
    )


def create_app(settings: ShippingSettings | None = None) -> FastAPI:
    return build_app(definition(settings or ShippingSettings()))

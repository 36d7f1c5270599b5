"""Composition of the query service on the kernel (shared/runtime.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.query import api, operations, rebuild, sse
from services.query.context import QueryContext
from services.query.feed import CausalGapReleaser
from services.query.generations import bootstrap_sql
from services.query.notify import Notifications
from services.query.settings import QuerySettings
from services.query.supervisor import GenerationSupervisor
from shared.contract import EVENT_TOPICS
from shared.runtime import ServiceDefinition, build_app

VIEWS_SQL = Path(__file__).with_name("views.sql")

DESCRIPTION = f"""
CQRS read models built **only** from the Kafka event topics ({", ".join(f"`{t}`" for t in EVENT_TOPICS)}),
in the query service's own PostgreSQL database. Every fact is read through the message contract,
which upcasts older schema versions, so the views only ever see current shapes.
Eventually consistent; `GET /orders/{{id}}?min_version=N` waits (bounded) for read-your-writes.

Facts may arrive in any order across topics: every view field is set by the fact with the
newest version of the stream that owns it, so any arrival order converges to the same views.
Kafka positions are stored in the same transaction as the view changes (kernel ConsumerRunner),
so redelivery and replay change nothing. `POST /admin/rebuild` replays the topics from offset 0
into a fresh generation of tables while the current one keeps serving, then switches atomically.
"""


def definition(settings: QuerySettings, context: QueryContext) -> ServiceDefinition:
    return ServiceDefinition(
        name="query",
        settings=settings,
        routers=[api.router, sse.router, rebuild.router, operations.router],
        schema=[VIEWS_SQL, bootstrap_sql(settings.query_consumer_prefix)],
        loops=[
            context.notifications.run,
            context.supervisor.run,
            CausalGapReleaser(settings, context.notifications).run,
        ],
        readiness=[context.supervisor.readiness],
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "views", "description": "read models: order summaries, lists, timelines, stats"},
            {"name": "stream", "description": "Server-Sent Events of facts"},
            {"name": "admin", "description": "rebuilding the views by replay; consumer lag and dead letters"},
        ],
    )


def create_app(settings: QuerySettings | None = None) -> FastAPI:
    settings = settings or QuerySettings()
    notifications = Notifications()
    context = QueryContext(settings, notifications, GenerationSupervisor(settings, notifications))
    app = build_app(definition(settings, context))
    app.state.query = context
    return app

"""One order's saga is one trace across the four services.

The order, payment, shipping and query apps run in-process (each on its own scratch database)
over the session's real Kafka and PostgreSQL, with tracing on to an in-memory exporter. One
order is placed over HTTP and followed until the query view says CONFIRMED; then every span
that names the order, and every span of its trace, must form ONE connected trace holding
spans of all four services: the HTTP request, the kernel's relay (`publish`) and consumer
(`process`) spans, and the FastAPI, asyncpg and aiokafka instrumentations' spans.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from infra.stack import LocalStack
from services.order.app import create_app as create_order_app
from services.payment.app import create_app as create_payment_app
from services.payment.settings import PaymentSettings
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.shipping.app import create_app as create_shipping_app
from services.shipping.settings import ShippingSettings
from shared import tracing
from shared.contract import OrderConfirmed
from tests.integration.kafka_support import wait_for
from tests.integration.order_support import order_body, order_settings, place, reaches
from tests.integration.service_support import running, scratch_database

pytestmark = pytest.mark.integration

SERVICES = ("order", "payment", "shipping", "query")
CONVERSATION = "messaging.message.conversation_id"


@asynccontextmanager
async def four_services(stack: LocalStack) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The four apps, built (so traced) inside the caller's `tracing.export_to` block."""
    async with AsyncExitStack() as exits:
        dsn = {name: await exits.enter_async_context(scratch_database(stack, f"tr_{name}")) for name in SERVICES}
        common: dict[str, Any] = {
            "kafka_bootstrap_servers": stack.kafka_bootstrap,
            "relay_poll_interval_s": 0.1,
            "db_pool_max_size": 10,
        }
        apps: dict[str, FastAPI] = {
            "payment": create_payment_app(PaymentSettings(database_url=dsn["payment"], **common)),
            "shipping": create_shipping_app(ShippingSettings(database_url=dsn["shipping"], **common)),
            "query": create_query_app(
                QuerySettings(database_url=dsn["query"], generation_poll_s=0.1, view_consumers=1, **common)
            ),
            "order": create_order_app(order_settings(stack, dsn["order"])),
        }
        clients = {name: await exits.enter_async_context(running(app)) for name, app in apps.items()}
        yield clients


def service(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name"))


def scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def of_trace(spans: Sequence[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


def broken_links(spans: Sequence[ReadableSpan]) -> list[str]:
    """Spans whose parent is not among `spans`: a trace that is one tree has exactly one (its root)."""
    ids = {s.context.span_id for s in spans if s.context is not None}
    return [f"{service(s)}:{s.name}" for s in spans if s.parent is None or s.parent.span_id not in ids]


async def test_one_order_saga_is_one_trace_across_all_four_services(stack: LocalStack) -> None:
    exporter = InMemorySpanExporter()
    with tracing.export_to(SimpleSpanProcessor(exporter)):
        async with four_services(stack) as http:
            order_id = await place(http["order"], order_body())
            await reaches(http["order"], f"/orders/{order_id}", timeout_s=90, status="CONFIRMED")
            # The fresh query service replays the session's topics first (traced too): a wide bound.
            await reaches(http["query"], f"/orders/{order_id}", timeout_s=150, status="CONFIRMED")

            def named() -> list[ReadableSpan]:
                return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get(CONVERSATION) == order_id]

            def confirmed_in_query() -> bool:
                return any(
                    service(s) == "query" and (s.attributes or {}).get("cloudevents.event_type") == OrderConfirmed.TYPE
                    for s in named()
                )

            await wait_for(confirmed_in_query, timeout_s=30)
            trace_ids = {s.context.trace_id for s in named() if s.context is not None}
            assert len(trace_ids) == 1, f"the order's messages are in {len(trace_ids)} traces"
            [trace_id] = trace_ids

            # Every span of the trace has its parent in the trace (waiting for the last to end).
            await wait_for(lambda: len(broken_links(of_trace(exporter.get_finished_spans(), trace_id))) == 1, 30)
            spans = of_trace(exporter.get_finished_spans(), trace_id)
        everything = exporter.get_finished_spans()
    assert broken_links(spans) == ["order:POST /orders"], "the HTTP request is the one root"

    assert {service(s) for s in spans} == set(SERVICES)
    kernel = [s for s in spans if scope(s) == "shared"]
    publishers = {service(s) for s in kernel if s.kind is SpanKind.PRODUCER and s.name.startswith("publish ")}
    consumers = {service(s) for s in kernel if s.kind is SpanKind.CONSUMER and s.name.startswith("process ")}
    assert publishers == {"order", "payment", "shipping"}, "every write service's relay published in the trace"
    assert consumers == set(SERVICES), "every service handled a message of the trace"
    assert all((s.attributes or {}).get(CONVERSATION) == order_id for s in kernel)
    libraries = {scope(s).rsplit(".", 1)[-1] for s in spans if scope(s).startswith("opentelemetry.instrumentation")}
    assert {"fastapi", "asyncpg", "aiokafka"} <= libraries, libraries
    by_id = {s.context.span_id: s for s in everything if s.context is not None}
    database = [s for s in everything if scope(s).endswith("asyncpg") and s.parent and s.parent.span_id in by_id]
    assert {service(s) for s in database} == set(SERVICES)
    for span in database:  # a database span belongs to the service whose work made it
        assert span.parent is not None and service(by_id[span.parent.span_id]) == service(span), span.name

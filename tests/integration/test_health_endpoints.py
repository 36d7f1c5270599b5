"""GET /health/live and GET /health/ready on the real service apps (shared/lifecycle.py).

Liveness asks nothing external; readiness is 200 only when PostgreSQL and Kafka answer, the
migrations ran and every consumer (the query service's view-generation consumers included)
has joined its group, and otherwise 503 in the one error shape, naming the failed checks.
PostgreSQL is taken away from one service through the fault proxy; Kafka by stopping the
session's broker (and starting it again on the same data).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from infra.stack import LocalStack
from reliability.faultproxy import Mode, ProxyThread
from services.payment.app import create_app as payment_app
from services.payment.settings import PaymentSettings
from services.query.supervisor import GenerationSupervisor
from services.shipping.app import create_app as shipping_app
from services.shipping.settings import ShippingSettings
from shared.runtime import Runtime
from tests.integration.order_support import order_service
from tests.integration.query_support import query_service
from tests.integration.service_support import running, scratch_database

pytestmark = pytest.mark.integration

READY_CHECKS = {"database", "kafka", "migrations", "consumers", "serving"}


async def until(
    client: httpx.AsyncClient, status: int, timeout_s: float = 90.0, failing: str | None = None
) -> dict[str, Any]:
    """Poll GET /health/ready until it answers `status` (and names `failing` among the failed
    checks); its body then."""
    deadline = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        last = await client.get("/health/ready")
        if last.status_code == status and (failing is None or failing in last.json()["failed"]):
            body: dict[str, Any] = last.json()
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"/health/ready never answered {status} in {timeout_s}s; last: {last and last.text}")


def assert_ready(body: dict[str, Any], service: str) -> None:
    assert body["service"] == service and body["status"] == "ready", body
    assert body["checks"] == dict.fromkeys(READY_CHECKS, "ok"), body


def assert_not_ready(body: dict[str, Any], service: str, check: str) -> None:
    """The one error shape, plus which checks failed and the state of each."""
    assert body["code"] == "not_ready" and body["service"] == service, body
    assert check in body["failed"] and check in body["message"], body
    assert set(body["checks"]) == READY_CHECKS and body["checks"][check] != "ok", body


async def assert_live(client: httpx.AsyncClient, service: str) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200 and live.json() == {"service": service, "status": "alive"}, live.text


@asynccontextmanager
async def participant(stack: LocalStack, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with scratch_database(stack, name) as dsn:
        common: dict[str, Any] = {"database_url": dsn, "kafka_bootstrap_servers": stack.kafka_bootstrap}
        app: FastAPI = (
            payment_app(PaymentSettings(**common)) if name == "payment" else shipping_app(ShippingSettings(**common))
        )
        async with running(app) as client:
            yield client


@pytest.mark.parametrize("name", ["order", "payment", "shipping"])
async def test_a_write_service_is_live_and_becomes_ready_once_its_consumers_joined(
    stack: LocalStack, name: str
) -> None:
    service = order_service(stack) if name == "order" else participant(stack, name)
    async with service as client:
        await assert_live(client, name)
        assert_ready(await until(client, 200), name)
        health = await client.get("/health")  # kept as it was
        assert health.status_code == 200 and set(health.json()) == {"service", "database", "kafka", "relay_leader"}


async def test_the_query_service_counts_its_view_generation_consumers(stack: LocalStack) -> None:
    async with query_service(stack, "qready") as query:
        runtime: Runtime = query.app.state.runtime
        supervisor: GenerationSupervisor = query.app.state.query.supervisor
        assert supervisor.readiness in runtime.readiness, "the supervisor registered its check at start-up"
        assert_ready(await until(query.client, 200), "query")
        members = [r for running in supervisor.runners.values() for r in running.runners]
        assert members and all(r.assigned for r in members)
        await assert_live(query.client, "query")


async def test_ready_is_503_while_postgres_is_unreachable_and_200_when_it_is_back(stack: LocalStack) -> None:
    proxy = ProxyThread("127.0.0.1", stack.pg_port, name="pg-ready")
    try:
        async with scratch_database(stack, "order_ready") as dsn:
            proxied = dsn.replace(f":{stack.pg_port}/", f":{proxy.port}/")
            async with order_service(stack, proxied) as client:
                assert_ready(await until(client, 200), "order")
                await asyncio.to_thread(proxy.set_mode, Mode.RESET)
                try:
                    down = await until(client, 503, timeout_s=30, failing="database")
                    assert_not_ready(down, "order", "database")
                    assert down["checks"]["kafka"] == "ok", down
                    await assert_live(client, "order")  # alive: nothing external is asked
                finally:
                    await asyncio.to_thread(proxy.set_mode, Mode.PASS)
                assert_ready(await until(client, 200), "order")
    finally:
        proxy.close()


async def test_ready_is_503_while_kafka_is_down_and_200_when_it_is_back(stack: LocalStack) -> None:
    async with order_service(stack) as client:
        assert_ready(await until(client, 200), "order")
        await asyncio.to_thread(stack.kill_kafka)
        try:
            down = await until(client, 503, timeout_s=30, failing="kafka")
            assert_not_ready(down, "order", "kafka")
            assert down["checks"]["database"] == "ok", down
            await assert_live(client, "order")
        finally:
            await asyncio.to_thread(stack.start_kafka)
        assert_ready(await until(client, 200, timeout_s=120), "order")

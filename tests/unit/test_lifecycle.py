"""Readiness and shutdown logic of shared/lifecycle.py, on stand-ins for the runtime's parts.

The integration tests (tests/integration/test_health_endpoints.py, tests/reliability/
test_graceful_shutdown.py) run the same code against real PostgreSQL, Kafka and processes;
these pin the rules: which check fails when, the 503 body, and the order of the shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.query.notify import Notifications
from services.query.settings import QuerySettings
from services.query.supervisor import GenerationSupervisor, _Running
from shared.lifecycle import add_health_routes, readiness, shut_down


class FakeConn:
    def __init__(self, tables: int) -> None:
        self.tables = tables

    async def fetchval(self, sql: str, *args: Any) -> int:
        return self.tables


class FakePool:
    def __init__(self, *, up: bool = True, tables: int = 4) -> None:
        self.up = up
        self.tables = tables
        self.closed = False
        self.terminated = False

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[FakeConn]:
        if not self.up:
            raise ConnectionRefusedError("database away")
        yield FakeConn(self.tables)

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.terminated = True


@dataclass
class Member:
    name: str
    assigned: bool


@dataclass
class FakeRuntime:
    pool: FakePool = field(default_factory=FakePool)
    consumers: list[Member] = field(default_factory=list)
    readiness: list[Any] = field(default_factory=list)
    migrated: bool = True
    draining: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    relay_stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    relay_task: asyncio.Task[None] | None = None


async def kafka_up() -> bool:
    return True


async def kafka_down() -> bool:
    return False


async def test_ready_when_every_check_passes() -> None:
    runtime = FakeRuntime(consumers=[Member("order.saga", True)], readiness=[lambda: None])
    checks = await readiness(runtime, kafka_up)  # type: ignore[arg-type]
    assert checks == {"database": "ok", "kafka": "ok", "migrations": "ok", "consumers": "ok", "serving": "ok"}


async def test_each_failing_part_names_its_check() -> None:
    runtime = FakeRuntime(
        pool=FakePool(up=False),
        consumers=[Member("b.group", False), Member("a.group", True), Member("b.group", False)],
        readiness=[lambda: "view generations not started yet", lambda: None],
        draining=True,
    )
    checks = await readiness(runtime, kafka_down)  # type: ignore[arg-type]
    assert checks == {
        "database": "unreachable",
        "kafka": "unreachable",
        "migrations": "unknown",
        "consumers": "not assigned yet: b.group; view generations not started yet",
        "serving": "shutting down",
    }


async def test_migrations_are_pending_until_the_kernel_tables_exist() -> None:
    assert (await readiness(FakeRuntime(pool=FakePool(tables=3)), kafka_up))["migrations"] == "pending"  # type: ignore[arg-type]
    assert (await readiness(FakeRuntime(migrated=False), kafka_up))["migrations"] == "pending"  # type: ignore[arg-type]


async def test_no_runtime_yet_is_not_ready() -> None:
    assert await readiness(None, kafka_up) == {"serving": "starting"}


async def test_the_routes_answer_200_or_503_in_the_one_error_shape() -> None:
    app = FastAPI()
    add_health_routes(app, "order", kafka_up)
    app.state.runtime = FakeRuntime(consumers=[Member("order.saga", True)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        live = await client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"service": "order", "status": "alive"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        app.state.runtime.consumers[0].assigned = False
        app.state.runtime.draining = True
        refused = await client.get("/health/ready")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    body = refused.json()
    assert body["code"] == "not_ready" and body["service"] == "order"
    assert body["failed"] == ["consumers", "serving"]
    assert body["message"] == "not ready: consumers not assigned yet: order.saga; serving shutting down"
    assert body["checks"]["database"] == "ok"


async def test_shutdown_stops_the_relay_only_after_the_consumers_and_loops_are_done() -> None:
    runtime = FakeRuntime()
    happened: list[str] = []

    async def consumer() -> None:
        await runtime.stop.wait()
        for _ in range(5):  # the current batch commits: a few more turns of the loop
            await asyncio.sleep(0)
        happened.append(f"batch committed, relay stopped: {runtime.relay_stop.is_set()}")

    async def relay() -> None:
        await runtime.relay_stop.wait()
        happened.append("relay flushed")

    runtime.tasks = [asyncio.create_task(consumer(), name="consumer")]
    runtime.relay_task = asyncio.create_task(relay(), name="relay")
    await shut_down(runtime, grace_s=30)  # type: ignore[arg-type]
    assert happened == ["batch committed, relay stopped: False", "relay flushed"]
    assert runtime.draining and runtime.pool.closed and not runtime.pool.terminated


async def test_a_phase_that_overruns_its_grace_is_cancelled_and_the_rest_still_stops() -> None:
    runtime = FakeRuntime()
    never = asyncio.Event()

    async def stuck() -> None:
        await never.wait()

    async def relay() -> None:
        await runtime.relay_stop.wait()

    runtime.tasks = [asyncio.create_task(stuck(), name="stuck")]
    runtime.relay_task = asyncio.create_task(relay(), name="relay")
    await shut_down(runtime, grace_s=0.05)  # type: ignore[arg-type]
    assert runtime.tasks[0].cancelled()
    assert runtime.relay_task.done() and not runtime.relay_task.cancelled()
    assert runtime.pool.closed


@pytest.mark.parametrize("assigned", [True, False])
def test_the_query_supervisor_reports_its_view_consumers(assigned: bool) -> None:
    supervisor = GenerationSupervisor(QuerySettings(), Notifications())
    assert supervisor.readiness() == "view generations not started yet"
    members = [Member("query.views.g1-x", True), Member("query.views.g1-x", assigned)]
    supervisor.runners[1] = _Running(members, asyncio.Event(), [])  # type: ignore[arg-type]
    supervisor.ticked = True
    assert supervisor.readiness() == (None if assigned else "not assigned yet: query.views.g1-x")

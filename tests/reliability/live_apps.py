"""The four services' real FastAPI apps served by uvicorn on free ports (threads), for fuzzing.

Real HTTP, so body limits, chunked uploads and content types go through the same server
stack as in production. The write services run without their consumers and background loops
(nothing but the requests themselves can append to their logs), so "a rejected request
appended nothing" is measured exactly by counting `events` rows around each request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import uvicorn
from fastapi import FastAPI

from infra.stack import LocalStack, free_port
from shared.runtime import build_app

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread: run coroutines from synchronous test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-db", daemon=True)
        self.thread.start()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class LiveService:
    name: str
    url: str
    app: FastAPI
    dsn: str
    server: uvicorn.Server
    thread: threading.Thread
    counter: asyncpg.Connection | None = None


class LiveApps:
    """Start/stop the services and count their events."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.db = LoopThread()
        self.services: dict[str, LiveService] = {}
        self.databases: list[str] = []

    def _create_db(self, prefix: str) -> str:
        name = f"fz_{prefix}_{uuid.uuid4().hex[:8]}"

        async def go() -> None:
            admin = await asyncpg.connect(self.stack.pg_admin_dsn())
            try:
                await admin.execute(f'CREATE DATABASE "{name}" OWNER app')
            finally:
                await admin.close()

        self.db.run(go)
        self.databases.append(name)
        return self.stack.pg_dsn(name)

    def start(self, names: tuple[str, ...] = ("order", "payment", "shipping", "query")) -> None:
        for name in names:
            dsn = self._create_db(name)
            app = _app(name, dsn, self.stack.kafka_bootstrap)
            port = free_port()
            config = uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", lifespan="on", access_log=False
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, name=f"fuzz-{name}", daemon=True)
            thread.start()
            deadline = time.monotonic() + 60
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.05)
            service = LiveService(name, f"http://127.0.0.1:{port}", app, dsn, server, thread)
            if name != "query":
                service.counter = self.db.run(functools.partial(asyncpg.connect, dsn))
            self.services[name] = service

    def events(self, name: str) -> int:
        """Rows in the service's `events` table (write services only)."""
        conn = self.services[name].counter
        assert conn is not None
        count: int = self.db.run(lambda: conn.fetchval("SELECT count(*) FROM events"))
        return count

    def stop(self) -> None:
        for service in self.services.values():
            service.server.should_exit = True
        for service in self.services.values():
            service.thread.join(30)
            if service.counter is not None:
                conn = service.counter
                self.db.run(conn.close)

        async def drop() -> None:
            admin = await asyncpg.connect(self.stack.pg_admin_dsn())
            try:
                for name in self.databases:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

        self.db.run(drop, timeout=60)
        self.db.close()


def _app(name: str, dsn: str, kafka: str) -> FastAPI:
    common: dict[str, Any] = {"database_url": dsn, "kafka_bootstrap_servers": kafka, "log_level": "WARNING"}
    if name == "order":
        from services.order.app import definition as order_definition
        from services.order.settings import OrderSettings

        d = order_definition(OrderSettings(**common, saga_step_timeout_s=3600))
    elif name == "payment":
        from services.payment.app import definition as payment_definition
        from services.payment.settings import PaymentSettings

        d = payment_definition(PaymentSettings(**common))
    elif name == "shipping":
        from services.shipping.app import definition as shipping_definition
        from services.shipping.settings import ShippingSettings

        d = shipping_definition(ShippingSettings(**common))
    else:
        from services.query.app import create_app
        from services.query.settings import QuerySettings

        return create_app(QuerySettings(**common, min_version_timeout_s=0.2, min_version_max_timeout_s=0.5))
    # Only requests may write: no consumers, no deadline scheduler.
    return build_app(dataclasses.replace(d, consumers=lambda store: [], loops=()))


@contextmanager
def live_apps(stack: LocalStack) -> Iterator[LiveApps]:
    apps = LiveApps(stack)
    try:
        apps.start()
        yield apps
    finally:
        apps.stop()

"""The query service under test: its app on the session's stack, its HTTP client and database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from infra.stack import LocalStack
from services.query import generations, store
from services.query.app import create_app
from services.query.rebuild import end_offsets
from services.query.settings import QuerySettings
from shared.contract import EVENT_TOPICS
from tests.integration.kafka_support import produce, wait_for
from tests.integration.service_support import running, scratch_database
from tests.unit.query.journeys import Received, topic_of, wire


class Query:
    """A running query service: its HTTP client, app, database and the topics it reads."""

    def __init__(
        self, app: FastAPI, client: httpx.AsyncClient, dsn: str, bootstrap: str, topics: Sequence[str]
    ) -> None:
        self.app = app
        self.client = client
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.topics = list(topics)

    async def publish(self, envs: list[Received]) -> None:
        """Each fact on its own topic, in the given order (so across topics: any order we like)."""
        for env in envs:
            key, value = wire(env)
            await produce(self.bootstrap, topic_of(env), [(key, value)])

    async def order_when(self, order_id: str, predicate: Any, timeout_s: float = 60) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def check() -> bool:
            r = await self.client.get(f"/orders/{order_id}")
            if r.status_code == 200:
                seen.update(r.json())
                return bool(predicate(seen))
            return False

        await wait_for(check, timeout_s=timeout_s)
        return seen

    async def caught_up(self) -> None:
        """Wait until the current generation has applied everything on the topics right now."""
        target = await end_offsets(self.bootstrap, self.topics)
        conn = await asyncpg.connect(self.dsn)
        try:

            async def done() -> bool:
                [current] = await generations.generations(conn, ["current"])
                return generations.reached(await generations.positions(conn, current.consumer), target)

            await wait_for(done, timeout_s=120)
        finally:
            await conn.close()

    async def current_generation(self) -> int:
        [current] = [g for g in (await self.client.get("/admin/generations")).json() if g["state"] == "current"]
        number: int = current["generation"]
        return number

    async def rebuild(self) -> int:
        """POST /admin/rebuild and wait for the switch; the rebuilt generation's number."""
        started = await self.client.post("/admin/rebuild")
        assert started.status_code == 202, started.text
        rebuild_id = started.json()["rebuild_id"]

        async def switched() -> bool:
            return bool((await self.client.get(f"/admin/rebuild/{rebuild_id}")).json()["done"])

        await wait_for(switched, timeout_s=120)
        number: int = started.json()["generation"]
        return number


@asynccontextmanager
async def query_service(
    stack: LocalStack, prefix: str, topics: Sequence[str] = EVENT_TOPICS, **settings: Any
) -> AsyncIterator[Query]:
    """A query service with a scratch database, reading `topics`."""
    async with scratch_database(stack, prefix) as dsn:
        app = create_app(
            QuerySettings(
                database_url=dsn,
                kafka_bootstrap_servers=stack.kafka_bootstrap,
                query_topics=",".join(topics),
                generation_poll_s=0.1,
                rebuild_switch_grace_s=2.0,
                **settings,
            )
        )
        async with running(app) as client:
            yield Query(app, client, dsn, stack.kafka_bootstrap, topics)


async def view_tables(dsn: str, generation: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a generation's tables, in key order (json columns as their text)."""
    schema = store.schema_of(generation)
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "orders": [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.orders ORDER BY order_id")],
            "timeline": [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.timeline ORDER BY event_id")],
        }
    finally:
        await conn.close()

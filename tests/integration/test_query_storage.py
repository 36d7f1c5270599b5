"""The query service's storage against a real PostgreSQL, without the service: the SQL upsert
is the pure projection's merge, and the generation switch waits for its conditions, then flips
atomically."""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg
import orjson
import pytest

from infra.stack import LocalStack
from services.query import generations, store
from services.query.app import VIEWS_SQL
from services.query.projection import causal_order, fold, project
from services.query.store import Views
from shared.db import create_pool, migrate
from tests.integration.service_support import scratch_database
from tests.unit.query.journeys import cancelled_after_capture, declined, happy

pytestmark = pytest.mark.integration


async def test_the_sql_upsert_applies_exactly_the_pure_merge_in_any_order_and_batching(stack: LocalStack) -> None:
    async with scratch_database(stack, "query_sql") as dsn:
        pool = await create_pool(dsn)
        try:
            await migrate(pool, [VIEWS_SQL, generations.bootstrap_sql("test")])
            rng = random.Random(11)
            for trial in range(12):
                builder = [happy, cancelled_after_capture, declined][trial % 3]
                j = builder()
                arrival = j.facts + rng.sample(j.facts, 3)
                rng.shuffle(arrival)
                cuts = sorted(rng.sample(range(1, len(arrival)), 3))
                inbox: set[str] = set()  # what the kernel's inbox does: repeats never reach the handler
                for lo, hi in zip([0, *cuts], [*cuts, len(arrival)]):
                    fresh = [e for e in arrival[lo:hi] if e.id not in inbox]
                    inbox.update(e.id for e in fresh)
                    async with pool.acquire() as conn, conn.transaction():
                        await store.apply_batch(conn, 1, project(fresh))
                async with pool.acquire() as conn:
                    stored = await store.Views(conn, 1).order(j.order_id)
                    facts = await store.Views(conn, 1).timeline(j.order_id)
                [expected] = fold(j.facts).values()
                assert stored == expected, f"trial {trial}"
                assert [f.id for f in causal_order(facts)] == [e.id for e in j.facts]
                assert sorted(facts, key=lambda f: f.id) == sorted(j.facts, key=lambda f: f.id), "rows = the facts"
            # A repeat that bypassed the inbox would fail loudly (-> DLQ), never duplicate a row.
            with pytest.raises(asyncpg.UniqueViolationError):
                async with pool.acquire() as conn, conn.transaction():
                    await store.apply_batch(conn, 1, project(j.facts[:1]))
        finally:
            await pool.close()


async def test_the_switch_waits_for_the_target_and_for_the_old_views_then_flips_atomically(stack: LocalStack) -> None:
    async with scratch_database(stack, "query_switch") as dsn:
        pool = await create_pool(dsn)
        try:
            await migrate(pool, [VIEWS_SQL, generations.bootstrap_sql("test")])
            j = happy()
            async with pool.acquire() as conn:
                [old] = await generations.generations(conn, ["current"])
                new = await generations.start_rebuild(conn, "test", {("order.events", 0): 5, ("payment.events", 0): 0})
                with pytest.raises(generations.RebuildInProgress):
                    await generations.start_rebuild(conn, "test", {})

                async def position(consumer: str, offset: int) -> None:
                    await conn.execute(
                        """INSERT INTO consumer_positions VALUES ($1, 'order.events', 0, $2)
                           ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset""",
                        consumer,
                        offset,
                    )

                # Only the rebuilt views know these facts so far (the live ones lag behind).
                async with conn.transaction():
                    applied = await store.apply_batch(conn, new.generation, project(j.facts[:3]), feed=False)
                assert applied == ("building", 0)
                hour, nothing = timedelta(hours=1), timedelta(0)
                assert not await generations.try_switch(
                    conn, new.generation, ["order.events"], nothing
                )  # target not reached
                await position(new.consumer, 5)
                await position(old.consumer, 7)  # the current views are further along
                assert not await generations.try_switch(conn, new.generation, ["order.events"], hour)
                assert [g.generation for g in await generations.generations(conn, ["current"])] == [old.generation]
                await position(new.consumer, 7)
                assert await generations.try_switch(conn, new.generation, ["order.events"], hour)
                states = {g.generation: g.state for g in await generations.generations(conn)}
                assert states == {old.generation: "retired", new.generation: "current"}
                assert await generations.current_generation(conn) == new.generation
                # The facts only the new views had applied are now in the SSE feed, in time order.
                fed = await store.feed_after(conn, 0, j.order_id, 10)
                assert [orjson.loads(i.document)["id"] for i in fed] == [e.id for e in j.facts[:3]]
                # A batch of the retired generation's consumer, still running on some replica, writes nothing.
                async with conn.transaction():
                    assert await store.apply_batch(conn, old.generation, project(j.facts[3:])) == ("retired", 0)
                assert await Views(conn, old.generation).order(j.order_id) is None
                assert await generations.drop_retired(conn, keep=1) == []
                assert await generations.drop_retired(conn, keep=0) == [old.generation]
                assert (
                    await conn.fetchval("SELECT count(*) FROM consumer_positions WHERE consumer = $1", old.consumer)
                    == 0
                )
                assert not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", store.schema_of(old.generation)
                )
        finally:
            await pool.close()


async def test_a_generation_created_before_its_writer_existed_gets_it_at_start_up(stack: LocalStack) -> None:
    async with scratch_database(stack, "query_writer") as dsn:
        pool = await create_pool(dsn)
        try:
            await migrate(pool, [VIEWS_SQL, generations.bootstrap_sql("test")])
            async with pool.acquire() as conn:
                await conn.execute("DROP FUNCTION views_g1.apply_batch")  # as an older version left it
            await migrate(pool, [VIEWS_SQL, generations.bootstrap_sql("test")])  # the next start
            j = happy()
            async with pool.acquire() as conn:
                async with conn.transaction():
                    assert await store.apply_batch(conn, 1, project(j.facts)) == ("current", 0)
                assert await Views(conn, 1).order(j.order_id) == fold(j.facts)[j.order_id]
        finally:
            await pool.close()

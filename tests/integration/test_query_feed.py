"""The causal SSE feed in PostgreSQL, without Kafka: whatever order and grouping the facts of
many orders are applied in, by concurrent transactions, the feed never lists a fact before the
fact its causationid names (when that cause is a fact the views consume), lists each fact
once, and sends a fact whose cause never comes past the bound, marked `causalgap`."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import orjson
import pytest

from infra.stack import LocalStack
from services.query import generations, store
from services.query.app import VIEWS_SQL
from services.query.projection import project
from shared.contract import OrderConfirmed, OrderShipped, PaymentCaptured, encode
from shared.db import create_pool, migrate
from tests.integration.service_support import scratch_database
from tests.unit.query.journeys import Journey, Received, cancelled_after_capture, declined, happy, shipping_failed

pytestmark = pytest.mark.integration

FeedRow = tuple[int, dict[str, object]]


@pytest.fixture
async def pool(stack: LocalStack) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(stack, "query_feed") as dsn:
        pool = await create_pool(dsn)
        try:
            await migrate(pool, [VIEWS_SQL, generations.bootstrap_sql("test")])
            yield pool
        finally:
            await pool.close()


async def feed(pool: asyncpg.Pool) -> list[FeedRow]:
    async with pool.acquire() as conn:
        return [(i.seq, orjson.loads(i.document)) for i in await store.feed_after(conn, 0, None, 100_000)]


async def held(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM fact_feed_held")
        return n


def assert_causal(rows: Sequence[FeedRow]) -> None:
    """Each fact once, ids increasing, and after its cause when that cause is in the feed."""
    ids = [doc["id"] for _, doc in rows]
    assert len(ids) == len(set(ids)), "a fact is in the feed twice"
    assert [seq for seq, _ in rows] == sorted(seq for seq, _ in rows)
    position = {fid: i for i, fid in enumerate(ids)}
    for i, (_, doc) in enumerate(rows):
        cause = position.get(str(doc["causationid"]))
        assert cause is None or cause < i, f"{doc['type']} {doc['id']} sent before its cause"


def journeys(n: int) -> list[Journey]:
    kinds = [happy, cancelled_after_capture, declined, shipping_failed]
    return [kinds[i % len(kinds)]() for i in range(n)]


async def test_concurrent_batches_in_any_order_give_a_causal_feed_with_each_fact_once(pool: asyncpg.Pool) -> None:
    rng = random.Random(15)
    orders = journeys(40)
    facts = [f for j in orders for f in j.facts]
    # The effects (facts caused by facts) first, in random order, then the rest shuffled.
    effects_first = sorted(facts, key=lambda f: (store.awaited_cause(f) is None, rng.random()))
    half = len(facts) // 2
    arrival = effects_first[:half] + rng.sample(effects_first[half:], len(facts) - half)
    # Interleaved batches of random sizes, applied by 6 concurrent transactions (as the view
    # consumers of several replicas would), most effects before their causes.
    cuts = sorted(rng.sample(range(1, len(arrival)), 60))
    batches = [arrival[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(arrival)])]
    queue: asyncio.Queue[list[Received]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            async with pool.acquire() as conn, conn.transaction():
                await store.apply_batch(conn, 1, project(batch), feed=True)

    await asyncio.gather(*(worker() for _ in range(6)))
    rows = await feed(pool)
    assert sorted(str(doc["id"]) for _, doc in rows) == sorted(f.id for f in facts)
    assert_causal(rows)
    assert not any("causalgap" in doc for _, doc in rows), "every cause came: nothing was sent past the bound"
    assert await held(pool) == 0
    # The test is adversarial: every effect was handed over before its cause.
    handed = {f.id: i for i, f in enumerate(arrival)}
    assert all(handed[f.id] < handed[c] for f in facts if (c := store.awaited_cause(f)) is not None)


async def test_within_one_batch_causes_go_first_and_a_repeat_keeps_its_first_id(pool: asyncpg.Pool) -> None:
    j = happy()
    async with pool.acquire() as conn, conn.transaction():
        assert await store.apply_batch(conn, 1, project(list(reversed(j.facts)))) == store.Applied("current", 0)
    rows = await feed(pool)
    assert [doc["id"] for _, doc in rows] == [f.id for f in j.facts]  # the recorded order is the causal order
    async with pool.acquire() as conn, conn.transaction():
        await store.append_feed(conn, 1, j.facts[3:6])  # a repeat (e.g. a rebuild's unfed facts)
    assert await feed(pool) == rows


async def test_a_batch_not_put_causes_first_for_a_building_generation_is_sent_again_when_current(
    pool: asyncpg.Pool,
) -> None:
    j = happy()
    async with pool.acquire() as conn, conn.transaction():
        # The handler expected a building generation (no ordering); generation 1 is current.
        assert await store.apply_batch(conn, 1, project(list(reversed(j.facts))), feed=False) == ("current", 0)
    rows = await feed(pool)
    assert [doc["id"] for _, doc in rows] == [f.id for f in j.facts]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM views_g1.timeline") == len(j.facts), "written once"


async def test_the_feed_keeps_each_document_exactly_as_the_contract_codec_wrote_it(pool: asyncpg.Pool) -> None:
    j = happy()
    async with pool.acquire() as conn, conn.transaction():
        await store.apply_batch(conn, 1, project(j.facts))
    async with pool.acquire() as conn:
        stored = [i.document for i in await store.feed_after(conn, 0, None, 100)]
    assert stored == [encode(f).decode() for f in j.facts]


async def test_a_fact_whose_cause_never_comes_is_sent_past_the_bound_marked_and_then_what_waited_for_it(
    pool: asyncpg.Pool,
) -> None:
    j = happy()
    captured = next(f for f in j.facts if isinstance(f.data, PaymentCaptured))
    confirmed = next(f for f in j.facts if isinstance(f.data, OrderConfirmed))
    # Something caused by the confirmation (the system has no such fact; the rule is general).
    follow_up = dataclasses.replace(
        next(f for f in j.facts if isinstance(f.data, OrderShipped)),
        id=str(uuid.uuid4()),
        causation_id=confirmed.id,
        causation_type=confirmed.type,
    )
    async with pool.acquire() as conn, conn.transaction():
        assert await store.append_feed(conn, 1, [follow_up]) == 1
    async with pool.acquire() as conn, conn.transaction():
        assert await store.append_feed(conn, 1, [confirmed, follow_up]) == 1  # the repeat is held once
    assert await feed(pool) == [] and await held(pool) == 2

    async with pool.acquire() as conn:
        assert await store.release_overdue(conn, 3_600_000) == 0, "not due within an hour"
        due_in = await store.next_release_in(conn, 3_600_000)
        assert due_in is not None and due_in > 0
        assert await store.release_overdue(conn, 0) == 1  # a bound of 0: due now
        assert await store.next_release_in(conn, 0) is None
    rows = await feed(pool)
    assert [doc["id"] for _, doc in rows] == [confirmed.id, follow_up.id]
    assert rows[0][1]["causalgap"] == "true", "sent without its cause: marked"
    assert "causalgap" not in rows[1][1], "its own cause was sent before it"
    marked = rows[0][1]
    assert {k: v for k, v in marked.items() if k != "causalgap"} == orjson.loads(encode(confirmed))

    # The cause comes late: it is sent then, once; the effect is not sent again.
    async with pool.acquire() as conn, conn.transaction():
        await store.append_feed(conn, 1, [captured, confirmed])
    after = await feed(pool)
    assert [doc["id"] for _, doc in after] == [confirmed.id, follow_up.id, captured.id]
    assert await held(pool) == 0


async def test_corrupt_causation_data_naming_each_other_cannot_hold_facts_forever(pool: asyncpg.Pool) -> None:
    j = happy()
    a, b = (f for f in j.facts if isinstance(f.data, OrderConfirmed | OrderShipped))
    a = dataclasses.replace(a, causation_id=b.id, causation_type=b.type)
    b = dataclasses.replace(b, causation_id=a.id, causation_type=a.type)
    async with pool.acquire() as conn, conn.transaction():
        assert await store.append_feed(conn, 1, [a]) == 1
    async with pool.acquire() as conn, conn.transaction():
        assert await store.append_feed(conn, 1, [b]) == 1
    async with pool.acquire() as conn:
        assert await store.release_overdue(conn, 0) == 1
    rows = await feed(pool)
    assert [doc["id"] for _, doc in rows] == [b.id, a.id]  # the held chain above `a` starts at `b`
    assert [("causalgap" in doc) for _, doc in rows] == [True, False]

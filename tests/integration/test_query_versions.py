"""Versioning, proven on the query side against real Kafka and PostgreSQL.

The messages the previous code put on the event topics (tests/fixtures/v1/topics.jsonl, schema
version 1 everywhere) are produced byte for byte, with the same keys and partitions, to fresh
topics. Today's service builds from them the views the previous service answered (recorded in
tests/fixtures/v1/expected.json), and a log that mixes v1 and v2 messages of the same journeys
gives, rebuilt, the very rows an all-v2 log gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from infra.stack import LocalStack
from shared.contract import EVENT_TOPICS
from shared.kafka import make_producer
from shared.personal import reveal
from tests.conftest import NewTopicFactory
from tests.integration.query_support import Query, query_service, view_tables
from tests.unit.query.v1_fixtures import (
    TopicMessage,
    expected_customer_lists,
    expected_order,
    expected_stats,
    expected_timeline,
    order_ids,
    topic_messages,
)

pytestmark = pytest.mark.integration


async def fresh_topics(new_topic: NewTopicFactory) -> dict[str, str]:
    """A fresh topic for each event topic, with as many partitions as the fixture's messages name."""
    partitions = 1 + max(m.partition for m in topic_messages())
    return {t: await new_topic(f"v1-{t.split('.')[0]}", partitions=partitions) for t in EVENT_TOPICS}


async def produce_exactly(bootstrap: str, topics: dict[str, str], messages: Sequence[TopicMessage]) -> list[int]:
    """Each message's very key and value bytes to its partition, in order; the offsets written."""
    producer = make_producer(bootstrap, client_id="test-query-versions")
    await producer.start()
    try:
        offsets = []
        for m in messages:
            written = await producer.send_and_wait(topics[m.topic], m.value, key=m.key, partition=m.partition)
            offsets.append(written.offset)
        return offsets
    finally:
        await producer.stop()


async def assert_answers_as_recorded(query: Query) -> None:
    """Every answer of the previous service, field by field (timeline data: upcast, as shown now)."""
    for order_id in order_ids():
        assert (await query.client.get(f"/orders/{order_id}")).json() == expected_order(order_id)
        # The timeline opens personal values: v1 clear text, upcast to legacy text, shows as it was.
        shown = reveal(expected_timeline(order_id), {})
        assert (await query.client.get(f"/orders/{order_id}/timeline")).json() == shown
    assert (await query.client.get("/stats")).json() == expected_stats()  # a fresh database: generation 1
    for customer, answer in expected_customer_lists().items():
        assert (await query.client.get("/orders", params={"customer_id": customer})).json() == answer, customer


async def feed_documents(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["event_id"]: r["document"] for r in await conn.fetch("SELECT event_id, document FROM fact_feed")}
    finally:
        await conn.close()


async def test_v1_topic_messages_build_the_views_the_previous_service_answered(
    stack: LocalStack, new_topic: NewTopicFactory
) -> None:
    topics = await fresh_topics(new_topic)
    messages = topic_messages()
    written = await produce_exactly(stack.kafka_bootstrap, topics, messages)
    assert written == [m.offset for m in messages], "the same partitions and offsets as recorded"
    async with query_service(stack, "query_v1", topics=list(topics.values())) as query:
        await query.caught_up()
        await assert_answers_as_recorded(query)


def mixed(v1: Sequence[TopicMessage]) -> list[TopicMessage]:
    """v1 for every other order and v2 for the rest, then the other version of every third
    order's messages once more (the same fact ids: repeats that must change nothing)."""
    ids = order_ids()
    index = {m.envelope().id: ids.index(m.envelope().data.order_id) for m in v1}
    log = [m.as_v2() if index[m.envelope().id] % 2 else m for m in v1]
    repeats = [m if index[m.envelope().id] % 2 else m.as_v2() for m in v1 if index[m.envelope().id] % 3 == 0]
    return log + repeats


async def test_a_rebuild_over_a_mixed_v1_v2_log_gives_the_rows_of_an_all_v2_log(
    stack: LocalStack, new_topic: NewTopicFactory
) -> None:
    v1 = topic_messages()
    mixed_topics, v2_topics = await fresh_topics(new_topic), await fresh_topics(new_topic)
    await produce_exactly(stack.kafka_bootstrap, mixed_topics, mixed(v1))
    await produce_exactly(stack.kafka_bootstrap, v2_topics, [m.as_v2() for m in v1])
    async with (
        query_service(stack, "query_mixed", topics=list(mixed_topics.values())) as on_mixed,
        query_service(stack, "query_v2", topics=list(v2_topics.values())) as on_v2,
    ):
        await on_mixed.caught_up()
        await on_v2.caught_up()
        all_v2 = await view_tables(on_v2.dsn, 1)
        assert len(all_v2["orders"]) == len(order_ids()) and len(all_v2["timeline"]) == len(v1)
        assert await view_tables(on_mixed.dsn, 1) == all_v2  # built live from the mixed log

        rebuilt = await on_mixed.rebuild()
        assert await on_mixed.current_generation() == rebuilt
        assert await view_tables(on_mixed.dsn, rebuilt) == all_v2  # replayed from offset 0
        # The SSE feed streams every fact once, in the current version, whatever the log held.
        assert await feed_documents(on_mixed.dsn) == await feed_documents(on_v2.dsn)
        await assert_answers_as_recorded(on_v2)

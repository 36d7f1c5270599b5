"""Reading a snapshot from a running system: the logs first, then topics and views (which can
only be ahead of the logs). Log rows are decoded with the contract's codec, which upcasts
facts written by an older schema version; a row it cannot read stops the audit (exit 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reliability.audit.config import AuditConfig
from reliability.audit.snapshot import Snapshot, TopicRecord, source_of
from shared.contract import (
    ALL_TOPICS,
    Envelope,
    Fact,
    MessageFormatError,
    OrderPlaced,
    SagaStepRequested,
    decode_data,
)
from shared.eventstore import Recorded
from shared.kafka import partition_counts

_LOG_SQL = """SELECT position, event_id::text AS event_id, stream_id, version, type, schema_version, data::text AS data,
                     occurred_at, correlation_id, causation_id
              FROM events ORDER BY position"""
_LATE_SQL = """SELECT event_id::text AS event_id, type, schema_version,
                      CASE WHEN type = $2 THEN data::text END AS data
               FROM events WHERE position > $1"""


def recorded_from_row(log: str, row: Mapping[str, Any]) -> Recorded:
    """One row of a service's `events` table as its fact, in the current schema version.

    `row` has the table's columns; `data` is the JSON text, `occurred_at` a datetime."""
    try:
        data = decode_data(row["type"], row["schema_version"], row["data"])
    except MessageFormatError as exc:
        raise MessageFormatError(f"{log} log, {row['stream_id']} v{row['version']}: {exc}") from None
    if not isinstance(data, Fact):
        raise MessageFormatError(f"{log} log, {row['stream_id']} v{row['version']}: {row['type']} is not a fact")
    return Envelope(
        id=str(row["event_id"]),
        source=source_of(log),
        subject=row["stream_id"],
        sequence=row["version"],
        time=row["occurred_at"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        data=data,
    )


async def read_log(dsn: str, log: str) -> tuple[list[Recorded], int, int]:
    """Every fact of one service database, its outbox backlog and the last position read."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(_LOG_SQL)
        backlog = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    last_position = int(rows[-1]["position"]) if rows else 0
    return [recorded_from_row(log, r) for r in rows], int(backlog), last_position


async def read_late_ids(dsn: str, after_position: int) -> set[str]:
    """Ids of the facts (and of the commands the saga recorded sending) appended after a position."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(_LATE_SQL, after_position, SagaStepRequested.TYPE)
    finally:
        await conn.close()
    late = {r["event_id"] for r in rows}
    for r in rows:
        if r["data"] is not None:
            step = decode_data(r["type"], r["schema_version"], r["data"])
            assert isinstance(step, SagaStepRequested)
            late.add(step.command_id)
    return late


async def read_topics(bootstrap: str, topics: Sequence[str], timeout_s: float = 60.0) -> dict[str, list[TopicRecord]]:
    """Every record of `topics` up to their current end, read without a consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    out: dict[str, list[TopicRecord]] = {t: [] for t in topics}
    partitions = await topic_partitions(bootstrap, topics)
    tps = [TopicPartition(topic, p) for topic, count in partitions.items() for p in range(count)]
    await consumer.start()
    try:
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading topics took longer than {timeout_s}s; left: {sorted(map(str, remaining))}")
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        key = r.key.decode(errors="replace") if r.key is not None else None
                        out[tp.topic].append(TopicRecord(tp.topic, tp.partition, r.offset, key, r.value))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def topic_partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    """Partition count of each existing topic among `topics` (missing ones are left out)."""
    return await partition_counts(bootstrap, topics, client_id="audit")


async def read_views_http(
    query_url: str, order_ids: Iterable[str], auth_dir: str, *, concurrency: int = 16
) -> dict[str, dict[str, Any]]:
    """The query views (as an admin, with the stack's key in `auth_dir`): the paginated list,
    then GET /orders/{id} for any order it lacks."""
    import httpx

    from infra.tokens import ActingAuth, ensure_dev_keys

    views: dict[str, dict[str, Any]] = {}
    base = query_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30, auth=ActingAuth(ensure_dev_keys(Path(auth_dir)))) as client:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            response = await client.get(f"{base}/orders", params=params)
            response.raise_for_status()
            page = response.json()
            for item in page.get("items", []):
                views[str(item["order_id"])] = item
            cursor = page.get("next_cursor")
            if not cursor:
                break
        missing = [oid for oid in order_ids if oid not in views]
        gate = asyncio.Semaphore(concurrency)

        async def one(oid: str) -> None:
            async with gate:
                r = await client.get(f"{base}/orders/{oid}")
                if r.status_code == 200:
                    views[oid] = r.json()
                elif r.status_code != 404:
                    r.raise_for_status()

        await asyncio.gather(*(one(oid) for oid in missing))
    return views


async def read_views_db(query_dsn: str) -> dict[str, dict[str, Any]]:
    """The current generation's `orders` table of the query database (bypasses the API)."""
    import asyncpg

    conn = await asyncpg.connect(query_dsn, timeout=10)
    try:
        generation = await conn.fetchval("SELECT generation FROM view_generations WHERE state = 'current'")
        rows = await conn.fetch(
            f"""SELECT order_id, status, version, total_cents, currency, payment_id, payment_status,
                       shipment_id, shipment_status
                FROM views_g{int(generation)}.orders WHERE version > 0"""
        )
    finally:
        await conn.close()
    return {r["order_id"]: dict(r) for r in rows}


async def collect(config: AuditConfig) -> Snapshot:
    """Read the logs first, then topics and views (which can only be ahead of the logs)."""
    dsns = {"order": config.order_dsn, "payment": config.payment_dsn, "shipping": config.shipping_dsn}
    results = await asyncio.gather(*(read_log(dsn, log) for log, dsn in dsns.items()))
    logs = {log: facts for log, (facts, _, _) in zip(dsns, results)}
    backlog = {log: pending for log, (_, pending, _) in zip(dsns, results)}
    last = {log: last_position for log, (_, _, last_position) in zip(dsns, results)}
    taken_at = datetime.now(UTC)
    topics = None
    late: set[str] = set()
    if config.check_topics:
        topics = await read_topics(config.kafka_bootstrap, ALL_TOPICS, timeout_s=config.kafka_timeout_s)
        # What reached a topic after the logs were read is newer, not phantom: note it.
        for ids in await asyncio.gather(*(read_late_ids(dsn, last[log]) for log, dsn in dsns.items())):
            late |= ids
    views = None
    if config.views == "http":
        order_ids = {e.subject for e in logs["order"] if isinstance(e.data, OrderPlaced)}
        views = await read_views_http(config.query_url, order_ids, config.auth_dir)
    elif config.views == "db":
        views = await read_views_db(config.query_dsn)
    return Snapshot(taken_at=taken_at, logs=logs, outbox_backlog=backlog, topics=topics, views=views, late_ids=late)

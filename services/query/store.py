"""The SQL adapter of the views: batch writes, reads, generations and the SSE feed.

Writes are set-based: one partition batch costs one `INSERT … SELECT FROM json_to_recordset(…)`
per table, whatever its size. The orders upsert applies `projections.merge` in SQL (same
rules, see that module), so facts can be applied in any order, and applying one twice
changes nothing. The timeline relies on the kernel's inbox (same transaction) to never see
a fact twice; its primary key turns a repeat that bypassed the inbox into a loud failure
(retry, then DLQ) instead of a duplicate row.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

import asyncpg

from services.query.projections import COLUMNS, Batch, Fact, OrderView

# Advisory lock keys and channel: the same constants are written in views.sql
# (query_batch_begin, query_feed_append).
GENERATION_LOCK = 4539207  # batches share it; a generation switch or new rebuild takes it alone
FEED_LOCK = 4539208  # fact_feed writers hold it until commit, so seq order = commit order
VIEWS_CHANNEL = "query_views"  # NOTIFY after every applied batch (wakes /stream and min_version)
GENERATIONS_CHANNEL = "query_generations"  # NOTIFY when a rebuild starts or a switch happens

LIVE_STATES = ("current", "building")


def schema_of(generation: int) -> str:
    return f"views_g{generation}"


def bootstrap_sql(consumer_prefix: str) -> str:
    """DDL run at start-up after views.sql: the first generation, once per database."""
    prefix = consumer_prefix.replace("'", "''")
    return f"""
DO $boot$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM view_generations) THEN
        PERFORM query_create_generation_schema('views_g1');
        INSERT INTO view_generations (generation, state, consumer, switched_at)
        VALUES (1, 'current', '{prefix}.g1-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8), now());
    END IF;
END $boot$;
"""


# ---------------------------------------------------------------- writing a batch

# Rows travel as ONE json parameter (orjson serialises the dataclasses) and are unpacked by
# json_to_recordset: far cheaper in Python than asyncpg encoding a dozen typed arrays
# element by element, which made replay CPU-bound in the client.
_TIMELINE_INSERT = """
INSERT INTO {schema}.timeline (order_id, event_id, type, source, subject, time, sequence,
                               correlation_id, causation_id, schema_version, data)
SELECT order_id, id, type, source, subject, time, sequence, correlation_id, causation_id, schema_version, data
FROM json_to_recordset($1::json) AS f(id text, type text, source text, subject text, time timestamptz,
     sequence int, order_id text, correlation_id text, causation_id text, schema_version int, data json)
"""

# projections.merge, in SQL: o = the stored row, excluded = the batch's merged patch.
_ORDERS_UPSERT = """
INSERT INTO {schema}.orders AS o ({columns})
SELECT {columns}
FROM json_to_recordset($1::json) AS u(order_id text, customer_id text, items json, total_cents bigint,
     currency text, placed_at timestamptz, status text, reason text, status_version int, version int,
     payment_id text, payment_status text, payment_version int, shipment_id text, shipment_status text,
     shipment_version int, payment_currency text, captured_cents bigint, refunded_cents bigint,
     updated_at timestamptz)
ON CONFLICT (order_id) DO UPDATE SET
    customer_id      = coalesce(o.customer_id, excluded.customer_id),
    items            = coalesce(o.items, excluded.items),
    total_cents      = coalesce(o.total_cents, excluded.total_cents),
    currency         = coalesce(o.currency, excluded.currency),
    placed_at        = coalesce(o.placed_at, excluded.placed_at),
    status           = CASE WHEN excluded.status_version > o.status_version THEN excluded.status ELSE o.status END,
    reason           = CASE WHEN excluded.status_version > o.status_version THEN excluded.reason ELSE o.reason END,
    status_version   = greatest(o.status_version, excluded.status_version),
    version          = greatest(o.version, excluded.version),
    payment_id       = coalesce(o.payment_id, excluded.payment_id),
    payment_status   = CASE WHEN excluded.payment_version > o.payment_version
                            THEN excluded.payment_status ELSE o.payment_status END,
    payment_version  = greatest(o.payment_version, excluded.payment_version),
    shipment_id      = coalesce(o.shipment_id, excluded.shipment_id),
    shipment_status  = CASE WHEN excluded.shipment_version > o.shipment_version
                            THEN excluded.shipment_status ELSE o.shipment_status END,
    shipment_version = greatest(o.shipment_version, excluded.shipment_version),
    payment_currency = coalesce(o.payment_currency, excluded.payment_currency),
    captured_cents   = greatest(o.captured_cents, excluded.captured_cents),
    refunded_cents   = greatest(o.refunded_cents, excluded.refunded_cents),
    updated_at       = greatest(o.updated_at, excluded.updated_at)
"""

# One round trip per batch for both tables (two independent data-modifying statements).
_APPLY_SQL = """
WITH timeline AS (
{timeline}
)
{orders}
"""


async def begin_batch(conn: asyncpg.Connection, generation: int) -> str | None:
    """Wait out a switch in progress, then return this generation's state (see views.sql)."""
    state: str | None = await conn.fetchval("SELECT query_batch_begin($1)", generation)
    return state


async def apply_batch(conn: asyncpg.Connection, generation: int, batch: Batch, *, feed: bool) -> None:
    """Write a projected batch into a generation's tables (and the SSE feed when current)."""
    if not batch.facts:
        return
    # Sorted keys: concurrent batches (replicas) lock shared order rows in one order, no deadlock.
    views = [batch.orders[k] for k in sorted(batch.orders)]
    await conn.execute(_apply_sql(schema_of(generation)), batch.facts, views)
    await append_feed(conn, generation, batch.facts if feed else [])


def _apply_sql(schema: str) -> str:
    return _APPLY_SQL.format(
        timeline=_TIMELINE_INSERT.format(schema=schema).strip(),
        orders=_ORDERS_UPSERT.format(schema=schema, columns=", ".join(COLUMNS)).replace("$1::json", "$2::json").strip(),
    )


async def append_feed(conn: asyncpg.Connection, generation: int, facts: Sequence[Fact]) -> None:
    """Add facts to the SSE feed (a fact already there keeps its id) and NOTIFY the readers of
    `generation`, in the caller's transaction (views.sql, query_feed_append)."""
    await conn.execute(
        "SELECT query_feed_append($1, $2, $3, $4)",
        generation,
        [f.id for f in facts],
        [f.order_id for f in facts],
        [f.cloudevent() for f in facts],
    )


# ---------------------------------------------------------------- reading the views

_SELECT_ORDER = "SELECT {columns} FROM {schema}.orders"


def _view(row: asyncpg.Record) -> OrderView:
    return OrderView(**{c: row[c] for c in COLUMNS})


async def current_generation(conn: asyncpg.Connection) -> int:
    generation: int | None = await conn.fetchval("SELECT generation FROM view_generations WHERE state = 'current'")
    if generation is None:
        raise RuntimeError("no current view generation (migrations not applied?)")
    return generation


async def get_order(conn: asyncpg.Connection, generation: int, order_id: str) -> OrderView | None:
    sql = _SELECT_ORDER.format(columns=", ".join(COLUMNS), schema=schema_of(generation)) + " WHERE order_id = $1"
    row = await conn.fetchrow(sql, order_id)
    return _view(row) if row is not None else None


async def list_orders(
    conn: asyncpg.Connection,
    generation: int,
    *,
    customer_id: str | None,
    status: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[OrderView]:
    """Orders newest first by (placed_at, order_id): a keyset, stable while rows are added."""
    where = ["placed_at IS NOT NULL"]
    args: list[Any] = []
    if customer_id is not None:
        args.append(customer_id)
        where.append(f"customer_id = ${len(args)}")
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if after is not None:
        args += [after[0], after[1]]
        where.append(f"(placed_at, order_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = (
        _SELECT_ORDER.format(columns=", ".join(COLUMNS), schema=schema_of(generation))
        + f" WHERE {' AND '.join(where)} ORDER BY placed_at DESC, order_id DESC LIMIT ${len(args)}"
    )
    return [_view(r) for r in await conn.fetch(sql, *args)]


async def timeline(conn: asyncpg.Connection, generation: int, order_id: str) -> list[Fact]:
    rows = await conn.fetch(
        f"""SELECT event_id, type, source, subject, time, sequence, order_id, correlation_id,
                   causation_id, schema_version, data
            FROM {schema_of(generation)}.timeline WHERE order_id = $1""",
        order_id,
    )
    return [_fact(r) for r in rows]


def _fact(r: asyncpg.Record) -> Fact:
    return Fact(
        id=r["event_id"],
        type=r["type"],
        source=r["source"],
        subject=r["subject"],
        time=r["time"],
        sequence=r["sequence"],
        order_id=r["order_id"],
        correlation_id=r["correlation_id"],
        causation_id=r["causation_id"],
        schema_version=r["schema_version"],
        data=r["data"],
    )


@dataclass(frozen=True)
class Stats:
    orders_by_status: dict[str, int]
    payments_by_status: dict[str, int]
    shipments_by_status: dict[str, int]
    revenue: dict[str, tuple[int, int]]  # currency -> (captured_cents, refunded_cents)


async def stats(conn: asyncpg.Connection, generation: int) -> Stats:
    """Counts and money from one snapshot (REPEATABLE READ), so the numbers agree."""
    schema = schema_of(generation)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"""SELECT 'order' AS kind, status AS status, count(*) AS n FROM {schema}.orders
                 WHERE version > 0 AND status IS NOT NULL GROUP BY status
                UNION ALL
                SELECT 'payment', payment_status, count(*) FROM {schema}.orders
                 WHERE payment_status IS NOT NULL GROUP BY payment_status
                UNION ALL
                SELECT 'shipment', shipment_status, count(*) FROM {schema}.orders
                 WHERE shipment_status IS NOT NULL GROUP BY shipment_status"""
        )
        money = await conn.fetch(
            f"""SELECT payment_currency AS currency, coalesce(sum(captured_cents), 0) AS captured,
                       coalesce(sum(refunded_cents), 0) AS refunded
                FROM {schema}.orders
                WHERE payment_currency IS NOT NULL AND (captured_cents IS NOT NULL OR refunded_cents IS NOT NULL)
                GROUP BY payment_currency"""
        )
    counts: dict[str, dict[str, int]] = {"order": {}, "payment": {}, "shipment": {}}
    for r in rows:
        counts[r["kind"]][r["status"]] = r["n"]
    return Stats(
        orders_by_status=counts["order"],
        payments_by_status=counts["payment"],
        shipments_by_status=counts["shipment"],
        revenue={r["currency"]: (int(r["captured"]), int(r["refunded"])) for r in money},
    )


# ---------------------------------------------------------------- the SSE feed

@dataclass(frozen=True)
class FeedItem:
    seq: int
    document: dict[str, Any]


async def feed_head(conn: asyncpg.Connection) -> int:
    head: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM fact_feed")
    return head


async def feed_after(conn: asyncpg.Connection, after: int, order_id: str | None, limit: int) -> list[FeedItem]:
    if order_id is None:
        rows = await conn.fetch(
            "SELECT seq, document FROM fact_feed WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
    else:
        rows = await conn.fetch(
            "SELECT seq, document FROM fact_feed WHERE order_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            order_id,
            after,
            limit,
        )
    return [FeedItem(r["seq"], r["document"]) for r in rows]


# ---------------------------------------------------------------- generations and rebuilds

Offsets = dict[tuple[str, int], int]


@dataclass(frozen=True)
class Generation:
    generation: int
    state: str
    consumer: str
    rebuild_id: uuid.UUID | None
    target: Offsets | None
    created_at: datetime
    caught_up_at: datetime | None
    switched_at: datetime | None
    retired_at: datetime | None

    @property
    def schema(self) -> str:
        return schema_of(self.generation)


def _offsets_to_json(offsets: Offsets) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), end in sorted(offsets.items()):
        out.setdefault(topic, {})[str(partition)] = end
    return out


def _offsets_from_json(doc: Mapping[str, Mapping[str, int]] | None) -> Offsets | None:
    if doc is None:
        return None
    return {(topic, int(p)): int(end) for topic, parts in doc.items() for p, end in parts.items()}


def _generation(r: asyncpg.Record) -> Generation:
    return Generation(
        generation=r["generation"],
        state=r["state"],
        consumer=r["consumer"],
        rebuild_id=r["rebuild_id"],
        target=_offsets_from_json(r["target_offsets"]),
        created_at=r["created_at"],
        caught_up_at=r["caught_up_at"],
        switched_at=r["switched_at"],
        retired_at=r["retired_at"],
    )


_GEN_COLUMNS = "generation, state, consumer, rebuild_id, target_offsets, created_at, caught_up_at, switched_at, retired_at"


async def generations(conn: asyncpg.Connection, states: Sequence[str] | None = None) -> list[Generation]:
    if states is None:
        rows = await conn.fetch(f"SELECT {_GEN_COLUMNS} FROM view_generations ORDER BY generation")
    else:
        rows = await conn.fetch(
            f"SELECT {_GEN_COLUMNS} FROM view_generations WHERE state = ANY($1::text[]) ORDER BY generation",
            list(states),
        )
    return [_generation(r) for r in rows]


async def generation_by_rebuild(conn: asyncpg.Connection, rebuild_id: uuid.UUID) -> Generation | None:
    row = await conn.fetchrow(f"SELECT {_GEN_COLUMNS} FROM view_generations WHERE rebuild_id = $1", rebuild_id)
    return _generation(row) if row is not None else None


async def positions(conn: asyncpg.Connection, consumer: str) -> Offsets:
    """The consumer's next offsets as stored with its views (the kernel's consumer_positions)."""
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer = $1", consumer)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


class RebuildInProgress(Exception):
    def __init__(self, generation: Generation) -> None:
        super().__init__(f"generation {generation.generation} is still building")
        self.generation = generation


async def start_rebuild(conn: asyncpg.Connection, consumer_prefix: str, target: Offsets) -> Generation:
    """Create the next generation's empty tables and register it as `building`."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", GENERATION_LOCK)
        building = await generations(conn, ["building"])
        if building:
            raise RebuildInProgress(building[0])
        number: int = await conn.fetchval("SELECT coalesce(max(generation), 0) + 1 FROM view_generations")
        await conn.execute("SELECT query_create_generation_schema($1)", schema_of(number))
        row = await conn.fetchrow(
            f"""INSERT INTO view_generations (generation, state, consumer, rebuild_id, target_offsets)
                VALUES ($1, 'building', $2, $3, $4) RETURNING {_GEN_COLUMNS}""",
            number,
            f"{consumer_prefix}.g{number}-{uuid.uuid4().hex[:8]}",
            uuid.uuid4(),
            _offsets_to_json(target),
        )
        await conn.execute("SELECT pg_notify($1, $2)", GENERATIONS_CHANNEL, str(number))
    return _generation(row)


def reached(position: Offsets, target: Offsets) -> bool:
    return all(position.get(tp, 0) >= end for tp, end in target.items() if end > 0)


def not_behind(new: Offsets, old: Offsets) -> bool:
    return all(new.get(tp, 0) >= pos for tp, pos in old.items())


async def try_switch(conn: asyncpg.Connection, generation: int, topics: Sequence[str], grace: timedelta) -> bool:
    """Make a caught-up building generation current, atomically; False if not yet.

    Caught up = its stored positions reached the end offsets captured at rebuild start. The
    switch further waits (at most `grace`) until it is also not behind the current views on
    any partition, so a reader never sees an order's version go back at the switch. Under
    the exclusive generation lock no batch is in flight, so the positions compared are exact.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", GENERATION_LOCK)
        rows = await generations(conn, LIVE_STATES)
        new = next((g for g in rows if g.generation == generation and g.state == "building"), None)
        old = next((g for g in rows if g.state == "current"), None)
        if new is None or new.target is None:
            return False
        new_pos = await positions(conn, new.consumer)
        if not reached(new_pos, new.target):
            return False
        now: datetime = await conn.fetchval("SELECT now()")
        caught_up_at = new.caught_up_at
        if caught_up_at is None:
            caught_up_at = now
            await conn.execute("UPDATE view_generations SET caught_up_at = $2 WHERE generation = $1", generation, now)
        if old is not None:
            old_pos = {tp: p for tp, p in (await positions(conn, old.consumer)).items() if tp[0] in topics}
            if not not_behind(new_pos, old_pos) and now - caught_up_at < grace:
                return False
            await conn.execute(
                "UPDATE view_generations SET state = 'retired', retired_at = now() WHERE generation = $1",
                old.generation,
            )
        await conn.execute(
            "UPDATE view_generations SET state = 'current', switched_at = now() WHERE generation = $1", generation
        )
        # Facts only the new views have applied so far were never streamed: add them to the feed.
        missing = await conn.fetch(
            f"""SELECT event_id, type, source, subject, time, sequence, order_id, correlation_id,
                       causation_id, schema_version, data
                FROM {schema_of(generation)}.timeline t
                WHERE NOT EXISTS (SELECT 1 FROM fact_feed f WHERE f.event_id = t.event_id)
                ORDER BY time, event_id"""
        )
        await conn.execute("SELECT pg_notify($1, $2)", GENERATIONS_CHANNEL, str(generation))
        await append_feed(conn, generation, [_fact(r) for r in missing])  # also NOTIFYs the views channel
    return True


async def drop_retired(conn: asyncpg.Connection, keep: int) -> list[int]:
    """Drop all but the `keep` newest retired generations: schema, inbox rows and positions."""
    retired = await generations(conn, ["retired"])
    doomed = retired[: max(len(retired) - keep, 0)]
    for g in doomed:
        async with conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {g.schema} CASCADE")
            await conn.execute("DELETE FROM inbox WHERE consumer = $1", g.consumer)
            await conn.execute("DELETE FROM consumer_positions WHERE consumer = $1", g.consumer)
            await conn.execute("UPDATE view_generations SET state = 'dropped' WHERE generation = $1", g.generation)
    return [g.generation for g in doomed]

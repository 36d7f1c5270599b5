"""View storage: the SQL of one generation's tables (batch writes, reads) and of the SSE feed.

Writes are set-based: a batch is one round trip, whatever its size: the generation's own writer
function (views.sql) takes the generation lock, writes both tables and appends the feed. The
orders upsert applies `projection.merge` in SQL (same rules, see that module), so facts can be
applied in any order, and applying one twice changes nothing. The timeline relies on the
kernel's inbox (same transaction) to never see a fact twice; its primary key turns a repeat
that bypassed the inbox into a loud failure (retry, then DLQ) instead of a duplicate row.

The timeline keeps each fact's data in the contract's current version (`schema_version` says
which); rows written at an older version are upcast by the contract codec when read.

The SSE feed is causal: facts of different topics arrive in any order, so a fact whose cause is
a fact the views consume is held back (`fact_feed_held`, same transaction) until that cause is
in the feed, or past FEED_CAUSAL_WAIT_MS, when it is sent marked `causalgap` (views.sql).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from services.query.projection import COLUMNS, Batch, OrderReadModel, Received, causal_order
from shared.batch_write import DeferredWrite
from shared.contract import EVENT_TOPICS, Envelope, Fact, decode_data, encode, messages_on

# The same constants are written in views.sql (query_feed_append).
FEED_LOCK = 4539208  # fact_feed writers hold it until commit, so seq order = commit order
VIEWS_CHANNEL = "query_views"  # NOTIFY after every applied batch (wakes /stream and min_version)

#: The types of the facts the views consume: a fact caused by one of these waits for it in the
#: SSE feed; one caused by anything else (a command, a request) has no cause to wait for.
FEED_CAUSE_TYPES = frozenset(cls.TYPE for topic in EVENT_TOPICS for cls in messages_on(topic))


def schema_of(generation: int) -> str:
    return f"views_g{generation}"


# ---------------------------------------------------------------- writing a batch

_encoder = msgspec.json.Encoder()


class Applied(NamedTuple):
    """What a batch's write found and did."""

    state: str | None  # the generation's state (None: no such generation); only a live one is written
    held: int  # facts the SSE feed holds back for their causes


async def apply_batch(conn: asyncpg.Connection, generation: int, batch: Batch, *, feed: bool = True) -> Applied:
    """Write a projected batch into a generation's tables, and into the SSE feed when that
    generation is current, in one round trip (views.sql, `views_g<N>.apply_batch`).

    `feed`: put the facts causes first for the feed, as a current generation needs. A caller
    that expects a building generation passes False (replay skips the ordering's cost); should
    the generation be current after all, it writes nothing and the batch is sent again, ordered."""
    if not batch.facts:
        return Applied(None, 0)
    row = await conn.fetchrow(
        _APPLY_SQL.format(schema=schema_of(generation), args="$1::text::json, $2::text::json, $3, $4, $5"),
        *_apply_args(batch, feed),
    )
    if row["held"] is None and row["state"] == "current" and not feed:
        return await apply_batch(conn, generation, batch, feed=True)
    return Applied(row["state"], row["held"] or 0)


def apply_in_batch_statement(generation: int, batch: Batch, *, feed: bool) -> DeferredWrite:
    """`apply_batch` as a part of the consumer batch's one statement (shared/batch_write.py): it
    must find the generation current (`feed`) or building, else the statement is refused and the
    batch is applied in a transaction; `held` is read back."""
    expected = "current" if feed else "building"
    return DeferredWrite(
        _APPLY_SQL.format(schema=schema_of(generation), args="{}::text::json, {}::text::json, {}, {}, {}")
        + f" WHERE state = '{expected}'",
        _apply_args(batch, feed),
        rows=1,
        read="held",
    )


_APPLY_SQL = "SELECT state, held FROM {schema}.apply_batch({args})"


def _apply_args(batch: Batch, feed: bool) -> tuple[Any, ...]:
    """The writer's arguments: the facts' documents (causes first for the feed), the merged
    models, and the feed's columns (none when not feeding)."""
    facts = causal_order(batch.facts) if feed and len(batch.facts) > 1 else batch.facts
    # Sorted keys: concurrent batches (replicas) lock shared order rows in one order, no deadlock.
    models = _encoder.encode([batch.orders[k] for k in sorted(batch.orders)]).decode()
    return (_documents(facts), models, *(_feed_columns(facts) if feed else (None, None, None)))


def _documents(facts: Sequence[Received]) -> str:
    """The facts as one JSON array of their CloudEvents documents, as the contract codec writes
    them: the feed stores each as it is, the timeline reads its rows from them."""
    return (b"[" + b",".join(encode(f) for f in facts) + b"]").decode()


def _feed_columns(facts: Sequence[Received]) -> tuple[list[str], list[str], list[str | None]]:
    """Ids, order ids and awaited causes of the facts, in their order (query_feed_append)."""
    return [f.id for f in facts], [f.data.order_id for f in facts], [awaited_cause(f) for f in facts]


def awaited_cause(fact: Received) -> str | None:
    """The id of the fact this one must follow in the feed: its cause when that is a fact the
    views consume (`causationtype` says so); None when a command or a request caused it."""
    if fact.causation_type in FEED_CAUSE_TYPES and fact.causation_id and fact.causation_id != fact.id:
        return fact.causation_id
    return None


async def append_feed(conn: asyncpg.Connection, generation: int, facts: Sequence[Received]) -> int:
    """Add facts to the SSE feed as CloudEvents documents, causes first (a fact already there
    keeps its id; one whose cause is not there yet is held back until it is), and NOTIFY the
    readers of `generation`, in the caller's transaction (views.sql, query_feed_append).
    Returns how many facts were held back."""
    ordered = causal_order(facts) if len(facts) > 1 else list(facts)
    held: int = await conn.fetchval(
        "SELECT query_feed_append($1, $2::text::json, $3, $4, $5)",
        generation,
        _documents(ordered),
        *_feed_columns(ordered),
    )
    return held


async def release_overdue(conn: asyncpg.Connection, wait_ms: float) -> int:
    """Append to the feed, marked `causalgap`, every fact held back for at least `wait_ms`
    (and what waited for it); how many were marked (views.sql, query_feed_release)."""
    released: int = await conn.fetchval("SELECT query_feed_release($1)", wait_ms)
    return released


async def next_release_in(conn: asyncpg.Connection, wait_ms: float) -> float | None:
    """Seconds until the oldest held-back fact passes the bound (<= 0: due); None if none is held."""
    due: float | None = await conn.fetchval(
        """SELECT extract(epoch FROM min(held_at) + make_interval(secs => $1 / 1000) - clock_timestamp())::float8
           FROM fact_feed_held""",
        wait_ms,
    )
    return due


# ---------------------------------------------------------------- reading the views

_TIMELINE_COLUMNS = (
    "event_id, type, source, subject, time, sequence, correlation_id, causation_id, schema_version,"
    " data::text AS data, causation_type"
)


def _received(r: asyncpg.Record) -> Received:
    """A timeline row back as a contract envelope (its data upcast if stored at an older version)."""
    data = decode_data(r["type"], r["schema_version"], r["data"])
    assert isinstance(data, Fact), f"{r['type']} in the timeline is not a fact"
    return Envelope(
        id=r["event_id"],
        source=r["source"],
        subject=r["subject"],
        sequence=r["sequence"],
        time=r["time"],
        correlation_id=r["correlation_id"],
        causation_id=r["causation_id"],
        data=data,
        causation_type=r["causation_type"],
    )


def _model(row: asyncpg.Record) -> OrderReadModel:
    return msgspec.convert(dict(row), OrderReadModel)


@dataclass(frozen=True)
class Totals:
    """Counts by status and money by currency, from one snapshot."""

    orders_by_status: dict[str, int]
    payments_by_status: dict[str, int]
    shipments_by_status: dict[str, int]
    revenue: dict[str, tuple[int, int]]  # currency -> (captured_cents, refunded_cents)


@dataclass(frozen=True)
class Views:
    """The read side of one generation's tables, on one connection."""

    conn: asyncpg.Connection
    generation: int

    @property
    def schema(self) -> str:
        return schema_of(self.generation)

    async def order(self, order_id: str) -> OrderReadModel | None:
        row = await self.conn.fetchrow(
            f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.orders WHERE order_id = $1", order_id
        )
        return _model(row) if row is not None else None

    async def orders(
        self, *, customer_id: str | None, status: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[OrderReadModel]:
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
            f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.orders WHERE {' AND '.join(where)}"
            f" ORDER BY placed_at DESC, order_id DESC LIMIT ${len(args)}"
        )
        return [_model(r) for r in await self.conn.fetch(sql, *args)]

    async def timeline(self, order_id: str) -> list[Received]:
        rows = await self.conn.fetch(
            f"SELECT {_TIMELINE_COLUMNS} FROM {self.schema}.timeline WHERE order_id = $1", order_id
        )
        return [_received(r) for r in rows]

    async def unfed(self) -> list[Received]:
        """The facts of these views that are not in the SSE feed yet, by time."""
        rows = await self.conn.fetch(
            f"""SELECT {_TIMELINE_COLUMNS} FROM {self.schema}.timeline t
                WHERE NOT EXISTS (SELECT 1 FROM fact_feed f WHERE f.event_id = t.event_id)
                ORDER BY time, event_id"""
        )
        return [_received(r) for r in rows]

    async def totals(self) -> Totals:
        """Counts and money from one snapshot (REPEATABLE READ), so the numbers agree."""
        schema = self.schema
        async with self.conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await self.conn.fetch(
                f"""SELECT 'order' AS kind, status AS status, count(*) AS n FROM {schema}.orders
                     WHERE version > 0 AND status IS NOT NULL GROUP BY status
                    UNION ALL
                    SELECT 'payment', payment_status, count(*) FROM {schema}.orders
                     WHERE payment_status IS NOT NULL GROUP BY payment_status
                    UNION ALL
                    SELECT 'shipment', shipment_status, count(*) FROM {schema}.orders
                     WHERE shipment_status IS NOT NULL GROUP BY shipment_status"""
            )
            money = await self.conn.fetch(
                f"""SELECT payment_currency AS currency, coalesce(sum(captured_cents), 0) AS captured,
                           coalesce(sum(refunded_cents), 0) AS refunded
                    FROM {schema}.orders
                    WHERE payment_currency IS NOT NULL AND (captured_cents IS NOT NULL OR refunded_cents IS NOT NULL)
                    GROUP BY payment_currency"""
            )
        counts: dict[str, dict[str, int]] = {"order": {}, "payment": {}, "shipment": {}}
        for r in rows:
            counts[r["kind"]][r["status"]] = r["n"]
        return Totals(
            orders_by_status=counts["order"],
            payments_by_status=counts["payment"],
            shipments_by_status=counts["shipment"],
            revenue={r["currency"]: (int(r["captured"]), int(r["refunded"])) for r in money},
        )


# ---------------------------------------------------------------- the SSE feed


@dataclass(frozen=True)
class FeedItem:
    seq: int
    document: str  # the CloudEvents JSON text, as stored (compact: one line)


async def feed_head(conn: asyncpg.Connection) -> int:
    head: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM fact_feed")
    return head


async def feed_after(
    conn: asyncpg.Connection, after: int, order_id: str | None, limit: int, *, customer: CustomerScope | None = None
) -> list[FeedItem]:
    """The feed after `after`: all of it, one order's, or (`customer`) every order's the views
    know as that customer's."""
    if customer is not None:
        rows = await conn.fetch(
            f"""SELECT f.seq, f.document::text AS document FROM fact_feed f
                JOIN {customer.schema}.orders o ON o.order_id = f.order_id
                WHERE o.customer_id = $1 AND f.seq > $2 ORDER BY f.seq LIMIT $3""",
            customer.customer_id,
            after,
            limit,
        )
    elif order_id is None:
        rows = await conn.fetch(
            "SELECT seq, document::text FROM fact_feed WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
    else:
        rows = await conn.fetch(
            "SELECT seq, document::text FROM fact_feed WHERE order_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            order_id,
            after,
            limit,
        )
    return [FeedItem(r["seq"], r["document"]) for r in rows]


@dataclass(frozen=True)
class CustomerScope:
    """A customer's SSE stream: only the orders the generation `schema` knows as `customer_id`'s."""

    schema: str
    customer_id: str

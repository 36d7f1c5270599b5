"""A consumer batch written in ONE statement: its inbox rows, positions, facts, outbox rows,
lookup rows and a service's own rows, with every precondition checked by the statement itself.

Why: a batch handled in a transaction costs BEGIN, the claim, the handler's reads and writes and
COMMIT: five to seven round trips, each paying the Python client's and PostgreSQL's
per-statement cost, which dominated a saga's CPU. Most batches need none of that: the handler
decides on states it keeps in memory (a memory image) and the batch's messages were never seen
before. `BatchWork` is the `UnitOfWork` of that optimistic path: writes are collected, not
sent, and `commit` sends one statement, atomic on its own (no BEGIN/COMMIT), that also checks

- that every message id is new to the inbox (a redelivery or a DLQ replay is not);
- that every stream the handler decided on is still at the version it assumed (`expect`, and
  the expected version of every append), so a stale memory image never decides anything;
- that each of the service's own writes (`defer`) touched the rows it had to.

If any check fails the statement raises `BatchPreconditionFailed` and writes nothing; the
consumer runner then applies the batch the classic way (a transaction that claims first, reads
the log, takes locks). So the fast path can only ever be refused, never be wrong.

A handler given a `BatchWork` must use only the `UnitOfWork` API for writes (its
`conn` is not in a transaction: a statement sent on it would commit at once), or raise
`NeedsTransaction` to ask for the classic path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.contract import encode, encode_data
from shared.eventstore import EventStore, IndexRows, Recorded, StreamAppend, UnitOfWork
from shared.metrics import EVENTS_APPENDED

#: The SQLSTATE `batch_precondition()` (schema.sql) raises.
PRECONDITION_SQLSTATE = "EF409"


class NeedsTransaction(Exception):
    """Raised by a handler that cannot decide this batch in one statement (e.g. its memory image
    does not hold a state it needs): the runner applies the batch in a transaction instead."""


class BatchPreconditionFailed(Exception):
    """The one statement was refused (nothing written): a message seen before, a stream that
    moved, a row that was not there. The batch goes the classic way."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What a consumer batch records with its effects: its message ids (the inbox) and each
    partition's next offset (the stored positions)."""

    consumer: str
    message_ids: Sequence[str]
    topics: Sequence[str]
    partitions: Sequence[int]
    next_offsets: Sequence[int]


@dataclass(frozen=True, slots=True)
class DeferredWrite:
    """A service's own data-modifying statement, joined to the batch's one statement as a CTE.

    `sql` has a `{}` placeholder per argument (filled with the statement's `$n`) and must return
    rows when `rows` is given: the number of rows it must touch, else the batch is refused.
    `read`: a column of its first row the handler reads back once committed (`BatchWork.read_back`).
    """

    sql: str
    args: tuple[Any, ...]
    rows: int | None = None
    read: str | None = None


class BatchWork(UnitOfWork):
    """The UnitOfWork of a batch written in one statement (module docstring)."""

    def __init__(
        self, conn: asyncpg.Connection, store: EventStore, claim: Claim | None, *, within: UnitOfWork | None = None
    ) -> None:
        """`claim`: the consumer batch's (None: a write that claims no message, e.g. placements
        written together). `within`: the transaction the statement is part of (its locks are
        held): what follows a commit then waits for that transaction's."""
        super().__init__(conn, store)
        self.claim = claim
        self._within = within
        self._expected: dict[str, int] = {}  # stream -> the version decisions assumed
        self._heads: dict[str, int] = {}  # stream -> its version after the facts collected so far
        self._facts: list[Recorded] = []
        self._data: list[bytes] = []  # each fact's data, encoded once for the log and the outbox
        self._index_table: str | None = None
        self._index_rows: list[tuple[str, str]] = []
        self._deferred: list[DeferredWrite] = []
        self._read_back: dict[int, Any] = {}

    def expect(self, stream_id: str, version: int) -> None:
        """A decision of this batch assumed the stream at `version`: the statement checks it."""
        assumed = self._heads.get(stream_id, self._expected.get(stream_id))
        if assumed is not None and assumed != version:
            raise NeedsTransaction(f"stream {stream_id!r} assumed at versions {assumed} and {version}")
        self._expected.setdefault(stream_id, version)

    def defer(self, write: DeferredWrite) -> int:
        """Join a write of the service's own tables to the statement; its handle for `read_back`."""
        self._deferred.append(write)
        return len(self._deferred) - 1

    def read_back(self, handle: int) -> Any:
        """What the deferred write `handle` returned in its `read` column (after commit only)."""
        return self._read_back[handle]

    async def append_many(
        self,
        appends: Sequence[StreamAppend],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        index: IndexRows | None = None,
    ) -> list[list[Recorded]]:
        """Collect the facts (recorded now, written by `commit`); appends to one stream by
        several messages of the batch follow on from each other."""
        written = [a for a in appends if a.events]
        if not written:
            return [[] for _ in appends]
        for a in written:
            self.expect(a.stream_id, a.expected_version)
        recorded = self.store.envelopes(written, correlation_id=correlation_id, causation_id=causation_id)
        for a, facts in zip(written, recorded):
            self._heads[a.stream_id] = a.expected_version + len(facts)
            for fact in facts:
                data = encode_data(fact.data)
                self._facts.append(fact)
                self._data.append(data)
                if fact.data.TOPIC is not None:
                    # In production order: the messages queued before the facts, then theirs.
                    self._queued.append((fact.data.TOPIC, fact.subject, encode(fact, data=data)))
                    self.published_messages += 1
        if index is not None:
            if self._index_table not in (None, index.table):
                raise NeedsTransaction("one lookup table per statement")
            self._index_table = index.table
            self._index_rows.extend(index.rows)
        by_stream = {a.stream_id: facts for a, facts in zip(written, recorded)}
        return [by_stream.get(a.stream_id, []) if a.events else [] for a in appends]

    async def flush(self) -> None:
        """Nothing goes out before `commit`."""

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[UnitOfWork]:
        raise NeedsTransaction("a savepoint needs a transaction")
        yield self  # pragma: no cover - makes this an async generator

    async def commit(self) -> None:
        """Send the one statement; BatchPreconditionFailed if it was refused (nothing written).
        Within a transaction, the statement's effects are that transaction's: its outbox bell,
        metrics and callbacks come with its commit."""
        sql, args = _statement(self)
        try:
            row = await self.conn.fetchrow(sql, *args)
        except asyncpg.UniqueViolationError as exc:  # a concurrent writer took a version first
            raise BatchPreconditionFailed(repr(exc)) from exc
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == PRECONDITION_SQLSTATE:
                raise BatchPreconditionFailed(str(exc)) from exc
            raise
        assert row is not None
        self._read_back = {n: row[f"read_{n}"] for n, write in enumerate(self._deferred) if write.read is not None}
        if self._within is not None:
            self._within.published_messages += self.published_messages
            self._within.after_commit(self._committed)
        else:
            self._committed()

    def _committed(self) -> None:
        if self._queued:
            self.store.outbox_written.set()
        for event_type, count in Counter(f.type for f in self._facts).items():
            EVENTS_APPENDED.labels(type=event_type).inc(count)
        for callback in self.after_commit_callbacks:
            callback()


class _Args:
    """Numbers the statement's parameters as they are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _statement(work: BatchWork) -> tuple[str, list[Any]]:
    arg = _Args()
    claim, facts, queued = work.claim, work._facts, work._queued
    ctes: list[str] = []
    checks: list[str] = []
    if claim is not None:
        consumer = arg(claim.consumer)
        ctes += [
            f"""claimed AS (
    INSERT INTO inbox (consumer, message_id, outcome)
    SELECT {consumer}, id, 'handled' FROM unnest({arg(list(claim.message_ids))}::text[]) AS id
    ON CONFLICT DO NOTHING RETURNING 1)""",
            f"""position AS (
    INSERT INTO consumer_positions (consumer, topic, partition, next_offset)
    SELECT {consumer}, p.topic, p.partition, p.next_offset
    FROM unnest({arg(list(claim.topics))}::text[], {arg(list(claim.partitions))}::int[],
                {arg(list(claim.next_offsets))}::bigint[]) AS p(topic, partition, next_offset)
    ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset)""",
        ]
        checks.append(f"(SELECT count(*) FROM claimed) = {arg(len(claim.message_ids))}")
    if work._expected:
        ctes.append(
            f"""heads AS (
    SELECT bool_and(coalesce((SELECT max(e.version) FROM events e WHERE e.stream_id = x.stream_id), 0)
                    = x.expected) AS ok
    FROM unnest({arg(list(work._expected))}::text[], {arg(list(work._expected.values()))}::int[])
         AS x(stream_id, expected))"""
        )
        checks.append("(SELECT ok FROM heads)")
    if facts:
        ctes.append(
            f"""new_events AS (
    INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                        correlation_id, causation_id, causation_type, data)
    SELECT e.event_id, e.stream_id, e.version, e.type, e.schema_version, e.occurred_at,
           e.correlation_id, e.causation_id, e.causation_type, e.data::jsonb
    FROM unnest({arg([f.id for f in facts])}::uuid[], {arg([f.subject for f in facts])}::text[],
                {arg([f.sequence for f in facts])}::int[], {arg([f.type for f in facts])}::text[],
                {arg([f.data.VERSION for f in facts])}::int[], {arg([f.time for f in facts])}::timestamptz[],
                {arg([f.correlation_id for f in facts])}::text[], {arg([f.causation_id for f in facts])}::text[],
                {arg([f.causation_type for f in facts])}::text[],
                {arg([data.decode() for data in work._data])}::text[])
         AS e(event_id, stream_id, version, type, schema_version, occurred_at,
              correlation_id, causation_id, causation_type, data))"""
        )
    if queued:
        ctes.append(
            f"""published AS (
    INSERT INTO outbox (topic, key, value)
    SELECT o.topic, o.key, o.value
    FROM unnest({arg([q[0] for q in queued])}::text[], {arg([q[1] for q in queued])}::text[],
                {arg([q[2] for q in queued])}::bytea[]) WITH ORDINALITY AS o(topic, key, value, n)
    ORDER BY o.n)"""
        )
    if work._index_rows:
        assert work._index_table is not None and work._index_table.isidentifier()
        ctes.append(
            f"""indexed AS (
    INSERT INTO {work._index_table} (stream_id, order_id)
    SELECT i.stream_id, i.order_id
    FROM unnest({arg([r[0] for r in work._index_rows])}::text[], {arg([r[1] for r in work._index_rows])}::text[])
         AS i(stream_id, order_id)
    ON CONFLICT DO NOTHING)"""
        )
    reads = []
    for n, write in enumerate(work._deferred):
        ctes.append(f"own_{n} AS (\n    {write.sql.format(*(arg(a) for a in write.args)).strip()})")
        if write.rows is not None:
            checks.append(f"(SELECT count(*) FROM own_{n}) = {arg(write.rows)}")
        if write.read is not None:
            reads.append(f", (SELECT {write.read} FROM own_{n} LIMIT 1) AS read_{n}")
    if not ctes:
        raise NeedsTransaction("a statement with nothing to write")
    sql = "WITH " + ",\n".join(ctes) + f"\nSELECT batch_precondition({' AND '.join(checks) or 'true'}){''.join(reads)}"
    return sql, arg.values

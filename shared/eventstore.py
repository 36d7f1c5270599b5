"""The event store: append-only streams with optimistic concurrency, on asyncpg.

Appending a fact and queueing its publication happen in one statement of one transaction
(transactional outbox), so there is never a dual write to the database and Kafka.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.contract import Command, Envelope, Fact, decode_data, encode, encode_data, utc_now
from shared.ids import current_context, new_id
from shared.metrics import EVENTS_APPENDED
from shared.tracing import Tracing, message_trace

#: A fact as its stream recorded it.
Recorded = Envelope[Fact]


class ConcurrencyConflict(Exception):
    """Another writer appended to the stream first; re-read and decide again."""

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(f"stream {stream_id!r} is no longer at version {expected_version}")
        self.stream_id = stream_id
        self.expected_version = expected_version


# One statement: the version check of every stream, their facts and the outbox rows (messages
# queued earlier in the transaction first, then the facts', in order). Under READ COMMITTED two
# racing writers both pass the check and the loser fails on the (stream_id, version) key.
_APPEND_SQL = """
WITH heads AS (
    SELECT bool_and(coalesce((SELECT max(e.version) FROM events e WHERE e.stream_id = x.stream_id), 0)
                    = x.expected) AS ok
    FROM unnest($1::text[], $2::int[]) AS x(stream_id, expected)
), new_events AS (
    INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                        correlation_id, causation_id, causation_type, data)
    SELECT e.event_id, e.stream_id, e.version, e.type, e.schema_version, $3, $4, $5, $15::text, e.data::jsonb
    FROM unnest($6::uuid[], $7::text[], $8::int[], $9::text[], $10::int[], $11::text[])
         AS e(event_id, stream_id, version, type, schema_version, data), heads
    WHERE heads.ok
    RETURNING event_id
), published AS (
    INSERT INTO outbox (topic, key, value)
    SELECT o.topic, o.key, o.value
    FROM unnest($12::text[], $13::text[], $14::bytea[]) WITH ORDINALITY AS o(topic, key, value, n)
    WHERE EXISTS (SELECT 1 FROM new_events)
    ORDER BY o.n
)
SELECT count(*) FROM new_events
"""

# An aggregate's lookup rows (e.g. payment_by_order: stream -> order) written by the append
# statement itself when the stream is created: one round trip instead of two per new aggregate.
_INDEX_CTE = """
), indexed AS (
    INSERT INTO {table} (stream_id, order_id)
    SELECT i.stream_id, i.order_id FROM unnest($16::text[], $17::text[]) AS i(stream_id, order_id)
    WHERE EXISTS (SELECT 1 FROM new_events)
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM new_events
"""


@functools.cache
def _append_sql(index_table: str | None) -> str:
    """The append statement, writing rows of `index_table` too when one is given."""
    if index_table is None:
        return _APPEND_SQL
    if not index_table.isidentifier():
        raise ValueError(f"not a table name: {index_table!r}")
    return _APPEND_SQL.replace("\n)\nSELECT count(*) FROM new_events\n", _INDEX_CTE.format(table=index_table))


_ENQUEUE_SQL = """
INSERT INTO outbox (topic, key, value)
SELECT o.topic, o.key, o.value
FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS o(topic, key, value, n)
ORDER BY o.n
"""

_READ_SQL = """
SELECT event_id, type, stream_id, version, schema_version, occurred_at,
       correlation_id, causation_id, causation_type, data::text AS data
FROM events WHERE stream_id = $1 AND version <= $2 ORDER BY version
"""

# One index range scan per stream (LATERAL): `stream_id = ANY($1) ORDER BY stream_id, version`
# gets a generic plan that walks the whole index once the statement is prepared.
_READ_MANY_SQL = """
SELECT e.event_id, e.type, e.stream_id, e.version, e.schema_version, e.occurred_at,
       e.correlation_id, e.causation_id, e.causation_type, e.data::text AS data
FROM unnest($1::text[]) AS s(stream_id)
CROSS JOIN LATERAL (
    SELECT * FROM events WHERE events.stream_id = s.stream_id ORDER BY version
) AS e
"""


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Facts to append to one stream, after the version its writer decided on."""

    stream_id: str
    expected_version: int
    events: Sequence[Fact]


@dataclass(frozen=True, slots=True)
class IndexRows:
    """Lookup rows (stream_id, order_id) of `table` written with an append, if it succeeds."""

    table: str
    rows: Sequence[tuple[str, str]]


class UnitOfWork:
    """One database transaction: read streams, append facts, queue commands and messages.

    Queued messages are written to the outbox by the next append's own statement (before its
    facts), or in one statement at commit, so a batch that sends many commands pays no extra
    round trip, and the outbox still holds everything in the order this transaction produced it.
    """

    def __init__(self, conn: asyncpg.Connection, store: EventStore) -> None:
        self.conn = conn
        self._store = store
        self.after_commit_callbacks: list[Callable[[], None]] = []
        self._queued: list[tuple[str, str, bytes]] = []
        self.published_messages = 0  # rows this transaction puts in the outbox

    @property
    def store(self) -> EventStore:
        """The store this transaction belongs to (one per database: a process-wide cache key)."""
        return self._store

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (metrics, logs): never on rollback."""
        self.after_commit_callbacks.append(callback)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[UnitOfWork]:
        """A nested transaction: if its block raises, its facts, queued messages and
        after-commit callbacks are all undone and the outer transaction stays usable."""
        await self.flush()  # what was queued before the savepoint must survive its rollback
        callbacks = len(self.after_commit_callbacks)
        try:
            async with self.conn.transaction():
                yield self
                await self.flush()
        except BaseException:
            del self.after_commit_callbacks[callbacks:]
            self._queued.clear()
            raise

    async def read(self, stream_id: str, up_to_version: int | None = None) -> list[Recorded]:
        return await self._store.read(stream_id, up_to_version, conn=self.conn)

    async def read_many(self, stream_ids: Sequence[str]) -> dict[str, list[Recorded]]:
        """Several whole streams in one round trip (a stream without facts maps to [])."""
        return await self._store.read_many(stream_ids, conn=self.conn)

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[Fact],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        index: IndexRows | None = None,
    ) -> list[Recorded]:
        [recorded] = await self.append_many(
            [StreamAppend(stream_id, expected_version, events)],
            correlation_id=correlation_id,
            causation_id=causation_id,
            index=index,
        )
        return recorded

    async def append_many(
        self,
        appends: Sequence[StreamAppend],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        index: IndexRows | None = None,
    ) -> list[list[Recorded]]:
        """Append to several streams in one statement (all or none; ConcurrencyConflict if any
        stream moved), writing the messages queued so far with them, before their facts, and
        the `index` rows."""
        if not any(a.events for a in appends):
            return [[] for _ in appends]  # nothing to write: the queue waits for commit
        recorded = await self._store.append_many(
            appends,
            correlation_id=correlation_id,
            causation_id=causation_id,
            conn=self.conn,
            queued=self._queued,
            index=index,
        )
        self.published_messages += sum(1 for stream in recorded for e in stream if e.data.TOPIC is not None)
        self._queued.clear()
        return recorded

    async def send(self, command: Command, *, command_id: str | None = None) -> None:
        """Queue a command for publication on its topic with this transaction's facts."""
        assert command.TOPIC is not None, f"{command.TYPE} has no topic"
        correlation_id, causation_id, causation_type = _causal_ids(None, None, fallback=command.target_id)
        traceparent, tracestate = message_trace(causation_id) if self._store.tracing else (None, None)
        envelope = Envelope(
            id=command_id or new_id(),
            source=self._store.source,
            subject=command.target_id,
            sequence=0,
            time=utc_now(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            data=command,
            causation_type=causation_type,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        await self.enqueue(command.TOPIC, command.target_id, encode(envelope))

    async def republish(self, event: Recorded) -> None:
        """Queue an already-recorded fact again (same id), e.g. to re-answer a retried command."""
        topic = event.data.TOPIC
        if topic is None:
            raise ValueError(f"{event.type} is private to its service and never published")
        if self._store.tracing:  # the trace of the work that re-answers, not the first answer's
            ctx = current_context()
            traceparent, tracestate = message_trace(ctx.causation_id if ctx else None)
            event = dataclasses.replace(event, traceparent=traceparent, tracestate=tracestate)
        await self.enqueue(topic, event.subject, encode(event))

    async def enqueue(self, topic: str, key: str, value: bytes) -> None:
        """Queue a message for the outbox (written by `flush`, at the latest before commit)."""
        self._queued.append((topic, key, value))
        self.published_messages += 1

    async def flush(self) -> None:
        """Write the queued messages to the outbox now, in the order they were queued."""
        if not self._queued:
            return
        topics, keys, values = (list(column) for column in zip(*self._queued))
        await self.conn.execute(_ENQUEUE_SQL, topics, keys, values)
        self._queued.clear()


def _causal_ids(correlation_id: str | None, causation_id: str | None, *, fallback: str) -> tuple[str, str, str | None]:
    """Explicit ids win; else the message being handled; else the stream starts a new flow.
    The third value is the type of the causing message, known only from the causal context."""
    ctx = current_context()
    correlation = correlation_id or (ctx.correlation_id if ctx else None) or fallback
    if causation_id:
        return correlation, causation_id, None
    if ctx is not None:
        return correlation, ctx.causation_id, ctx.causation_type
    return correlation, correlation, None


class EventStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        source: str,
        tracing: Tracing | None = None,
    ) -> None:
        self.pool = pool
        self.source = source
        #: The service's tracing (None: off). Messages queued while it is on carry the W3C
        #: trace context of the work that queued them (transport metadata: not stored as facts).
        self.tracing = tracing
        #: Set after every commit that put rows in the outbox: wakes a relay in this process
        #: at once, without a database round trip (other processes' commits use the doorbell).
        self.outbox_written = asyncio.Event()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                uow = UnitOfWork(conn, self)
                yield uow
                await uow.flush()
            if uow.published_messages:
                self.outbox_written.set()
            for callback in uow.after_commit_callbacks:
                callback()

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[Fact],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        conn: asyncpg.Connection | None = None,
        occurred_at: datetime | None = None,
    ) -> list[Recorded]:
        """Append after `expected_version`, or raise ConcurrencyConflict. Empty input is a no-op."""
        [recorded] = await self.append_many(
            [StreamAppend(stream_id, expected_version, events)],
            correlation_id=correlation_id,
            causation_id=causation_id,
            conn=conn,
            occurred_at=occurred_at,
        )
        return recorded

    async def append_many(
        self,
        appends: Sequence[StreamAppend],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        conn: asyncpg.Connection | None = None,
        occurred_at: datetime | None = None,
        queued: Sequence[tuple[str, str, bytes]] = (),
        index: IndexRows | None = None,
    ) -> list[list[Recorded]]:
        """Append to each stream after its expected version, all in one statement, or raise
        ConcurrencyConflict (nothing written). `queued` outbox rows (topic, key, value) are
        written first; `index` rows with the facts (ON CONFLICT DO NOTHING). Streams without
        events are not checked; a stream may appear once."""
        given = list(appends)
        appends = [a for a in given if a.events]
        streams = [a.stream_id for a in appends]
        if len(set(streams)) != len(streams):
            raise ValueError(f"a stream may be appended to once per statement: {streams}")
        if not appends:
            return [[] for _ in given]
        first = appends[0].stream_id
        recorded = self.envelopes(
            appends, correlation_id=correlation_id, causation_id=causation_id, occurred_at=occurred_at
        )
        head = recorded[0][0]  # the statement's facts share their time and causal ids
        flat = [r for stream in recorded for r in stream]
        encoded = [encode_data(r.data) for r in flat]
        outbox = list(queued)
        for r, data in zip(flat, encoded):
            if r.data.TOPIC is not None:
                outbox.append((r.data.TOPIC, r.subject, encode(r, data=data)))
        args: tuple[Any, ...] = (
            streams,
            [a.expected_version for a in appends],
            head.time,
            head.correlation_id,
            head.causation_id,
            [r.id for r in flat],  # asyncpg encodes uuid text itself
            [r.subject for r in flat],
            [r.sequence for r in flat],
            [r.type for r in flat],
            [r.data.VERSION for r in flat],
            [data.decode() for data in encoded],
            [o[0] for o in outbox],
            [o[1] for o in outbox],
            [o[2] for o in outbox],
            head.causation_type,
        )
        if index is not None:
            args += ([r[0] for r in index.rows], [r[1] for r in index.rows])
        sql = _append_sql(index.table if index is not None else None)
        try:
            if conn is None:
                async with self.pool.acquire() as own:
                    inserted = await own.fetchval(sql, *args)
                if outbox and inserted == len(flat):
                    self.outbox_written.set()
            else:
                inserted = await conn.fetchval(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyConflict(first, appends[0].expected_version) from exc
        if inserted != len(flat):
            raise ConcurrencyConflict(first, appends[0].expected_version)
        for event_type, count in Counter(r.type for r in flat).items():
            EVENTS_APPENDED.labels(type=event_type).inc(count)
        by_stream = dict(zip(streams, recorded))
        return [by_stream.get(a.stream_id, []) if a.events else [] for a in given]

    def envelopes(
        self,
        appends: Sequence[StreamAppend],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> list[list[Recorded]]:
        """The envelopes the facts of `appends` are recorded in (ids, versions, causal ids and the
        trace context of the work that decided them), before anything is written."""
        first = appends[0].stream_id
        correlation, causation, causation_type = _causal_ids(correlation_id, causation_id, fallback=first)
        traceparent, tracestate = message_trace(causation) if self.tracing else (None, None)
        when = occurred_at or utc_now()
        return [
            [
                Envelope(
                    id=new_id(),
                    source=self.source,
                    subject=a.stream_id,
                    sequence=a.expected_version + i,
                    time=when,
                    correlation_id=correlation,
                    causation_id=causation,
                    data=e,
                    causation_type=causation_type,
                    traceparent=traceparent,
                    tracestate=tracestate,
                )
                for i, e in enumerate(a.events, start=1)
            ]
            for a in appends
        ]

    async def read(
        self, stream_id: str, up_to_version: int | None = None, *, conn: asyncpg.Connection | None = None
    ) -> list[Recorded]:
        """The stream's facts in order, upcast to their current schema."""
        limit = up_to_version if up_to_version is not None else 2**31 - 1
        if conn is None:
            async with self.pool.acquire() as own:
                rows = await own.fetch(_READ_SQL, stream_id, limit)
        else:
            rows = await conn.fetch(_READ_SQL, stream_id, limit)
        return [self._to_event(row) for row in rows]

    async def read_many(
        self, stream_ids: Sequence[str], *, conn: asyncpg.Connection | None = None
    ) -> dict[str, list[Recorded]]:
        """Several whole streams in one query, each in version order."""
        streams: dict[str, list[Recorded]] = {stream_id: [] for stream_id in stream_ids}
        if not streams:
            return streams
        if conn is None:
            async with self.pool.acquire() as own:
                rows = await own.fetch(_READ_MANY_SQL, list(streams))
        else:
            rows = await conn.fetch(_READ_MANY_SQL, list(streams))
        for row in rows:
            streams[row["stream_id"]].append(self._to_event(row))
        return streams

    def _to_event(self, row: asyncpg.Record) -> Recorded:
        """A stored row as its current version (the codec upcasts older facts; none is rewritten)."""
        data = decode_data(row["type"], row["schema_version"], row["data"])
        assert isinstance(data, Fact), f"{row['type']} in the event log is not a fact"
        return Envelope(
            id=str(row["event_id"]),
            source=self.source,
            subject=row["stream_id"],
            sequence=row["version"],
            time=row["occurred_at"],
            correlation_id=row["correlation_id"],
            causation_id=row["causation_id"],
            data=data,
            causation_type=row["causation_type"],
        )

"""The event store: append-only streams with optimistic concurrency, on asyncpg.

Appending a fact and queueing its publication happen in one statement of one transaction
(transactional outbox), so there is never a dual write to the database and Kafka.
"""
from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import asyncpg

from shared.ids import current_context
from shared.messages import (
    Command,
    NewEvent,
    RecordedEvent,
    command_to_cloudevent,
    encode,
    event_to_cloudevent,
    utc_now,
)
from shared.metrics import EVENTS_APPENDED
from shared.upcasting import NO_UPCASTERS, UpcasterRegistry


class ConcurrencyConflict(Exception):
    """Another writer appended to the stream first; re-read and decide again."""

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(f"stream {stream_id!r} is no longer at version {expected_version}")
        self.stream_id = stream_id
        self.expected_version = expected_version


# One statement: the version check, the facts and their outbox rows. Under READ COMMITTED
# two racing writers both pass the check and the loser fails on the (stream_id, version) key.
_APPEND_SQL = """
WITH head AS (
    SELECT coalesce(max(version), 0) AS version FROM events WHERE stream_id = $1
), new_events AS (
    INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                        correlation_id, causation_id, data)
    SELECT e.event_id, $1, e.version, e.type, e.schema_version, $2, $3, $4, e.data
    FROM unnest($5::uuid[], $6::int[], $7::text[], $8::int[], $9::jsonb[])
         AS e(event_id, version, type, schema_version, data), head
    WHERE head.version = $10
    RETURNING event_id
), published AS (
    INSERT INTO outbox (topic, key, value)
    SELECT o.topic, $1, o.value
    FROM unnest($11::text[], $12::bytea[]) AS o(topic, value)
    WHERE EXISTS (SELECT 1 FROM new_events)
)
SELECT count(*) FROM new_events
"""

_ENQUEUE_SQL = """
INSERT INTO outbox (topic, key, value)
SELECT o.topic, o.key, o.value
FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS o(topic, key, value, n)
ORDER BY o.n
"""

_READ_SQL = """
SELECT event_id, type, stream_id, version, schema_version, occurred_at,
       correlation_id, causation_id, data
FROM events WHERE stream_id = $1 AND version <= $2 ORDER BY version
"""

# One index range scan per stream (LATERAL): `stream_id = ANY($1) ORDER BY stream_id, version`
# gets a generic plan that walks the whole index once the statement is prepared.
_READ_MANY_SQL = """
SELECT e.event_id, e.type, e.stream_id, e.version, e.schema_version, e.occurred_at,
       e.correlation_id, e.causation_id, e.data
FROM unnest($1::text[]) AS s(stream_id)
CROSS JOIN LATERAL (
    SELECT * FROM events WHERE events.stream_id = s.stream_id ORDER BY version
) AS e
"""


@dataclass(frozen=True)
class EventRoutes:
    """Which topic publishes which event types, by type prefix; unrouted types stay private."""

    by_prefix: Mapping[str, str] = field(default_factory=dict)

    def topic_for(self, event_type: str) -> str | None:
        for prefix, topic in self.by_prefix.items():
            if event_type.startswith(prefix):
                return topic
        return None


class UnitOfWork:
    """One database transaction: read streams, append facts, queue commands and messages.

    Queued messages are written to the outbox in one statement, just before the next append
    and at commit, so a batch that sends many commands pays one round trip, and the outbox
    still holds everything in the order this transaction produced it.
    """

    def __init__(self, conn: asyncpg.Connection, store: "EventStore") -> None:
        self.conn = conn
        self._store = store
        self.after_commit_callbacks: list[Callable[[], None]] = []
        self._queued: list[tuple[str, str, bytes]] = []
        self.published_messages = 0  # rows this transaction puts in the outbox

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (metrics, logs): never on rollback."""
        self.after_commit_callbacks.append(callback)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator["UnitOfWork"]:
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

    async def read(self, stream_id: str, up_to_version: int | None = None) -> list[RecordedEvent]:
        return await self._store.read(stream_id, up_to_version, conn=self.conn)

    async def read_many(self, stream_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        """Several whole streams in one round trip (a stream without facts maps to [])."""
        return await self._store.read_many(stream_ids, conn=self.conn)

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> list[RecordedEvent]:
        await self.flush()  # messages queued earlier keep their place before these facts
        self.published_messages += sum(1 for e in events if self._store.routes.topic_for(e.type) is not None)
        return await self._store.append(
            stream_id,
            expected_version,
            events,
            correlation_id=correlation_id,
            causation_id=causation_id,
            conn=self.conn,
        )

    async def send(self, command: Command, topic: str) -> None:
        """Queue a command for publication with this transaction's facts."""
        correlation_id, causation_id = _causal_ids(None, None, fallback=command.target_id)
        document = command_to_cloudevent(command, self._store.source, correlation_id, causation_id)
        await self.enqueue(topic, command.target_id, encode(document))

    async def republish(self, event: RecordedEvent) -> None:
        """Queue an already-recorded fact again, unchanged (same id), e.g. to re-answer a retried command."""
        topic = self._store.routes.topic_for(event.type)
        if topic is None:
            raise ValueError(f"{event.type} is not routed to any topic")
        await self.enqueue(topic, event.stream_id, encode(event_to_cloudevent(event, self._store.source)))

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


def _causal_ids(correlation_id: str | None, causation_id: str | None, *, fallback: str) -> tuple[str, str]:
    """Explicit ids win; else the message being handled; else the stream starts a new flow."""
    ctx = current_context()
    correlation = correlation_id or (ctx.correlation_id if ctx else None) or fallback
    causation = causation_id or (ctx.causation_id if ctx else None) or correlation
    return correlation, causation


class EventStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        source: str,
        routes: EventRoutes = EventRoutes(),
        upcasters: UpcasterRegistry = NO_UPCASTERS,
    ) -> None:
        self.pool = pool
        self.source = source
        self.routes = routes
        self.upcasters = upcasters
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
        events: Sequence[NewEvent],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        conn: asyncpg.Connection | None = None,
        occurred_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """Append after `expected_version`, or raise ConcurrencyConflict. Empty input is a no-op."""
        if not events:
            return []
        correlation, causation = _causal_ids(correlation_id, causation_id, fallback=stream_id)
        when = occurred_at or utc_now()
        recorded = [
            RecordedEvent(
                event_id=uuid.uuid4(),
                type=e.type,
                stream_id=stream_id,
                version=expected_version + i,
                schema_version=e.schema_version,
                occurred_at=when,
                correlation_id=correlation,
                causation_id=causation,
                data=dict(e.data),
            )
            for i, e in enumerate(events, start=1)
        ]
        topics: list[str] = []
        values: list[bytes] = []
        for r in recorded:
            topic = self.routes.topic_for(r.type)
            if topic is not None:
                topics.append(topic)
                values.append(encode(event_to_cloudevent(r, self.source)))
        args: tuple[Any, ...] = (
            stream_id,
            when,
            correlation,
            causation,
            [r.event_id for r in recorded],
            [r.version for r in recorded],
            [r.type for r in recorded],
            [r.schema_version for r in recorded],
            [r.data for r in recorded],
            expected_version,
            topics,
            values,
        )
        try:
            if conn is None:
                async with self.pool.acquire() as own:
                    inserted = await own.fetchval(_APPEND_SQL, *args)
                if topics and inserted == len(recorded):
                    self.outbox_written.set()
            else:
                inserted = await conn.fetchval(_APPEND_SQL, *args)
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyConflict(stream_id, expected_version) from exc
        if inserted != len(recorded):
            raise ConcurrencyConflict(stream_id, expected_version)
        for r in recorded:
            EVENTS_APPENDED.labels(type=r.type).inc()
        return recorded

    async def read(
        self, stream_id: str, up_to_version: int | None = None, *, conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
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
    ) -> dict[str, list[RecordedEvent]]:
        """Several whole streams in one query, each in version order."""
        streams: dict[str, list[RecordedEvent]] = {stream_id: [] for stream_id in stream_ids}
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

    def _to_event(self, row: asyncpg.Record) -> RecordedEvent:
        schema_version, data = self.upcasters.upcast(row["type"], row["schema_version"], row["data"])
        return RecordedEvent(
            event_id=row["event_id"],
            type=row["type"],
            stream_id=row["stream_id"],
            version=row["version"],
            schema_version=schema_version,
            occurred_at=row["occurred_at"],
            correlation_id=row["correlation_id"],
            causation_id=row["causation_id"],
            data=data,
        )

"""The event store: append-only streams with optimistic concurrency, on asyncpg.

Appending a fact and queueing its publication happen in one statement of one transaction
(transactional outbox), so there is never a dual write to the database and Kafka.
"""
from __future__ import annotations

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

_READ_SQL = """
SELECT event_id, type, stream_id, version, schema_version, occurred_at,
       correlation_id, causation_id, data
FROM events WHERE stream_id = $1 AND version <= $2 ORDER BY version
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
    """One database transaction: read streams, append facts, queue commands and messages."""

    def __init__(self, conn: asyncpg.Connection, store: "EventStore") -> None:
        self.conn = conn
        self._store = store
        self.after_commit_callbacks: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (metrics, logs): never on rollback."""
        self.after_commit_callbacks.append(callback)

    async def read(self, stream_id: str, up_to_version: int | None = None) -> list[RecordedEvent]:
        return await self._store.read(stream_id, up_to_version, conn=self.conn)

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> list[RecordedEvent]:
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
        await self.conn.execute(
            "INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)", topic, key, value
        )


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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                uow = UnitOfWork(conn, self)
                yield uow
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

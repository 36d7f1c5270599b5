"""The outbox relay: publishes committed messages to Kafka, in commit-visible id order.

Why an outbox and not log tailing: positions are assigned at insert, commits land out of
position order, so a tailer could skip a late-committing lower position. Outbox rows are
deleted only once Kafka acknowledged them (by the next fetch, in the same statement), so
nothing committed is ever skipped; a crash between publish and delete re-publishes, and
consumers drop the duplicate by message id.

Per-key order: a stream's later facts are committed after its earlier ones, so they get
higher outbox ids; the relay sends in id order through an idempotent producer, and after
any failed send it retries from the first unacknowledged row (never skipping ahead).

Wake-up: while rows keep coming the relay just fetches again. A commit in the relay's own
process rings `EventStore.outbox_written` (no database round trip), so a relay that just went
idle waits for that bell, looking every `linger_poll_s` for other processes' rows; after
`linger_s` of quiet it raises a flag (`outbox_relay_state.listening`) so that every writer's
commit NOTIFYs it. The fallback look comes `poll_interval_s` later and doubles while nothing
comes, up to `idle_poll_max_s`: only a transaction already past its outbox INSERT when the
flag went up can commit without ringing, and such transactions end soon, so an idle relay
costs about nothing (it used to fetch every `poll_interval_s` for ever). The flag stays up
through short bursts (raising and lowering it costs a commit each) and comes down only once
the relay has been busy for `busy_s`: schema.sql explains why writers must not notify on every
commit under load.

Batches that grow with the load: a relay whose last fetch found more than one row waits
`busy_linger_s` after a writer's bell before fetching again, so the commits of those few
milliseconds share one fetch and one Kafka request (a relay-shaped send costs 353 µs of CPU per
message alone and 68 µs in a batch of ten, `make bench-clients`), and the consumers downstream get
fuller fetches. A lone message (the last fetch found at most one) is sent at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.db import connect
from shared.kafka import make_producer
from shared.metrics import MESSAGES_PUBLISHED, OUTBOX_BACKLOG, RELAY_LAG
from shared.tracing import Tracing, end_publish_spans, in_span, publish_spans

log = logging.getLogger("shared.relay")

_RELAY_LOCK = 0x0075_7462_6F78  # advisory lock key: one active relay per database

# The SELECT sees the rows as they were before the statement, so the deleted ones are filtered
# out explicitly; lower ids committed late are still read (never skipped).
_FETCH_SQL = """
WITH published AS (
    DELETE FROM outbox WHERE id = ANY($2::bigint[])
)
SELECT id, topic, key, value, created_at FROM outbox
WHERE NOT (id = ANY($2::bigint[]))
ORDER BY id LIMIT $1
"""
_DELETE_SQL = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 1000
    poll_interval_s: float = 0.5
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    linger_s: float = 0.05
    linger_poll_s: float = 0.02
    idle_poll_max_s: float = 30.0  # the longest fallback look while the doorbell is up
    busy_s: float = 1.0  # the doorbell comes down once every fetch found rows for this long
    #: While busy (the last fetch found more than one row), wait this long after a writer's bell
    #: before fetching, so the commits meanwhile go in the same batch (never when idle).
    busy_linger_s: float = 0.003
    #: On stop, how long the leader keeps publishing what the outbox holds (graceful shutdown);
    #: rows still there afterwards are the next leader's.
    flush_timeout_s: float = 5.0


class OutboxRelay:
    def __init__(
        self,
        dsn: str,
        bootstrap_servers: str,
        *,
        name: str = "relay",
        settings: RelaySettings = RelaySettings(),
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
        local_bell: asyncio.Event | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.dsn = dsn
        self._tracing = tracing
        self._tracer = tracing.tracer if tracing is not None else None
        #: A relay in its writers' process: after a pass it waits for their bell instead of
        #: fetching again at once (a standalone relay has no local writers and always fetches).
        self._local_writers = local_bell is not None
        self.local_bell = local_bell or asyncio.Event()
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self.settings = settings
        self._producer_factory = producer_factory or (
            lambda: make_producer(bootstrap_servers, client_id=f"{name}-relay")
        )
        self.is_leader = False
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, surviving database and Kafka outages with back-off."""
        if self._tracing is not None:
            self._tracing.activate()  # this task's Kafka send spans are the service's
        backoff = self.settings.retry_backoff_s
        while not stop.is_set():
            try:
                await self._lead_and_publish(stop)
                backoff = self.settings.retry_backoff_s
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay lost the database, retrying", extra={"error": repr(exc)})
            finally:
                self.is_leader = False
            await _sleep_unless(stop, backoff)
            backoff = min(backoff * 2, self.settings.max_backoff_s)

    async def _lead_and_publish(self, stop: asyncio.Event) -> None:
        conn = await connect(self.dsn)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                if await _sleep_unless(stop, self.settings.poll_interval_s * 4):
                    return
            self.is_leader = True
            log.info("relay is the active publisher for this database")
            wake = asyncio.Event()
            await conn.add_listener("outbox", lambda *_: wake.set())
            await self._publish_loop(conn, wake, stop)
        finally:
            await conn.close()

    async def _publish_loop(self, conn: asyncpg.Connection, wake: asyncio.Event, stop: asyncio.Event) -> None:
        producer: AIOKafkaProducer | None = None
        backoff = self.settings.retry_backoff_s
        idle_since: float | None = None
        busy_since: float | None = None
        listening = await self._set_doorbell(conn, False)  # a crashed leader may have left it up
        caught_up = False
        quiet_poll_s = self.settings.poll_interval_s  # the fallback look while the doorbell is up
        acknowledged: list[int] = []  # published rows, deleted by the next fetch (same round trip)
        busy = False  # the last fetch found more than one row
        try:
            while not stop.is_set():
                if caught_up and (self._local_writers or listening):
                    # All that was committed before the last fetch is out: wait for a writer.
                    await self._wait_for_writers(wake, stop, listening, quiet_poll_s)
                    if busy and self.settings.busy_linger_s > 0:
                        await _sleep_unless(stop, self.settings.busy_linger_s)
                self.local_bell.clear()  # before the fetch: a commit after it rings again
                wake.clear()
                rows = await self._fetch(conn, acknowledged)
                acknowledged = []
                busy = len(rows) > 1
                now = asyncio.get_running_loop().time()
                if not rows:
                    caught_up, busy_since = False, None
                    idle_since = now if idle_since is None else idle_since
                    if listening:
                        await self._wait_for_writers(wake, stop, listening, quiet_poll_s)
                        quiet_poll_s = min(quiet_poll_s * 2, self.settings.idle_poll_max_s)
                    elif now - idle_since < self.settings.linger_s:
                        # Just gone idle: wait for a local commit, looking now and then for
                        # other processes' rows, before asking every writer to ring.
                        await _wait_any((self.local_bell, stop), self.settings.linger_poll_s)
                    else:
                        # Ask writers to ring, then look once more (the next fetch): a commit
                        # may have slipped in before the bell was up.
                        listening = await self._set_doorbell(conn, True)
                        quiet_poll_s = self.settings.poll_interval_s
                    continue
                idle_since = None
                quiet_poll_s = self.settings.poll_interval_s
                busy_since = now if busy_since is None else busy_since
                if listening and now - busy_since >= self.settings.busy_s:
                    # Busy for a while: every commit's NOTIFY would be pure cost (it serialises
                    # commits); fetching back to back finds the rows anyway.
                    listening = await self._set_doorbell(conn, False)
                if producer is None:
                    producer = await self._start_producer(stop)
                    if producer is None:
                        return
                done = await self._send_in_order(producer, rows)
                caught_up = done == len(rows) < self.settings.batch_size
                if done:
                    acknowledged = [r["id"] for r in rows[:done]]
                    self.published += done
                if done < len(rows):
                    # Kafka refused or timed out: start a fresh producer session and resend
                    # from the first unacknowledged row, so nothing is skipped or reordered.
                    await _stop_quietly(producer)
                    producer = None
                    await _sleep_unless(stop, backoff)
                    backoff = min(backoff * 2, self.settings.max_backoff_s)
                else:
                    backoff = self.settings.retry_backoff_s
            acknowledged, producer = await self._flush(conn, producer, acknowledged)
        finally:
            if producer is not None:
                await _stop_quietly(producer)
            try:  # best effort: rows left are published again (consumers drop them)
                if acknowledged:
                    await asyncio.wait_for(conn.execute(_DELETE_SQL, acknowledged), timeout=5)
                if listening:
                    await asyncio.wait_for(self._set_doorbell(conn, False), timeout=5)
            except Exception as exc:
                log.info("relay could not tidy up", extra={"error": repr(exc)})

    async def _flush(
        self, conn: asyncpg.Connection, producer: AIOKafkaProducer | None, acknowledged: list[int]
    ) -> tuple[list[int], AIOKafkaProducer | None]:
        """Stopping: publish what the outbox holds now (the last requests' and consumer batches'
        messages, written before the relay was told to stop), within `flush_timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.flush_timeout_s
        flushed = 0
        while (remaining := deadline - loop.time()) > 0:
            rows = await self._fetch(conn, acknowledged)
            acknowledged = []
            if not rows:
                break
            try:
                if producer is None:
                    producer = self._producer_factory()
                    await asyncio.wait_for(producer.start(), timeout=remaining)
                done = await asyncio.wait_for(self._send_in_order(producer, rows), timeout=deadline - loop.time())
            except Exception as exc:  # Kafka away or too slow: the rows stay for the next leader
                log.warning("relay could not flush the outbox on stop", extra={"error": repr(exc)})
                break
            acknowledged = [r["id"] for r in rows[:done]]
            self.published += done
            flushed += done
            if done < len(rows):
                break
        log.info("relay flushed the outbox on stop", extra={"published": flushed})
        return acknowledged, producer

    async def _wait_for_writers(
        self, wake: asyncio.Event, stop: asyncio.Event, listening: bool, fallback_s: float
    ) -> None:
        """Until a local commit, a NOTIFY (while the doorbell is up) or the fallback look."""
        if listening:
            await _wait_any((self.local_bell, wake, stop), fallback_s)
        else:
            await _wait_any((self.local_bell, stop), self.settings.linger_poll_s)

    @staticmethod
    async def _set_doorbell(conn: asyncpg.Connection, up: bool) -> bool:
        """Raise or lower the flag that makes writers' commits NOTIFY this relay."""
        await conn.execute("UPDATE outbox_relay_state SET listening = $1 WHERE id = 1", up)
        return up

    async def _fetch(self, conn: asyncpg.Connection, acknowledged: list[int]) -> list[asyncpg.Record]:
        """Delete the rows Kafka acknowledged and read the next ones, in one statement."""
        rows: list[asyncpg.Record] = await conn.fetch(_FETCH_SQL, self.settings.batch_size, acknowledged)
        OUTBOX_BACKLOG.set(len(rows))
        return rows

    async def _start_producer(self, stop: asyncio.Event) -> AIOKafkaProducer | None:
        backoff = self.settings.retry_backoff_s
        while not stop.is_set():
            producer = self._producer_factory()
            try:
                await producer.start()
                return producer
            except Exception as exc:  # aiokafka raises several unrelated types while Kafka is away
                log.warning("relay cannot reach Kafka, retrying", extra={"error": repr(exc)})
                await _stop_quietly(producer)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, self.settings.max_backoff_s)
        return None

    async def _send_in_order(self, producer: AIOKafkaProducer, rows: list[asyncpg.Record]) -> int:
        """Pipeline every row, then return how many leading rows Kafka acknowledged. With tracing
        on, each row that carries a trace context is sent under a `publish` span in that trace."""
        futures: list[asyncio.Future[Any]] = []
        spans = publish_spans(self._tracer, rows)
        try:
            for row, span in zip(rows, spans):
                with in_span(span):
                    futures.append(await producer.send(row["topic"], row["value"], key=row["key"].encode()))
        except Exception as exc:
            log.warning("relay send failed", extra={"error": repr(exc)})
        results = await asyncio.gather(*futures, return_exceptions=True)
        end_publish_spans(spans, results)
        now = datetime.now(UTC)
        acknowledged = 0
        for row, result in zip(rows, results):
            if isinstance(result, BaseException):
                log.warning("kafka did not acknowledge a message", extra={"error": repr(result), "topic": row["topic"]})
                break
            acknowledged += 1
            MESSAGES_PUBLISHED.labels(topic=row["topic"]).inc()
            RELAY_LAG.observe(max((now - row["created_at"]).total_seconds(), 0.0))
        return acknowledged


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of `events` is set or `timeout` passes."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep (a back-off or poll interval) unless stopped first; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return stop.is_set()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception as exc:
        log.debug("producer stop failed", extra={"error": repr(exc)})

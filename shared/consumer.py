"""The consumer runner: idempotent, transactional handling of Kafka messages.

For each poll, one database transaction holds the handler's effects, the inbox rows of the
handled message ids and the next offset of every partition in the poll. Kafka offsets are
committed only after that transaction, and on (re)assignment the consumer seeks to the stored
offsets, so a crash, rebalance or redelivery never produces a second effect.

Why one transaction per poll and not one per partition: on a busy service a poll holds a few
messages from many partitions, and per-transaction costs (round trips, a WAL flush, NOTIFYs)
dominate; one transaction per poll pays them once. The handler sees each partition's messages
in offset order (partitions follow each other), which is all Kafka orders anyway.

A batch is first applied whole (fast). If a handler raises, the batch is rolled back and
re-applied one message per savepoint; a message that keeps failing is written to
`<topic>.dlq` through the outbox, with its error and origin, and the consumer moves on. A dead
letter is a CloudEvent that keeps the original's attributes (`shared/contract/dead_letter.py`);
the inbox records the message as 'dead_lettered' with its attempts, and the same id replayed from
the DLQ (`python -m infra dlq replay`) is handled again, once, with its effects.

Why this module is longer than most (~450 lines): it is one class whose parts (poll, claim,
apply, isolate, dead-letter, commit) share one transaction and one set of invariants; the
dead-letter format and bookkeeping already live in `shared/dead_letters.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.batch_write import BatchPreconditionFailed, BatchWork, Claim, NeedsTransaction
from shared.contract import (
    Envelope,
    Message,
    MessageFormatError,
    decode,
    dlq_topic,
    utc_now,
)
from shared.dead_letters import origin_id, record_failure, revive
from shared.eventstore import ConcurrencyConflict, EventStore, UnitOfWork
from shared.kafka import make_consumer
from shared.metrics import CONSUMER_LAG, DEAD_LETTERED, HANDLER_ERRORS, MESSAGES_HANDLED, ONE_STATEMENT_BATCHES
from shared.tracing import NO_TRACE, ConsumeTrace, consume_trace

log = logging.getLogger("shared.consumer")

# Errors that say "the infrastructure is away", not "this message is bad": retry the batch.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.DeadlockDetectedError,  # lock-order races between replicas: the whole batch retries
    asyncpg.SerializationError,
)


# The batch's position and its inbox rows in one statement (a data-modifying CTE always runs).
_CLAIM_SQL = """
WITH position AS (
    INSERT INTO consumer_positions (consumer, topic, partition, next_offset)
    SELECT $1, p.topic, p.partition, p.next_offset
    FROM unnest($3::text[], $4::int[], $5::bigint[]) AS p(topic, partition, next_offset)
    ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset
)
INSERT INTO inbox (consumer, message_id, outcome)
SELECT $1, id, 'handled' FROM unnest($2::text[]) AS id
ON CONFLICT DO NOTHING RETURNING message_id
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded, validated message (its data the current version of its contract type) plus
    where it came from."""

    envelope: Envelope[Message]
    topic: str
    partition: int
    offset: int


Handler = Callable[[UnitOfWork, Sequence[Delivery]], Awaitable[None]]

_Origin = tuple[str, int, int]  # topic, partition, offset of a record


def _origin(delivery: Delivery) -> _Origin:
    return (delivery.topic, delivery.partition, delivery.offset)


@dataclass(frozen=True)
class ConsumerSettings:
    max_batch: int = 500
    max_attempts: int = 3
    poll_timeout_ms: int = 200
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    kafka_commit_interval_s: float = 2.0
    #: After a poll that returned less than a full batch and reached the partitions' ends, wait
    #: this long and take what arrived meanwhile into the same transaction: fewer, larger
    #: transactions for a little latency (never while working off a backlog).
    batch_linger_s: float = 0.0
    kafka_call_timeout_s: float = 15.0


class _SeekToStoredPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self.runner.seek_to_stored_positions(assigned)
        finally:
            # Joined the group: ready to consume, even with no partitions (more members than
            # partitions). A failed seek falls back to the Kafka offsets, which are never ahead
            # of the stored positions, so it does not make the member unready.
            self.runner.assigned = True


class ConsumerRunner:
    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        store: EventStore,
        bootstrap_servers: str,
        handler: Handler,
        settings: ConsumerSettings = ConsumerSettings(),
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
        one_statement: bool = False,
    ) -> None:
        self.name = name
        #: Try each batch as one statement first (shared/batch_write.py), the handler permitting.
        self.one_statement = one_statement
        self.topics = list(topics)
        self.store = store
        self.handler = handler
        self.settings = settings
        self._consumer_factory = consumer_factory or (
            lambda: make_consumer(bootstrap_servers, group_id=name, client_id=f"{name}-{id(self):x}")
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        #: True once the current Kafka client has joined its group (readiness); a rebalance
        #: leaves it set (the member stays in the group), a new client starts it over.
        self.assigned = False
        self.handled = 0
        self.dead_lettered = 0
        self.one_statement_batches = 0  # batches written in one statement (the rest: in a transaction)

    async def run(self, stop: asyncio.Event) -> None:
        if self.store.tracing is not None:
            self.store.tracing.activate()  # this task's Kafka and database spans are the service's
        backoff = self.settings.retry_backoff_s
        while not stop.is_set():
            consumer = self._consumer_factory()
            self._consumer = consumer
            try:
                await consumer.start()
                consumer.subscribe(self.topics, listener=_SeekToStoredPositions(self))
                committed_at = time.monotonic()
                while not stop.is_set():
                    batches = await self._poll(consumer)
                    if batches:
                        await self._process_poll(consumer, batches, stop)
                    if time.monotonic() - committed_at >= self.settings.kafka_commit_interval_s:
                        _raise_if_wedged(consumer)
                        await self._commit_kafka_offsets(consumer)
                        committed_at = time.monotonic()
                    backoff = self.settings.retry_backoff_s
                await self._commit_kafka_offsets(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.assigned = False
                log.warning("consumer restarting", extra={"consumer": self.name, "error": repr(exc)})
                with contextlib.suppress(TimeoutError):  # a stop ends the back-off at once
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, self.settings.max_backoff_s)
            finally:
                self._consumer = None
                self.assigned = False
                try:
                    await asyncio.wait_for(consumer.stop(), timeout=10)
                except Exception as exc:
                    log.debug("consumer stop failed", extra={"error": repr(exc)})

    async def _poll(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
        )
        count = sum(len(records) for records in batches.values())
        if not count or count >= self.settings.max_batch or self.settings.batch_linger_s <= 0:
            return batches
        if any(_behind(consumer, tp, records) for tp, records in batches.items()):
            return batches  # a backlog (a replay, a catch-up): more is there already, no waiting
        await asyncio.sleep(self.settings.batch_linger_s)
        more = await consumer.getmany(timeout_ms=0, max_records=self.settings.max_batch - count)
        for tp, records in more.items():  # each partition's records follow on from the first poll's
            batches.setdefault(tp, []).extend(records)
        return batches

    async def _commit_kafka_offsets(self, consumer: AIOKafkaConsumer) -> None:
        """Advisory only: the positions committed with the effects in the database are the truth
        (the runner seeks to them on assignment), so Kafka offsets are committed now and then,
        off the per-batch path; they keep lag tooling and a fresh database sensible."""
        if not self._uncommitted:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        assigned = consumer.assignment()
        try:
            await asyncio.wait_for(
                consumer.commit({tp: o for tp, o in offsets.items() if tp in assigned}),
                timeout=self.settings.kafka_call_timeout_s,
            )
        except TimeoutError as exc:
            # aiokafka can wedge after a transport reset (its metadata task died, the
            # coordinator lookup waits for ever): drop this client and start a fresh one.
            raise _ConsumerWedged("offset commit did not return") from exc
        except Exception as exc:  # a rebalance may revoke a partition; the stored position holds
            log.info("offset commit skipped", extra={"consumer": self.name, "error": repr(exc)})

    async def seek_to_stored_positions(self, assigned: set[TopicPartition]) -> None:
        if not assigned or self._consumer is None:
            return
        async with self.store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer = $1",
                self.name,
            )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        for tp in assigned:
            if tp in stored:
                self._consumer.seek(tp, stored[tp])

    async def _process_poll(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        stop: asyncio.Event,
    ) -> None:
        backoff = self.settings.retry_backoff_s
        while True:
            try:
                try:
                    await self._apply(batches, isolate=False)
                except _HandlerFailed:
                    await self._apply(batches, isolate=True)
                break
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "database unavailable, retrying batch",
                    extra={"consumer": self.name, "topics": sorted({tp.topic for tp in batches}), "error": repr(exc)},
                )
                if stop.is_set():
                    for tp, records in batches.items():
                        consumer.seek(tp, records[0].offset)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.max_backoff_s)
        for tp, records in batches.items():
            next_offset = records[-1].offset + 1
            self._uncommitted[tp] = next_offset
            highwater = consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(consumer=self.name, topic=tp.topic, partition=str(tp.partition)).set(
                    max(highwater - next_offset, 0)
                )

    async def _apply(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]], *, isolate: bool) -> None:
        records = [record for tp in sorted(batches) for record in batches[tp]]
        decoded, poison = _decoded(records)
        next_offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items()}
        # Dead-lettering poison needs a transaction, so a batch with poison goes the classic way.
        if (
            self.one_statement
            and not isolate
            and not poison
            and await self._apply_in_one_statement(next_offsets, decoded)
        ):
            return
        dead: list[tuple[_Origin, str]] = []  # (origin, kind) dead-lettered in this attempt
        async with self.store.transaction() as uow:
            fresh = await self._claim(uow, next_offsets, decoded)
            # A span per message, child of its trace context; ended once the effects committed.
            traced = consume_trace(self.store.tracing, self.name, fresh)
            uow.after_commit(traced.end)
            for record, error in poison:
                await self._dead_letter(uow, record, "poison", error, dead, failures=[utc_now()])
            if isolate:
                await self._apply_isolated(uow, records, fresh, dead, traced)
            elif fresh:
                try:
                    # No savepoint: if the batch fails, the whole transaction is rolled back
                    # and `_process_poll` re-applies it message by message.
                    with traced.active():
                        await self.handler(uow, fresh)
                except TRANSIENT_ERRORS:
                    raise
                except Exception as exc:
                    raise _HandlerFailed() from exc
        # Counted only once the transaction committed: a rolled-back attempt did nothing.
        dead_origins = {origin for origin, _ in dead}
        handled = [d for d in fresh if _origin(d) not in dead_origins]
        self._count(handled, "handled")
        for _, kind in dead:
            DEAD_LETTERED.labels(consumer=self.name, type=kind).inc()
        self.handled += len(handled)
        self.dead_lettered += len(dead)

    async def _apply_in_one_statement(self, next_offsets: dict[TopicPartition, int], decoded: list[Delivery]) -> bool:
        """The optimistic path (shared/batch_write.py): the whole batch, its claim included, as one
        statement. False (nothing written) when it cannot be: a message seen before, a handler
        that needs a transaction or fails, or a precondition the statement found broken; the
        classic path then takes the batch."""
        deliveries: list[Delivery] = []
        repeated: list[Delivery] = []  # an id the batch already has (a re-publication): no effect
        ids: set[str] = set()
        for delivery in decoded:
            (repeated if delivery.envelope.id in ids else deliveries).append(delivery)
            ids.add(delivery.envelope.id)
        partitions = sorted(next_offsets)
        claim = Claim(
            self.name,
            [d.envelope.id for d in deliveries],
            [tp.topic for tp in partitions],
            [tp.partition for tp in partitions],
            [next_offsets[tp] for tp in partitions],
        )
        async with self.store.pool.acquire() as conn:
            work = BatchWork(conn, self.store, claim)
            traced = consume_trace(self.store.tracing, self.name, deliveries)
            work.after_commit(traced.end)
            try:
                with traced.active():  # the statement is the batch's database work: its spans go with it
                    await self.handler(work, deliveries)
                    await work.commit()
            except TRANSIENT_ERRORS:
                raise
            except (NeedsTransaction, BatchPreconditionFailed) as exc:
                ONE_STATEMENT_BATCHES.labels(consumer=self.name, outcome="refused").inc()
                log.debug("batch goes the classic way", extra={"consumer": self.name, "reason": repr(exc)})
                return False
            except Exception as exc:  # the classic path retries, isolates and dead-letters it
                ONE_STATEMENT_BATCHES.labels(consumer=self.name, outcome="failed").inc()
                log.debug("batch goes the classic way", extra={"consumer": self.name, "error": repr(exc)})
                return False
        ONE_STATEMENT_BATCHES.labels(consumer=self.name, outcome="written").inc()
        self.one_statement_batches += 1
        self._count(deliveries, "handled")
        self._count(repeated, "duplicate")
        self.handled += len(deliveries)
        return True

    def _count(self, deliveries: Sequence[Delivery], outcome: str) -> None:
        """MESSAGES_HANDLED by type, once per batch (not per message)."""
        for message_type, count in Counter(d.envelope.type for d in deliveries).items():
            MESSAGES_HANDLED.labels(consumer=self.name, type=message_type, outcome=outcome).inc(count)

    async def _apply_isolated(
        self,
        uow: UnitOfWork,
        records: list[ConsumerRecord[Any, Any]],
        fresh: list[Delivery],
        dead: list[tuple[_Origin, str]],
        traced: ConsumeTrace = NO_TRACE,
    ) -> None:
        by_origin = {(r.topic, r.partition, r.offset): r for r in records}
        for delivery in fresh:
            error: Exception | None = None
            failures: list[datetime] = []  # when each attempt failed
            for attempt in range(1, self.settings.max_attempts + 1):
                try:
                    with traced.active(delivery.envelope.id):
                        async with uow.savepoint():
                            await self.handler(uow, [delivery])
                    error = None
                    break
                except TRANSIENT_ERRORS:
                    raise
                except ConcurrencyConflict as exc:
                    error = exc  # someone else wrote the stream: the next attempt re-reads it
                except Exception as exc:
                    error = exc
                failures.append(utc_now())
                HANDLER_ERRORS.labels(consumer=self.name, type=delivery.envelope.type).inc()
                log.warning(
                    "handler failed",
                    extra={
                        "consumer": self.name,
                        "type": delivery.envelope.type,
                        "message_id": delivery.envelope.id,
                        "attempt": attempt,
                        "error": repr(error),
                    },
                )
            if error is None:
                continue
            traced.failed(delivery.envelope.id, repr(error))
            record = by_origin[_origin(delivery)]
            await self._dead_letter(
                uow, record, delivery.envelope.type, repr(error), dead, failures=failures, claimed=delivery.envelope.id
            )

    async def _claim(
        self, uow: UnitOfWork, next_offsets: dict[TopicPartition, int], deliveries: list[Delivery]
    ) -> list[Delivery]:
        """Store the partitions' next offsets and record the message ids in the inbox, in one
        round trip; keep only the deliveries never handled before."""
        partitions = sorted(next_offsets)  # one lock order for the position rows
        new_ids = {
            r["message_id"]
            for r in await uow.conn.fetch(
                _CLAIM_SQL,
                self.name,
                [d.envelope.id for d in deliveries],
                [tp.topic for tp in partitions],
                [tp.partition for tp in partitions],
                [next_offsets[tp] for tp in partitions],
            )
        }
        repeated = [d for d in deliveries if d.envelope.id not in new_ids]
        revived = await self._revive(uow, repeated) if repeated else {}
        seen: set[str] = set()
        fresh, duplicates = [], []
        for d in deliveries:
            claimed = d.envelope.id in new_ids or revived.get(d.envelope.id) == _origin_id(d)
            if claimed and d.envelope.id not in seen:
                seen.add(d.envelope.id)
                fresh.append(d)
            else:
                duplicates.append(d)
        self._count(duplicates, "duplicate")
        return fresh

    async def _revive(self, uow: UnitOfWork, repeated: list[Delivery]) -> dict[str, str]:
        """Claim back the dead-lettered ones among ids already in the inbox (a replay from the
        DLQ): message id -> the origin of the delivery that will handle it."""
        return await revive(uow.conn, self.name, [d.envelope.id for d in repeated], [_origin_id(d) for d in repeated])

    async def _dead_letter(
        self,
        uow: UnitOfWork,
        record: ConsumerRecord[Any, Any],
        kind: str,
        error: str,
        dead: list[tuple[_Origin, str]],
        *,
        failures: Sequence[datetime],
        claimed: str | None = None,
    ) -> None:
        """Record the failure in the inbox and queue the dead letter, in the batch's transaction
        (`shared/dead_letters.py`). `claimed`: the id of a message whose handler failed; None for
        poison. Its attempts and first failure are the inbox's, over every handling (replays)."""
        recorded = await record_failure(uow.conn, self.name, record, error, failures, claimed=claimed)
        if recorded is None:  # poison with the id of a message handled before, or redelivered
            MESSAGES_HANDLED.labels(consumer=self.name, type=kind, outcome="duplicate").inc()
            return
        await uow.enqueue(
            dlq_topic(record.topic), record.key.decode(errors="replace") if record.key else "", recorded.letter
        )
        dead.append(((record.topic, record.partition, record.offset), kind))
        log.error(
            "message dead-lettered",
            extra={
                "consumer": self.name,
                "topic": record.topic,
                "offset": record.offset,
                "message_id": recorded.message_id,
                "attempts": recorded.attempts,
                "error": error,
            },
        )


def _decoded(
    records: Sequence[ConsumerRecord[Any, Any]],
) -> tuple[list[Delivery], list[tuple[ConsumerRecord[Any, Any], str]]]:
    """The records as validated messages, and those that are not (poison, with the error)."""
    deliveries: list[Delivery] = []
    poison: list[tuple[ConsumerRecord[Any, Any], str]] = []
    for record in records:
        try:
            deliveries.append(Delivery(decode(record.value), record.topic, record.partition, record.offset))
        except MessageFormatError as exc:
            poison.append((record, str(exc)))
    return deliveries, poison


def _origin_id(delivery: Delivery) -> str:
    return origin_id(delivery.topic, delivery.partition, delivery.offset)


def _behind(consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> bool:
    highwater = consumer.highwater(tp)
    return highwater is not None and records[-1].offset + 1 < highwater


class _ConsumerWedged(Exception):
    """Internal: the Kafka client stopped making progress; `run` replaces it."""


def _raise_if_wedged(consumer: AIOKafkaConsumer) -> None:
    """aiokafka's background tasks can die on a transport error (uvloop raises RuntimeError, not
    OSError, on a reset connection) and are not restarted: without the metadata task lookups never
    finish; without the fetcher's, `getmany` returns nothing for ever (a reply consumer that
    stopped consuming left sagas waiting until chaos's `kafka-reset` found them); without the
    group coordinator's, the member never rejoins. Any of them done means a fresh client."""
    client = getattr(consumer, "_client", None)
    tasks = {
        "metadata": getattr(client, "_sync_task", None),
        "fetcher": getattr(getattr(consumer, "_fetcher", None), "_fetch_task", None),
        "group coordinator": getattr(getattr(consumer, "_coordinator", None), "_coordination_task", None),
    }
    for name, task in tasks.items():
        if task is not None and task.done():
            raise _ConsumerWedged(f"the Kafka client's {name} task has stopped")


class _HandlerFailed(Exception):
    """Internal: the fast batch path failed; re-apply message by message."""

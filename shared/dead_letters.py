"""A consumer's dead-letter bookkeeping in its inbox, in the transaction of the batch.

A message the consumer gives up on is recorded in the inbox as 'dead_lettered' with its failed
attempts (they add up over handlings), its first and last failure and the record it came from;
the dead letter (`shared/contract/dead_letter.py`) is built from that record. The same id
arriving from ANOTHER record is a replay from the DLQ (`python -m infra dlq replay`): it is
claimed back to 'handled' in the transaction of its effects, so it takes effect once. A
redelivery of the very record that was dead-lettered (stored positions rewound) stays a
duplicate, as does anything already handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.structs import ConsumerRecord

from shared.contract import DeadLetterFailure, DeadLetterOrigin, failed_message_id, make_dead_letter

_REVIVE_SQL = """
UPDATE inbox SET outcome = 'handled', handled_at = now()
FROM unnest($2::text[], $3::text[]) AS d(message_id, origin)
WHERE inbox.consumer = $1 AND inbox.message_id = d.message_id AND inbox.outcome = 'dead_lettered'
  AND inbox.dead_letter_origin IS DISTINCT FROM d.origin
RETURNING inbox.message_id, d.origin
"""
# A message whose handler failed: claimed by this batch, so its row exists.
_HANDLER_FAILED_SQL = """
UPDATE inbox SET outcome = 'dead_lettered', failed_attempts = failed_attempts + $3,
    first_failed_at = coalesce(first_failed_at, $4), last_failed_at = $5, dead_letter_origin = $6
WHERE consumer = $1 AND message_id = $2
RETURNING failed_attempts, first_failed_at
"""
# A poison message was never claimed. A conflict with a handled id is a duplicate, and so is the
# same record again (rows written before origins were recorded were keyed by their origin).
_POISON_SQL = """
INSERT INTO inbox AS i (consumer, message_id, outcome, failed_attempts, first_failed_at, last_failed_at,
                        dead_letter_origin)
VALUES ($1, $2, 'dead_lettered', $3, $4, $5, $6)
ON CONFLICT (consumer, message_id) DO UPDATE SET failed_attempts = i.failed_attempts + excluded.failed_attempts,
    last_failed_at = excluded.last_failed_at, dead_letter_origin = excluded.dead_letter_origin
WHERE i.outcome = 'dead_lettered' AND coalesce(i.dead_letter_origin, i.message_id) <> excluded.dead_letter_origin
RETURNING failed_attempts, first_failed_at
"""


@dataclass(frozen=True, slots=True)
class DeadLetterRecorded:
    """What `record_failure` recorded: the message's id, its attempts in all, the letter's value."""

    message_id: str
    attempts: int
    letter: bytes


def origin_id(topic: str, partition: int, offset: int) -> str:
    """How a record is named in the inbox's `dead_letter_origin` (and an undecodable one's id)."""
    return DeadLetterOrigin(topic, partition, offset).id


async def revive(conn: asyncpg.Connection, consumer: str, ids: Sequence[str], origins: Sequence[str]) -> dict[str, str]:
    """Claim back, among messages already in the inbox (`ids`, read from `origins`), those that
    were dead-lettered from another record: message id -> the origin that now handles it."""
    rows = await conn.fetch(_REVIVE_SQL, consumer, list(ids), list(origins))
    return {r["message_id"]: r["origin"] for r in rows}


async def record_failure(
    conn: asyncpg.Connection,
    consumer: str,
    record: ConsumerRecord[Any, Any],
    error: str,
    failures: Sequence[datetime],
    *,
    claimed: str | None,
) -> DeadLetterRecorded | None:
    """Record a message the consumer gives up on and build its dead letter; None when it is a
    duplicate (poison whose id was handled before, or the same record again).

    `claimed`: the id of a message this batch claimed (its handler failed); otherwise the record
    is poison, recorded under its CloudEvents id or, if it has none, its origin. `failures`: when
    each attempt of this handling failed."""
    key = record.key.decode(errors="replace") if record.key else None
    origin = DeadLetterOrigin(record.topic, record.partition, record.offset, key, _record_time(record))
    message_id = claimed if claimed is not None else failed_message_id(record.value, origin)
    row = await conn.fetchrow(
        _HANDLER_FAILED_SQL if claimed is not None else _POISON_SQL,
        consumer,
        message_id,
        len(failures),
        failures[0],
        failures[-1],
        origin.id,
    )
    if row is None:
        return None
    failure = DeadLetterFailure(consumer, error, row["failed_attempts"], row["first_failed_at"], failures[-1])
    _, letter = make_dead_letter(record.value, origin, failure)
    return DeadLetterRecorded(message_id, failure.attempts, letter)


def _record_time(record: ConsumerRecord[Any, Any]) -> datetime | None:
    """When the record was written (its Kafka timestamp), if it has one."""
    stamp = record.timestamp
    return datetime.fromtimestamp(stamp / 1000, UTC) if isinstance(stamp, int) and stamp >= 0 else None

"""POST /orders with an Idempotency-Key: one key of one customer places at most one order, and a
retry with the same body gets the same answer back, appending nothing. Keys are scoped to the
customer (the token's subject): two customers may use the same key independently.

The key's row (`order_idempotency_keys`) is inserted first in the transaction that places the
order, with the answer it will give; a concurrent request with the same key waits on the
primary key, then reads the committed answer. "Same body" is the same JSON value: key order
and spacing do not matter (`body_fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import InvalidCommand
from shared.eventstore import UnitOfWork


@dataclass(frozen=True, slots=True)
class Placed:
    """The answer to POST /orders (stored with an Idempotency-Key and replayed verbatim)."""

    order_id: str
    status: str
    version: int
    total_cents: int
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "version": self.version,
            "total_cents": self.total_cents,
        }


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key, the customer it is scoped to and the fingerprint of the body."""

    customer_id: str
    key: str
    body_sha256: str


def body_fingerprint(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a validated body: key order and spacing do not matter."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim_idempotency_key(uow: UnitOfWork, key: IdempotencyKey, answer: Placed) -> Placed | None:
    """None if this request owns the key now; else the earlier answer (or 422 if the body differs)."""
    claimed = await uow.conn.fetchval(
        """INSERT INTO order_idempotency_keys (customer_id, idempotency_key, body_sha256, order_id, response)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING order_id""",
        key.customer_id,
        key.key,
        key.body_sha256,
        answer.order_id,
        answer.to_dict(),
    )
    if claimed is not None:
        return None
    row = await uow.conn.fetchrow(
        "SELECT body_sha256, response FROM order_idempotency_keys WHERE customer_id = $1 AND idempotency_key = $2",
        key.customer_id,
        key.key,
    )
    assert row is not None  # the conflicting row is committed (READ COMMITTED sees it now)
    if row["body_sha256"] != key.body_sha256:
        raise InvalidCommand(
            "Idempotency-Key",
            "this Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
        )
    stored: dict[str, Any] = row["response"]
    return Placed(
        order_id=stored["order_id"],
        status=stored["status"],
        version=stored["version"],
        total_cents=stored["total_cents"],
        replayed=True,
    )

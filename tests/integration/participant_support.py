"""Helpers for the payment and shipping service tests: send commands, watch their answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from prometheus_client import REGISTRY

from infra.stack import LocalStack
from shared.db import create_pool, migrate
from tests.integration.kafka_support import produce, read_topic, wait_for


def command_message(
    command_type: str,
    target_id: str,
    data: dict[str, Any],
    *,
    correlation_id: str,
    command_id: uuid.UUID | None = None,
) -> tuple[str, bytes, str]:
    """(Kafka key, CloudEvent bytes, command id) of a command as the saga would send it.

    Written by hand, as an outside client would, so a test can also send what the contract
    forbids (a malformed command must be dead-lettered, not handled).
    """
    message_id = str(command_id or uuid.uuid4())
    document = {
        "specversion": "1.0",
        "id": message_id,
        "source": "/services/order",
        "type": command_type,
        "subject": target_id,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "correlationid": correlation_id,
        "causationid": f"cause-{message_id}",
        "sequence": "0",
        "schemaversion": "1",
        "data": data,
    }
    return target_id, orjson.dumps(document), message_id


async def send(stack: LocalStack, topic: str, *messages: tuple[str, bytes, str]) -> None:
    """Produce in the given order (one key → one partition → handled in this order)."""
    await produce(stack.kafka_bootstrap, topic, [(key, value) for key, value, _ in messages])


async def facts_about(
    stack: LocalStack, topic: str, subject: str, count: int, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """The CloudEvents on `topic` about `subject`, in topic order, once there are `count` of them."""

    def mine(seen: list[Any]) -> list[dict[str, Any]]:
        return [s.value for s in seen if s.value.get("subject") == subject]

    seen = await read_topic(stack.kafka_bootstrap, topic, until=lambda s: len(mine(s)) >= count, timeout_s=timeout_s)
    found = mine(seen)
    assert len(found) >= count, f"expected {count} facts about {subject} on {topic}, saw {[f['type'] for f in found]}"
    return found


async def state_once(client: httpx.AsyncClient, url: str, **expected: Any) -> dict[str, Any]:
    """Poll GET `url` until the body has the expected fields (bounded), then return it."""
    body: dict[str, Any] = {}

    async def matches() -> bool:
        nonlocal body
        response = await client.get(url)
        if response.status_code != 200:
            return False
        body = response.json()
        return all(body.get(k) == v for k, v in expected.items())

    await wait_for(matches, timeout_s=60)
    return body


def refused_count(aggregate: str, command_type: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "commands_refused_total", {"aggregate": aggregate, "type": command_type, "code": code}
    )
    return value or 0.0


# ------------------------------------------------------------------------------ v1 event logs

V1_FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"

_INSERT_V1_FACT = """
INSERT INTO events (event_id, stream_id, version, type, schema_version, occurred_at,
                    correlation_id, causation_id, data)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb)
"""

# The lookup the old code wrote in the transaction of each aggregate's first fact.
_INDEX_V1_STREAMS = """
INSERT INTO {table} (stream_id, order_id, created_at)
SELECT DISTINCT ON (stream_id) stream_id, data->>'order_id', occurred_at FROM events ORDER BY stream_id, version
"""


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to a service's database, to look at what it stored."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def v1_rows(log: str) -> list[dict[str, Any]]:
    """Every row of a service's `events` table as the previous code wrote it (`payment_events`, ...)."""
    return [json.loads(line) for line in (V1_FIXTURES / f"{log}.jsonl").read_text().splitlines()]


def v1_expected() -> dict[str, Any]:
    """What the previous code's services answered over those logs, per order (see its README.md)."""
    expected: dict[str, Any] = json.loads((V1_FIXTURES / "expected.json").read_text())
    return expected


async def restore_v1_log(dsn: str, schema: Path, log: str, index_table: str) -> list[dict[str, Any]]:
    """Fill a fresh service database with a v1 event log, rows exactly as stored (schema
    version 1, data as the old code wrote it), plus the order lookup the old code kept with them.

    The fixture holds the `events` table only; the lookup is rebuilt from each stream's first
    fact, as the old code wrote it in that fact's transaction.
    """
    rows = v1_rows(log)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool, [schema])
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                _INSERT_V1_FACT,
                [
                    (
                        row["event_id"],
                        row["stream_id"],
                        row["version"],
                        row["type"],
                        row["schema_version"],
                        datetime.fromisoformat(row["occurred_at"]),
                        row["correlation_id"],
                        row["causation_id"],
                        json.dumps(row["data"], ensure_ascii=False),
                    )
                    for row in rows
                ],
            )
            await conn.execute(_INDEX_V1_STREAMS.format(table=index_table))
    finally:
        await pool.close()
    return rows

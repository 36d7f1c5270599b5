"""PostgreSQL connection pools and schema migration for every service database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

KERNEL_SCHEMA = Path(__file__).with_name("schema.sql")
log = logging.getLogger("shared.db")

_MIGRATION_LOCK = 0x4556_454E_5453  # any constant; serialises replicas migrating at once


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(type_name, encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog")


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pooled connections hold no session state (LISTEN and advisory locks use their own
    connections), so the default reset, a round trip per checkout, buys nothing."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60, reset=_keep_session
    )
    assert pool is not None
    return pool


#: A migration that lost a deadlock to a running replica's transaction is run again this often,
#: after a back-off growing by MIGRATION_BACKOFF_S per attempt (the other transaction ends first).
MIGRATION_ATTEMPTS = 10
MIGRATION_BACKOFF_S = 0.05


async def migrate(pool: asyncpg.Pool, extra_schema: Iterable[Path | str] = ()) -> None:
    """Apply the kernel schema and a service's own DDL, one replica at a time.

    The DDL is idempotent but still takes table locks (a trigger replaced, an index checked),
    while replicas already running write to those tables: PostgreSQL may end the migration as
    a deadlock's victim. Like a consumer's batch (shared/consumer.py), it is then run again:
    nothing of it was committed."""
    scripts = [KERNEL_SCHEMA.read_text()]
    scripts += [s.read_text() if isinstance(s, Path) else s for s in extra_schema]
    for attempt in range(1, MIGRATION_ATTEMPTS + 1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                for script in scripts:
                    await conn.execute(script)
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == MIGRATION_ATTEMPTS:
                raise
            log.warning(
                "migration lost a deadlock to a running transaction; running it again", extra={"attempt": attempt}
            )
            await asyncio.sleep(MIGRATION_BACKOFF_S * attempt)

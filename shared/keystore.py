"""The key store: one PostgreSQL database holding one data key per customer (shared/personal.py).

Only the services that must read personal data are given its DSN (`KEYSTORE_URL`): the order
service makes, reads and destroys keys; shipping and query only read them; payment has none.
A destroyed key keeps its row (key id, customer, generation, `destroyed_at`) with the secret
gone, so a reader can tell "erased" from "never existed" and a new key gets the next
generation. Keys are never cached: once destroyed, no process can open its values again.

Every failure to reach the store is `KeystoreUnavailable` (the runtime answers 503 with
`Retry-After`); the pool holds no connection until one is needed, so a service starts, and
serves what needs no key, while the store is away.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from shared.personal import DataKey, key_ids_in, new_secret, reveal

SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_keys (
    key_id        TEXT        PRIMARY KEY,
    customer_id   TEXT        NOT NULL,
    generation    INTEGER     NOT NULL,
    secret        BYTEA       NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    destroyed_at  TIMESTAMPTZ NULL,
    UNIQUE (customer_id, generation),
    CHECK ((secret IS NULL) = (destroyed_at IS NOT NULL))
);
-- At most one live key per customer.
CREATE UNIQUE INDEX IF NOT EXISTS customer_keys_live ON customer_keys (customer_id) WHERE secret IS NOT NULL;
"""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


# The live key of each customer, or a new one (the next generation) for those with none; a
# concurrent maker's key wins the unique index and is read on the second try.
_CURRENT_KEYS_SQL = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) AS w(customer_id, key_id, secret)
), live AS (
    SELECT k.key_id, k.customer_id, k.generation, k.secret
    FROM customer_keys k JOIN wanted w ON k.customer_id = w.customer_id
    WHERE k.secret IS NOT NULL
), made AS (
    INSERT INTO customer_keys (key_id, customer_id, generation, secret)
    SELECT w.key_id, w.customer_id,
           COALESCE((SELECT max(generation) FROM customer_keys c WHERE c.customer_id = w.customer_id), 0) + 1, w.secret
    FROM wanted w WHERE NOT EXISTS (SELECT 1 FROM live WHERE live.customer_id = w.customer_id)
    ORDER BY w.customer_id
    ON CONFLICT DO NOTHING
    RETURNING key_id, customer_id, generation, secret
)
SELECT * FROM live UNION ALL SELECT * FROM made
"""


class KeystoreUnavailable(Exception):
    """The key store could not be reached (or refused this role): nothing that needs a key was done."""


class Keystore:
    """Data keys by customer and by key id. `writer`: this service may create the table and keys."""

    def __init__(self, dsn: str, *, writer: bool = False, timeout_s: float = 2.0, max_size: int = 5) -> None:
        self.dsn = dsn
        self.writer = writer
        self.timeout_s = timeout_s
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._migrated = False

    async def _acquire_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=0, max_size=self.max_size, timeout=self.timeout_s, command_timeout=self.timeout_s
            )
            assert pool is not None
            self._pool = pool
        if self.writer and not self._migrated:
            async with self._pool.acquire(timeout=self.timeout_s) as conn:
                await conn.execute(SCHEMA)
            self._migrated = True
        return self._pool

    async def current_key(self, customer_id: str) -> DataKey:
        """The customer's live key, made now (next generation) if it has none."""
        return (await self.current_keys([customer_id]))[customer_id]

    async def current_keys(self, customer_ids: Iterable[str]) -> dict[str, DataKey]:
        """Each customer's live key, made now (next generation) for those with none: one round
        trip for all of them (placements written together)."""
        assert self.writer, "only the key store's writer makes keys"
        wanted = sorted(set(customer_ids))
        found: dict[str, DataKey] = {}
        try:
            pool = await self._acquire_pool()
            async with pool.acquire(timeout=self.timeout_s) as conn:
                for _ in range(2):  # a concurrent maker of the same customer's key wins the second read
                    missing = [c for c in wanted if c not in found]
                    if not missing:
                        break
                    rows = await conn.fetch(
                        _CURRENT_KEYS_SQL, missing, [uuid.uuid4().hex for _ in missing], [new_secret() for _ in missing]
                    )
                    found.update({row["customer_id"]: _key(row) for row in rows})
        except _UNAVAILABLE as exc:
            raise KeystoreUnavailable(repr(exc)) from exc
        if len(found) < len(wanted):
            raise KeystoreUnavailable(f"no key could be made for customers {sorted(set(wanted) - set(found))}")
        return found

    async def keys(self, key_ids: Iterable[str]) -> dict[str, DataKey | None]:
        """The live keys among `key_ids`; a destroyed or unknown one maps to None."""
        wanted = sorted(set(key_ids))
        if not wanted:
            return {}
        try:
            pool = await self._acquire_pool()
            async with pool.acquire(timeout=self.timeout_s) as conn:
                rows = await conn.fetch(
                    """SELECT key_id, customer_id, generation, secret FROM customer_keys
                       WHERE key_id = ANY($1::text[]) AND secret IS NOT NULL""",
                    wanted,
                )
        except asyncpg.UndefinedTableError:
            rows = []  # no key was ever made: nothing sealed can name one
        except _UNAVAILABLE as exc:
            raise KeystoreUnavailable(repr(exc)) from exc
        found: dict[str, DataKey | None] = dict.fromkeys(wanted)
        found.update({row["key_id"]: _key(row) for row in rows})
        return found

    async def destroy(self, customer_id: str) -> list[str]:
        """Destroy every live key of the customer (the secret is overwritten by NULL, and the
        table vacuumed so the dead row versions holding it are gone from its pages; the WAL keeps
        them until it is recycled); the ids of the keys destroyed now (none when already erased:
        destroying is idempotent)."""
        assert self.writer, "only the key store's writer destroys keys"
        try:
            pool = await self._acquire_pool()
            async with pool.acquire(timeout=self.timeout_s) as conn:
                rows = await conn.fetch(
                    """UPDATE customer_keys SET secret = NULL, destroyed_at = now()
                       WHERE customer_id = $1 AND secret IS NOT NULL RETURNING key_id""",
                    customer_id,
                )
                if rows:  # the old row versions, secret included, leave the table's pages now
                    await conn.execute("VACUUM customer_keys")
        except _UNAVAILABLE as exc:
            raise KeystoreUnavailable(repr(exc)) from exc
        return sorted(row["key_id"] for row in rows)

    async def destroyed(self, customer_id: str) -> list[str]:
        """The ids of the customer's keys destroyed so far."""
        try:
            pool = await self._acquire_pool()
            async with pool.acquire(timeout=self.timeout_s) as conn:
                rows = await conn.fetch(
                    "SELECT key_id FROM customer_keys WHERE customer_id = $1 AND secret IS NULL", customer_id
                )
        except _UNAVAILABLE as exc:
            raise KeystoreUnavailable(repr(exc)) from exc
        return sorted(row["key_id"] for row in rows)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def _key(row: asyncpg.Record) -> DataKey:
    return DataKey(row["key_id"], row["customer_id"], row["generation"], bytes(row["secret"]))


async def revealed(keystore: Keystore | None, document: Any) -> Any:
    """A read edge's JSON-like document with its personal values opened (one key-store query
    for all the keys it names); without a key store every sealed value reads as erased."""
    wanted = key_ids_in(document)
    keys = await keystore.keys(wanted) if keystore is not None and wanted else {}
    return reveal(document, keys)

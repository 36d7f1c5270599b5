"""Least privilege (infra/postgres.py): each service's login role reaches only its own
database, plus the key store where it must read personal data: the order service's role owns
the key store, shipping's and query's may only read it, payment's may not connect to it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from infra.postgres import KEYSTORE_DATABASE, SERVICE_DATABASES
from infra.stack import LocalStack
from shared.keystore import Keystore

pytestmark = pytest.mark.integration


async def can_connect(stack: LocalStack, service: str, database: str) -> bool:
    try:
        conn = await asyncpg.connect(stack.service_dsn(service, database))
    except asyncpg.InsufficientPrivilegeError:
        return False
    await conn.close()
    return True


async def test_each_role_connects_to_its_own_database_only(stack: LocalStack) -> None:
    reach = {
        (service, db): await can_connect(stack, service, db)
        for service in SERVICE_DATABASES
        for db in (*SERVICE_DATABASES, KEYSTORE_DATABASE)
    }
    expected = {
        (service, db): db == service or (db == KEYSTORE_DATABASE and service in ("order", "shipping", "query"))
        for service, db in reach
    }
    assert reach == expected


async def test_readers_read_the_keys_and_only_the_order_service_makes_or_destroys_them(stack: LocalStack) -> None:
    writer = Keystore(stack.service_dsn("order", KEYSTORE_DATABASE), writer=True)
    reader = Keystore(stack.service_dsn("shipping", KEYSTORE_DATABASE))
    try:
        key = await writer.current_key("cust-least-privilege")
        assert (await reader.keys([key.key_id]))[key.key_id] == key
        conn = await asyncpg.connect(stack.service_dsn("query", KEYSTORE_DATABASE))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE customer_keys SET secret = NULL")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM customer_keys")
        finally:
            await conn.close()
        assert await writer.destroy("cust-least-privilege") == [key.key_id]
        assert (await reader.keys([key.key_id]))[key.key_id] is None
    finally:
        await writer.close()
        await reader.close()


async def test_a_database_made_before_least_privilege_is_handed_to_its_service_role(stack: LocalStack) -> None:
    """A run dir from before: `payment` and its tables owned by `app`. Starting again hands both
    to `payment_service` (the bootstrap is idempotent, and leaves the other databases as they were)."""
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        await admin.execute('ALTER DATABASE "payment" OWNER TO app')
    finally:
        await admin.close()
    old = await asyncpg.connect(stack.pg_dsn("payment"))
    try:
        await old.execute("SET ROLE app; CREATE TABLE legacy_probe (x int)")
    finally:
        await old.close()
    try:
        await asyncio.to_thread(stack.postgres.start)
        conn = await asyncpg.connect(stack.service_dsn("payment", "payment"))
        try:
            owners = await conn.fetchrow(
                """SELECT pg_get_userbyid(d.datdba) AS db, (SELECT tableowner FROM pg_tables
                   WHERE tablename = 'legacy_probe') AS tbl FROM pg_database d WHERE d.datname = 'payment'"""
            )
            assert (owners["db"], owners["tbl"]) == ("payment_service", "payment_service")
            await conn.execute("INSERT INTO legacy_probe VALUES (1)")
        finally:
            await conn.close()
    finally:
        cleanup = await asyncpg.connect(stack.pg_dsn("payment"))
        try:
            await cleanup.execute("DROP TABLE IF EXISTS legacy_probe")
        finally:
            await cleanup.close()

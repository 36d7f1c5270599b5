"""The payment token is a secret: once the journeys are over it is nowhere but `payment.commands`.

Journeys run with a token no one else uses (`tok_<uuid4 hex>`: any token but `tok_decline` is
accepted), then the token is searched for everywhere the system keeps things: every row of
every table of every database of the stack's PostgreSQL, every message of the event topics and
of every dead-letter topic (the original value of a dead letter included), and every log file
the stack's processes write. It must be found nowhere. `payment.commands` carries it by
design (`payment.authorize` is the one message that needs it): finding it there proves the
token did travel through the system, so the search cannot pass by looking in the wrong place.

Outbox rows hold each message until it is published, the authorize command included, so the
search starts only once every database's outbox is empty (polled, never slept on).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from client import (
    DLQ_TOPICS,
    EVENT_TOPICS,
    NotYet,
    SystemClient,
    eventually,
    expect,
    new_customer,
    order_body,
)
from streams import WireMessage, read_topics

if TYPE_CHECKING:
    from conftest import SystemUnderTest

AUTHORIZE_TOPIC = "payment.commands"
OVER_LIMIT_CENTS = 1_000_001  # above the default PAYMENT_LIMIT_CENTS: declined amount_over_limit


async def run_journeys(client: SystemClient, token: str) -> list[str]:
    """Delivered, declined over the limit, unserved country, cancelled after capture and a
    refused request, all with `token`; the order ids, once every order is final in the views."""

    async def delivered() -> str:
        placed, _ = await client.place_and_confirm(order_body(new_customer("secret-ok"), payment_token=token))
        await client.ship_and_deliver(placed["order_id"])
        return str(placed["order_id"])

    async def declined() -> str:
        body = order_body(
            new_customer("secret-limit"),
            payment_token=token,
            items=[{"sku": "SKU-CAR", "quantity": 1, "unit_price_cents": OVER_LIMIT_CENTS}],
        )
        placed = await client.place_ok(body, idempotency_key=f"e2e-secret-{uuid.uuid4()}")
        order = await client.wait_order(placed["order_id"], {"REJECTED"})
        assert order["reason"] == "payment_declined:amount_over_limit", order
        return str(placed["order_id"])

    async def unserved() -> str:
        placed = await client.place_ok(order_body(new_customer("secret-aq"), payment_token=token, country="AQ"))
        await client.wait_order(placed["order_id"], {"CANCELLED"})
        await client.wait_payment(placed["order_id"], "VOIDED")
        return str(placed["order_id"])

    async def cancelled_after_capture() -> str:
        placed, _ = await client.place_and_confirm(order_body(new_customer("secret-refund"), payment_token=token))
        expect(await client.cancel(placed["order_id"]), 202)
        await client.wait_payment(placed["order_id"], "REFUNDED")
        return str(placed["order_id"])

    refused = order_body(new_customer("secret-422"), payment_token=token)
    refused["items"][0]["quantity"] = 0
    expect(await client.place(refused), 422)
    order_ids = list(await asyncio.gather(delivered(), declined(), unserved(), cancelled_after_capture()))
    for order_id in order_ids:
        await client.wait_view_matches_write_side(order_id)
    return order_ids


def occurrences_on_kafka(messages: list[WireMessage], token: bytes) -> list[str]:
    """Where `token` is in a record: its key, its value, or the original value a dead letter keeps
    (a CloudEvent's data is in the dead letter as it was; other bytes are in `data_base64`, or in
    `value_base64` in a dead letter written before dead letters were CloudEvents)."""
    found = []
    for m in messages:
        if token in (m.key or b"") or token in (m.value or b""):
            found.append(m.where)
        elif m.topic in DLQ_TOPICS:
            try:
                letter = json.loads(m.value or b"{}")
                original = base64.b64decode(letter.get("data_base64") or letter.get("value_base64") or "")
            except (ValueError, AttributeError):
                continue
            if token in original:
                found.append(f"{m.where} (the dead-lettered original)")
    return found


async def databases(sut: SystemUnderTest) -> list[str]:
    assert sut.pg_dsn is not None
    conn = await asyncpg.connect(sut.pg_dsn("postgres"))
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


async def wait_for_empty_outboxes(sut: SystemUnderTest, names: list[str], timeout: float) -> None:
    """Until every database with an outbox has published (and so deleted) all its rows."""
    assert sut.pg_dsn is not None
    for name in names:
        conn = await asyncpg.connect(sut.pg_dsn(name))
        try:
            if await conn.fetchval("SELECT to_regclass('public.outbox')") is None:
                continue

            async def empty(conn: asyncpg.Connection = conn, name: str = name) -> bool:
                left = await conn.fetchval("SELECT count(*) FROM outbox")
                if left:
                    raise NotYet(f"{left} rows still in the outbox of {name}")
                return True

            await eventually(empty, timeout, what=f"the outbox of {name} published")
        finally:
            await conn.close()


async def occurrences_in_database(dsn: str, database: str, token: str) -> list[str]:
    """`database.table: n rows` for every table with a row holding `token` in any column (text,
    JSON and binary columns alike)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            """SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
                      coalesce(array_agg(quote_ident(a.attname)) FILTER (WHERE a.atttypid = 'bytea'::regtype), '{}') AS binary
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg_toast%'
               GROUP BY c.oid, n.nspname, c.relname ORDER BY 2"""
        )
        found = []
        for table in tables:
            matches = [
                "strpos(t::text, $1) > 0",
                *(f"position(convert_to($1, 'UTF8') IN t.{col}) > 0" for col in table["binary"]),
            ]
            count = await conn.fetchval(
                f"SELECT count(*) FROM {table['name']} AS t WHERE {' OR '.join(matches)}", token
            )
            if count:
                found.append(f"{database}.{table['name']}: {count} rows")
        return found
    finally:
        await conn.close()


def occurrences_in_logs(log_dir: Path, token: bytes) -> tuple[list[Path], list[str]]:
    """(the log files read, `file: n lines` for each holding `token`)."""
    files = sorted(p for p in log_dir.rglob("*") if p.is_file())
    found = []
    for path in files:
        count = sum(1 for line in path.read_bytes().splitlines() if token in line)
        if count:
            found.append(f"{path}: {count} lines")
    return files, found


async def test_the_payment_token_is_nowhere_but_in_the_authorize_command(
    client: SystemClient, sut: SystemUnderTest
) -> None:
    token = f"tok_{uuid.uuid4().hex}"
    order_ids = await run_journeys(client, token)

    commands = await read_topics(client.endpoints.kafka, [AUTHORIZE_TOPIC])
    carried = {json.loads(m.value or b"")["data"]["order_id"] for m in commands if token.encode() in (m.value or b"")}
    assert carried == set(order_ids), "payment.authorize carries the token to the payment service, for every order"

    if sut.pg_dsn is not None:
        names = await databases(sut)
        await wait_for_empty_outboxes(sut, names, sut.flow_timeout_s)
    messages = await read_topics(client.endpoints.kafka, EVENT_TOPICS + DLQ_TOPICS)
    on_kafka = occurrences_on_kafka(messages, token.encode())
    assert on_kafka == [], f"the payment token is on the event / dead-letter topics: {on_kafka}"

    if sut.pg_dsn is None or sut.log_dir is None:
        pytest.skip(f"Kafka checked; the {sut.mode} stack's databases and logs are not ours to read")
    in_databases = [hit for name in names for hit in await occurrences_in_database(sut.pg_dsn(name), name, token)]
    assert in_databases == [], f"the payment token is stored in: {in_databases}"
    order_found = [hit for name in names for hit in await occurrences_in_database(sut.pg_dsn(name), name, order_ids[0])]
    assert order_found, "the search finds what the databases do hold (an order id)"
    files, in_logs = occurrences_in_logs(sut.log_dir, token.encode())
    assert {"order.log", "payment.log", "shipping.log", "query.log"} <= {p.name for p in files}, files
    assert in_logs == [], f"the payment token is in the logs: {in_logs}"

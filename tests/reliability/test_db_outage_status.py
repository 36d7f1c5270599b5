"""While its database is unreachable a service answers 503 (+ Retry-After), not 500.

Found by `make chaos` (faults `pg-immediate`, `pg-reset`): every POST /orders during the outage
got `500 Internal Server Error` — an unhandled asyncpg/OSError from the pool. Nothing was
appended and the service recovered by itself, so no invariant broke; but a client cannot tell
"your request is wrong / we have a bug" (500) from "try again shortly" (503), and retries are
exactly right here (Idempotency-Key makes them safe).

Recommended fix (kernel, `shared/runtime.py`, `build_app`): an exception handler for the
"database away" errors — `OSError` (ConnectionRefused/Reset), `asyncpg.PostgresConnectionError`,
`asyncpg.InterfaceError`, `asyncpg.CannotConnectNowError`, and `asyncio.TimeoutError` from
`pool.acquire` — answering `503 {"code": "database_unavailable", …}` with `Retry-After: 1`.
`shared.consumer.TRANSIENT_ERRORS` already names the same set for the consumers.

Fixed: `shared/runtime.py` maps `shared.consumer.TRANSIENT_ERRORS` to 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import uvicorn

from infra.stack import LocalStack, free_port
from reliability.faultproxy import Mode, ProxyThread
from tests.auth_support import acting

from .live_apps import _app

BODY = {
    "customer_id": "outage-1",
    "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000}],
    "currency": "EUR",
    "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Paris", "postal_code": "75001", "country": "FR"},
    "payment_token": "tok_visa",
}


@pytest.mark.integration
async def test_order_service_answers_503_while_its_database_is_unreachable(
    stack: LocalStack, fresh_database: str
) -> None:
    proxy = ProxyThread("127.0.0.1", stack.pg_port, name="pg-outage")
    dsn = fresh_database.replace(f":{stack.pg_port}/", f":{proxy.port}/")
    app = _app("order", dsn, stack.kafka_bootstrap)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "order service did not start"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, auth=acting()) as client:
            assert (await client.post("/orders", json=BODY)).status_code == 202
            await asyncio.to_thread(proxy.set_mode, Mode.RESET)  # the database is gone
            during = await client.post("/orders", json=BODY)
            await asyncio.to_thread(proxy.set_mode, Mode.PASS)
            assert during.status_code == 503, during.text
            assert "retry-after" in {k.lower() for k in during.headers}
            deadline = time.monotonic() + 30  # and it recovers on its own
            while (await client.post("/orders", json=BODY)).status_code != 202:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)
        proxy.close()

"""SIGTERM to the order service under load: in-flight work finishes, nothing is lost or doubled.

Order, payment and shipping run as real processes (`python -m services.<name>`) on the
session's Kafka and scratch databases. Clients keep placing orders, each with its own
Idempotency-Key, a few in flight at any time. The order service gets SIGTERM mid-load:

* it must exit with status 0 (a graceful stop, not death by signal) within its grace;
* every request it answered 202 must be in its event log the moment it is gone;
* no request may get a 5xx. Connection errors while it is down are expected: the client
  retries them with the same Idempotency-Key until the restarted service answers;
* after the restart every order completes its saga exactly once (every order CONFIRMED, the
  audit's duplicate, payment and shipment checks clean for these orders).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from infra.stack import LocalStack, free_ports
from reliability.audit import AuditConfig, run_audit
from shared.contract import OrderConfirmed, OrderPlaced
from tests.auth_support import acting
from tests.integration.service_support import scratch_database

ROOT = Path(__file__).resolve().parents[2]
WRITE_SERVICES = ("order", "payment", "shipping")
IN_FLIGHT = 6  # clients posting at once
GRACE_S = 10


class Service:
    """One service process we started (stopped by its PID, through its Popen)."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.port, self.env, self.log_dir = name, port, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log_tail(self) -> str:
        path = self.log_dir / f"{self.name}-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    async def ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=3, auth=acting()) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
                try:
                    if (await client.get(self.url + "/health/ready")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} not ready in {timeout_s}s:\n{self.log_tail()}")

    async def terminate(self) -> int:
        """SIGTERM; its exit status (a SIGKILL after twice the grace fails the test)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, 2 * GRACE_S + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
            raise AssertionError(f"{self.name} did not stop after SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Placing:
    """What the clients saw."""

    answers: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id
    answered_at: dict[str, float] = field(default_factory=dict)  # key -> when its (first) 202 came
    sent_at: dict[str, float] = field(default_factory=dict)  # key -> when it was first sent
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    server_errors: list[str] = field(default_factory=list)


def body(seq: int) -> dict[str, Any]:
    return {
        "customer_id": f"sigterm-{seq % 7}",
        "items": [{"sku": f"SKU-{seq % 13}", "quantity": 1 + seq % 3, "unit_price_cents": 1000 + seq}],
        "currency": "EUR",
        "shipping_address": {
            "name": "Ada",
            "line1": f"{seq} Main St",
            "city": "Paris",
            "postal_code": "75001",
            "country": "FR",
        },
        "payment_token": "tok_visa",
    }


async def place_until_stopped(url: str, stop: asyncio.Event, seen: Placing, worker: int) -> None:
    """Place orders one after another; retry each (same key) until it is answered 202."""
    seq = 0
    async with httpx.AsyncClient(base_url=url, timeout=30, auth=acting()) as client:
        while not stop.is_set():
            seq += 1
            key = f"sigterm-{worker}-{seq}-{uuid.uuid4().hex[:8]}"
            seen.sent_at[key] = time.monotonic()
            while True:
                try:
                    response = await client.post(
                        "/orders", json=body(worker * 10_000 + seq), headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:  # refused / reset while the service is down: retry
                    seen.connection_errors += 1
                    await asyncio.sleep(0.1)
                    continue
                seen.statuses[response.status_code] = seen.statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    seen.server_errors.append(f"{response.status_code} {response.text[:200]}")
                    await asyncio.sleep(0.1)
                    continue
                assert response.status_code == 202, response.text
                order_id = response.json()["order_id"]
                assert seen.answers.setdefault(key, order_id) == order_id, "a retry placed a second order"
                seen.answered_at.setdefault(key, time.monotonic())
                break


async def placed_in_log(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT stream_id, count(*) AS n FROM events WHERE type = $1 GROUP BY stream_id", OrderPlaced.TYPE
        )
    finally:
        await conn.close()
    return {r["stream_id"]: r["n"] for r in rows}


async def confirmed(dsn: str, order_ids: list[str]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(
            "SELECT count(DISTINCT stream_id) FROM events WHERE type = $1 AND stream_id = ANY($2::text[])",
            OrderConfirmed.TYPE,
            order_ids,
        )
    finally:
        await conn.close()
    return n


async def databases(stack: LocalStack, stack_exit: AsyncExitStack) -> dict[str, str]:
    return {
        name: await stack_exit.enter_async_context(scratch_database(stack, f"gs_{name}")) for name in WRITE_SERVICES
    }


@pytest.fixture
async def services(stack: LocalStack, tmp_path: Path) -> AsyncIterator[tuple[dict[str, Service], dict[str, str]]]:
    async with AsyncExitStack() as exit_stack:
        dsns = await databases(stack, exit_stack)
        ports = dict(zip(WRITE_SERVICES, free_ports(len(WRITE_SERVICES))))
        procs: dict[str, Service] = {}
        for name in WRITE_SERVICES:
            env = {
                "DATABASE_URL": dsns[name],
                "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(ports[name]),
                f"{name.upper()}_PORT": str(ports[name]),
                "LOG_LEVEL": "INFO" if name == "order" else "WARNING",
                "SHUTDOWN_GRACE_S": str(GRACE_S),
                "RELAY_POLL_INTERVAL_S": "0.2",
                "SAGA_STEP_TIMEOUT_S": "600",  # the restart must not make the saga time out
            }
            procs[name] = Service(name, ports[name], env, tmp_path)
        try:
            for service in procs.values():
                service.start()
            await asyncio.gather(*(s.ready() for s in procs.values()))
            yield procs, dsns
        finally:
            for service in procs.values():
                service.kill()  # only what is still running: the test stops them gracefully itself


@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_sigterm_under_load_loses_and_duplicates_nothing(
    stack: LocalStack, services: tuple[dict[str, Service], dict[str, str]]
) -> None:
    procs, dsns = services
    order = procs["order"]
    seen = Placing()
    stop = asyncio.Event()
    clients = [asyncio.create_task(place_until_stopped(order.url, stop, seen, w)) for w in range(IN_FLIGHT)]
    try:
        while len(seen.answers) < 40:  # under load
            assert not any(c.done() for c in clients), [c.exception() for c in clients if c.done()]
            await asyncio.sleep(0.05)
        sigterm_at = time.monotonic()
        status = await order.terminate()
        exited_at = time.monotonic()
        acknowledged = {key: oid for key, oid in seen.answers.items() if seen.answered_at[key] <= exited_at}
        in_log = await placed_in_log(dsns["order"])
        assert status == 0, f"exit status {status}:\n{order.log_tail()}"
        missing = sorted(oid for oid in acknowledged.values() if oid not in in_log)
        assert not missing, f"answered 202 but not in the log: {missing[:5]}"
        in_flight = sum(1 for k, t in seen.answered_at.items() if seen.sent_at[k] < sigterm_at < t)
        print(f"\nSIGTERM with {len(acknowledged)} placed; {in_flight} in-flight requests answered after it")

        order.start()
        await order.ready()
        placed_before = len(seen.answers)
        while len(seen.answers) < placed_before + 40:  # and the restarted service takes load again
            assert not any(c.done() for c in clients), [c.exception() for c in clients if c.done()]
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    for client in clients:
        assert client.exception() is None, client.exception()
    assert not seen.server_errors, seen.server_errors[:5]
    assert set(seen.statuses) == {202}, seen.statuses

    order_ids = sorted(seen.answers.values())
    assert len(set(order_ids)) == len(seen.answers), "one order per Idempotency-Key"
    in_log = await placed_in_log(dsns["order"])
    assert set(in_log) == set(order_ids), "the log holds exactly the orders the clients were answered"
    assert set(in_log.values()) == {1}, "every order placed once"

    deadline = time.monotonic() + 180
    while (done := await confirmed(dsns["order"], order_ids)) < len(order_ids):
        assert time.monotonic() < deadline, f"only {done}/{len(order_ids)} orders CONFIRMED"
        await asyncio.sleep(0.5)
    config = AuditConfig(
        order_dsn=dsns["order"],
        payment_dsn=dsns["payment"],
        shipping_dsn=dsns["shipping"],
        query_dsn="",
        kafka_bootstrap=stack.kafka_bootstrap,
        query_url="",
        grace_s=0.0,
        check_topics=False,  # the session's topics carry other tests' messages too
        views="off",
    )
    report = await run_audit(config, order_ids)
    mine = set(order_ids)
    # The payment and shipping groups are the session's: they may also hold other tests' commands.
    violations = [str(v) for v in report.violations if v.order_id in mine]
    assert not violations, violations[:10]
    print(
        f"{len(order_ids)} orders, all CONFIRMED once; {seen.connection_errors} connection errors retried "
        f"with the same key; statuses {seen.statuses}"
    )

    for name in ("order", "payment", "shipping"):  # an idle graceful stop exits 0 as well
        assert await procs[name].terminate() == 0, procs[name].log_tail()

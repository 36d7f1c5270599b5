"""Open-loop load generator for `make bench`: POST /orders at a fixed arrival rate.

Run as its own process (`python -m bench.load ...`) so that the benchmark's observers (SSE,
Kafka) never delay a send. Request i is planned at `start + i / rate` and sent at that time
whatever happened to earlier requests (never closed-loop): a request is sent on an idle
keep-alive connection, or on a new one (up to --max-connections; beyond that it waits, and the
wait shows up as lateness). Lateness = actual send time - planned time, per request.

The mix is fixed and interleaved: of every 20 requests, index 0 is declined (`tok_decline`),
index 10 is a shipping failure (country `AQ`), the other 18 are happy (90 / 5 / 5 %).

A sample of happy orders (every --sample-every-th) is also long-polled on the query service
(`GET /orders/{id}?min_version=2&wait_s=...`), which answers right after the view commit that
makes the order final: the benchmark uses it to cross-check its SSE-based query-side times.

A minimal HTTP/1.1 client on asyncio streams is used instead of httpx: at hundreds of
requests per second on a 2-core machine the client's own CPU matters.

stdout: one JSON progress line about every 0.5 s; the per-request records go to --out (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from infra.tokens import ActingAuth, ensure_dev_keys
from shared.auth import Role

HAPPY, DECLINED, SHIP_FAIL = "happy", "declined", "shipping_failure"
EXPECTED_STATUS = {HAPPY: "CONFIRMED", DECLINED: "REJECTED", SHIP_FAIL: "CANCELLED"}


def kind_of(index: int) -> str:
    """The fixed mix: 18 happy, 1 declined, 1 shipping failure in every 20 requests."""
    slot = index % 20
    if slot == 0:
        return DECLINED
    if slot == 10:
        return SHIP_FAIL
    return HAPPY


CUSTOMERS = 1000  # the bodies cycle through this many customers


def customer_of(index: int) -> str:
    return f"bench-{index % CUSTOMERS}"


def order_body(index: int, kind: str) -> bytes:
    country = "AQ" if kind == SHIP_FAIL else ("FR", "DE", "GB", "US")[index % 4]
    return orjson.dumps(
        {
            "customer_id": customer_of(index),
            "items": [
                {"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1500},
                {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 1599},
            ],
            "currency": "EUR",
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "12 St James's Sq",
                "city": "London",
                "postal_code": "SW1Y 4JH",
                "country": country,
            },
            "payment_token": "tok_decline" if kind == DECLINED else "tok_visa",
        }
    )


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection (requests are never pipelined on it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, head: bytes, body: bytes = b"") -> None:
        self.writer.write(head + body)

    async def response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        length = 0
        chunked = False
        closing = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lname == b"connection" and b"close" in value.lower():
                closing = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                body += await self.reader.readexactly(size + 2)
                body = body[:-2]
        else:
            body = await self.reader.readexactly(length) if length else b""
        if closing:
            self.close()
        return status, body

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


#: Idle connections are not reused after this long: uvicorn closes them after 5 s of keep-alive,
#: and a request written just as the server closes is lost (IncompleteReadError) — a client race.
MAX_IDLE_S = 2.0


@dataclass
class Pool:
    host: str
    port: int
    max_connections: int
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0
    live: int = 0
    waiters: asyncio.Queue[asyncio.Future[Connection]] = field(default_factory=asyncio.Queue)

    async def acquire(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and time.monotonic() - conn.idle_since < MAX_IDLE_S:
                return conn
            conn.close()  # the server may be closing it right now (keep-alive timeout race)
            self.live -= 1
        if self.live < self.max_connections:
            self.live += 1
            self.opened += 1
            try:
                return await Connection.open(self.host, self.port)
            except BaseException:
                self.live -= 1
                raise
        future: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        await self.waiters.put(future)
        return await future

    def release(self, conn: Connection, *, broken: bool = False) -> None:
        if broken or conn.closed:
            conn.close()
            self.live -= 1
            return
        while not self.waiters.empty():
            future = self.waiters.get_nowait()
            if not future.done():
                future.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class Results:
    """Per request, columnar (cheap to append and to serialise)."""

    index: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    planned: list[float] = field(default_factory=list)  # wall clock, seconds
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # HTTP status, 0 = transport error
    error: list[str] = field(default_factory=list)
    order_id: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # query long-poll cross-check


async def run(args: argparse.Namespace) -> dict[str, Any]:
    target = urlsplit(args.url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    query = urlsplit(args.query_url) if args.query_url else None
    pool = Pool(host, port, args.max_connections)
    results = Results()
    total = int(round(args.rate * args.duration))
    head_prefix = (f"POST /orders HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n").encode()
    # Placing is a customer's act: each body's customer gets its own token, made once (at most
    # CUSTOMERS of them) before the clock starts; the query long-poll reads as staff.
    auth = ActingAuth(ensure_dev_keys(Path(args.auth_dir)))
    customer_auth = {
        c: f"Authorization: Bearer {auth.token(Role.CUSTOMER, c)}\r\n".encode()
        for c in {customer_of(index) for index in range(args.first_index, args.first_index + min(total, CUSTOMERS))}
    }
    staff_auth = f"Authorization: Bearer {auth.token(Role.STAFF)}\r\n"
    bodies = {i: order_body(args.first_index + i, kind_of(args.first_index + i)) for i in range(min(total, 40))}
    sample_tasks: set[asyncio.Task[None]] = set()
    in_flight: set[asyncio.Task[None]] = set()
    counters = {"sent": 0, "ok": 0, "err": 0}
    max_late = 0.0

    # Pre-open some connections so the first second does not pay for TCP handshakes.
    warm = [
        await Connection.open(host, port) for _ in range(min(args.max_connections, max(2, int(args.rate * 0.02) + 2)))
    ]
    pool.idle.extend(warm)
    pool.live = pool.opened = len(warm)

    async def long_poll(order_id: str) -> None:
        assert query is not None
        qhost, qport = query.hostname or "127.0.0.1", query.port or 80
        started = time.time()
        record: dict[str, Any] = {"order_id": order_id, "asked": started}
        try:
            conn = await Connection.open(qhost, qport)
            try:
                deadline = started + args.sample_wait_s
                while time.time() < deadline:
                    wait = min(25.0, max(1.0, deadline - time.time()))  # the service caps wait_s (30 s)
                    conn.send(
                        f"GET /orders/{order_id}?min_version=2&wait_s={wait:.1f} HTTP/1.1\r\n"
                        f"Host: {qhost}:{qport}\r\n{staff_auth}\r\n".encode()
                    )
                    status, body = await conn.response()
                    if status == 200:
                        doc = orjson.loads(body)
                        if doc.get("status") in ("CONFIRMED", "REJECTED", "CANCELLED"):
                            record.update(seen=time.time(), status=doc.get("status"))
                            break
                    elif status not in (404, 504):
                        record["error"] = f"http {status}"
                        break
                    if status == 404:
                        await asyncio.sleep(0.05)
            finally:
                conn.close()
        except Exception as exc:
            record["error"] = repr(exc)
        results.samples.append(record)

    async def one(i: int, planned: float) -> None:
        index = args.first_index + i
        kind = kind_of(index)
        body = bodies.get(i) or order_body(index, kind)
        head = head_prefix + customer_auth[customer_of(index)] + b"Content-Length: %d\r\n\r\n" % len(body)
        status, error, order_id = 0, "", ""
        sent = done = 0.0
        conn: Connection | None = None
        try:
            conn = await pool.acquire()
            sent = time.time()
            conn.send(head, body)
            status, payload = await asyncio.wait_for(conn.response(), args.timeout_s)
            done = time.time()
            pool.release(conn)
            conn = None
            if status == 202:
                order_id = orjson.loads(payload)["order_id"]
            else:
                error = f"http {status}"
        except Exception as exc:
            done = time.time()
            error = type(exc).__name__
            if conn is not None:
                pool.release(conn, broken=True)
        if not sent:
            sent = done
        results.index.append(index)
        results.kind.append(kind)
        results.planned.append(planned)
        results.sent.append(sent)
        results.done.append(done)
        results.status.append(status)
        results.error.append(error)
        results.order_id.append(order_id)
        if status == 202:
            counters["ok"] += 1
            if query is not None and kind == HAPPY and args.sample_every and index % args.sample_every == 1:
                task = asyncio.create_task(long_poll(order_id))
                sample_tasks.add(task)
                task.add_done_callback(sample_tasks.discard)
        else:
            counters["err"] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(0.5)
            line = {
                "t": time.time(),
                **counters,
                "inflight": len(in_flight),
                "conns": pool.live,
                "late_max_ms": round(max_late * 1000, 1),
            }
            print(orjson.dumps(line).decode(), flush=True)

    start = args.start if args.start else time.time() + 0.2
    reporter = asyncio.create_task(progress())
    delay = start - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    i = 0
    while i < total:
        now = time.time()
        # Launch everything that is due (catching up if the loop was late), then sleep until the next.
        while i < total and start + i / args.rate <= now:
            planned = start + i / args.rate
            max_late = max(max_late, now - planned)
            task = asyncio.create_task(one(i, planned))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            counters["sent"] += 1
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / args.rate - time.time()))
    if in_flight:
        await asyncio.wait(set(in_flight))
    if sample_tasks:
        await asyncio.wait(set(sample_tasks), timeout=args.sample_wait_s + 5)
    reporter.cancel()
    pool.close()
    return {
        "rate": args.rate,
        "duration": args.duration,
        "start": start,
        "connections_opened": pool.opened,
        **{
            k: getattr(results, k)
            for k in ("index", "kind", "planned", "sent", "done", "status", "error", "order_id", "samples")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="open-loop POST /orders load generator")
    parser.add_argument("--url", required=True, help="order service base URL")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--start", type=float, default=0.0, help="wall-clock time of request 0 (default: now)")
    parser.add_argument("--first-index", type=int, default=0, help="index of request 0 (mix position)")
    parser.add_argument("--max-connections", type=int, default=1024)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--query-url", default="", help="query service base URL for the long-poll sample")
    parser.add_argument("--sample-every", type=int, default=0, help="long-poll every N-th happy order (0 = none)")
    parser.add_argument("--sample-wait-s", type=float, default=30.0)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--auth-dir", required=True, help="the stack's development key dir (<run dir>/auth)")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(run(args))
    args.out.write_bytes(orjson.dumps(result))
    print(orjson.dumps({"done": True, "t": time.time()}).decode(), flush=True)


if __name__ == "__main__":
    main()

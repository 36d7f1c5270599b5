"""A small black-box client of the running system: HTTP (httpx) and Kafka (aiokafka) only.

It imports nothing from `services/`, `shared/` or `infra/`: it knows the system only by its
contract (../shared/SPEC.md, docs/EVENTS.md), so the end-to-end tests and the demo see exactly
what any other client would. Used by `conftest.py`, the `test_*.py` modules and `demo.py`.

Pieces:
* `Endpoints`: the four base URLs and the Kafka bootstrap address.
* `SystemClient`: one method per REST endpoint (raw `httpx.Response`), plus `wait_*` helpers
  that poll with a bound (never a fixed sleep used as synchronisation).
* `eventually(fn, timeout)`: the one polling primitive.
* `KafkaTap`: reads every topic from "now" on (offsets captured at start, no consumer group,
  so it never moves a service's offsets) and keeps what it saw.
* `SseStream`: a Server-Sent Events reader for `GET /stream`.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

Json = dict[str, Any]
T = TypeVar("T")

# SPEC §4: the topics and the message types each one carries.
TOPIC_TYPES: dict[str, frozenset[str]] = {
    "order.events": frozenset(
        {"order.placed", "order.confirmed", "order.shipped", "order.delivered", "order.rejected", "order.cancelled"}
    ),
    "payment.events": frozenset(
        {"payment.authorized", "payment.declined", "payment.captured", "payment.voided", "payment.refunded"}
    ),
    "shipping.events": frozenset(
        {"shipment.scheduled", "shipment.failed", "shipment.dispatched", "shipment.delivered", "shipment.cancelled"}
    ),
    "payment.commands": frozenset({"payment.authorize", "payment.capture", "payment.void", "payment.refund"}),
    "shipping.commands": frozenset({"shipment.schedule", "shipment.cancel"}),
}
EVENT_TOPICS = ("order.events", "payment.events", "shipping.events")
COMMAND_TOPICS = ("payment.commands", "shipping.commands")
ALL_TOPICS = EVENT_TOPICS + COMMAND_TOPICS

FINAL_ORDER_STATUSES = frozenset({"DELIVERED", "REJECTED", "CANCELLED"})


# ----------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Endpoints:
    """Where the system under test is: base URLs of the four services and the Kafka bootstrap."""

    order: str
    payment: str
    shipping: str
    query: str
    kafka: str

    URL_ENV = {"order": "E2E_ORDER_URL", "payment": "E2E_PAYMENT_URL", "shipping": "E2E_SHIPPING_URL",
               "query": "E2E_QUERY_URL"}
    KAFKA_ENV = "E2E_KAFKA_BOOTSTRAP"

    @classmethod
    def spec_defaults(cls) -> Endpoints:
        """The `make up` addresses of SPEC §2."""
        return cls(
            order="http://127.0.0.1:8001",
            payment="http://127.0.0.1:8002",
            shipping="http://127.0.0.1:8003",
            query="http://127.0.0.1:8004",
            kafka="127.0.0.1:9092",
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_all: bool = True) -> Endpoints | None:
        """E2E_ORDER_URL, E2E_PAYMENT_URL, E2E_SHIPPING_URL, E2E_QUERY_URL, E2E_KAFKA_BOOTSTRAP.

        None when none is set. With `require_all`, a partial set is an error (a test run must
        never fall back to some other stack for the missing ones); without it, missing ones
        take the SPEC defaults (the demo).
        """
        env = os.environ if env is None else env
        names = [*cls.URL_ENV.values(), cls.KAFKA_ENV]
        given = {n: env[n].strip() for n in names if env.get(n, "").strip()}
        if not given:
            return None
        if require_all and len(given) != len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise ValueError(f"set all of {', '.join(names)} to test an external stack (missing: {missing})")
        d = cls.spec_defaults()
        return cls(
            order=given.get("E2E_ORDER_URL", d.order).rstrip("/"),
            payment=given.get("E2E_PAYMENT_URL", d.payment).rstrip("/"),
            shipping=given.get("E2E_SHIPPING_URL", d.shipping).rstrip("/"),
            query=given.get("E2E_QUERY_URL", d.query).rstrip("/"),
            kafka=given.get(cls.KAFKA_ENV, d.kafka),
        )

    def service_urls(self) -> dict[str, str]:
        return {"order": self.order, "payment": self.payment, "shipping": self.shipping, "query": self.query}


# ----------------------------------------------------------------------------- polling


class NotYet(Exception):
    """Raised inside an `eventually` probe to say "not yet" with an explanation."""


class GiveUp(AssertionError):
    """Raised inside an `eventually` probe when waiting longer cannot help: fails at once."""


class UnexpectedFinal(GiveUp):
    """An order reached a final status other than the one waited for."""


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    *,
    what: str = "condition",
    interval: float = 0.05,
    max_interval: float = 0.5,
) -> T:
    """Call `probe` until it returns something other than None/False; bounded by `timeout`.

    The probe may also raise AssertionError or NotYet to mean "not yet"; the last such
    message is in the error raised when the time is up. Intervals grow from `interval` to
    `max_interval` so a quick condition is seen quickly and a slow one is not hammered.
    """
    deadline = time.monotonic() + timeout
    last: str = "never evaluated"
    delay = interval
    while True:
        try:
            value = await probe()
            if value is not None and value is not False:
                return value
            last = f"probe returned {value!r}"
        except GiveUp:
            raise
        except (AssertionError, NotYet) as exc:
            last = str(exc) or type(exc).__name__
        except httpx.TransportError as exc:  # a service restarting: keep polling
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.1f}s (last: {last})")
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, max_interval)


# ----------------------------------------------------------------------------- inputs


def new_customer(tag: str) -> str:
    """A customer id no other test (or earlier run) uses: tests stay independent."""
    return f"e2e-{tag}-{uuid.uuid4().hex[:12]}"


def order_body(
    customer_id: str,
    *,
    payment_token: str = "tok_visa",
    country: str = "FR",
    currency: str = "EUR",
    items: Sequence[Mapping[str, Any]] | None = None,
) -> Json:
    """A valid POST /orders body (SPEC §5); the knobs drive the outcome (SPEC §5 rules)."""
    return {
        "customer_id": customer_id,
        "items": [dict(i) for i in items]
        if items is not None
        else [{"sku": "SKU-BOOK", "quantity": 2, "unit_price_cents": 1250},
              {"sku": "SKU-PEN", "quantity": 1, "unit_price_cents": 300}],
        "currency": currency,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Sq",
            "city": "London" if country == "GB" else "Somewhere",
            "postal_code": "SW1Y 4JH",
            "country": country,
        },
        "payment_token": payment_token,
    }


def total_of(body: Mapping[str, Any]) -> int:
    return sum(int(i["quantity"]) * int(i["unit_price_cents"]) for i in body["items"])


class UnexpectedStatus(AssertionError):
    pass


def expect(resp: httpx.Response, status: int) -> Any:
    """The JSON body of a response that must have `status` (else an error showing the body)."""
    if resp.status_code != status:
        raise UnexpectedStatus(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code} (wanted {status}): {resp.text[:800]}"
        )
    return resp.json()


# ----------------------------------------------------------------------------- HTTP


class SystemClient:
    """The REST API of SPEC §5, one method per endpoint; `async with` to open and close it."""

    def __init__(self, endpoints: Endpoints, *, timeout: float = 15.0) -> None:
        self.endpoints = endpoints
        self.http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> SystemClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---- operations
    async def health(self, service: str) -> httpx.Response:
        return await self.http.get(self.endpoints.service_urls()[service] + "/health", timeout=3.0)

    async def wait_healthy(self, services: Iterable[str] = ("order", "payment", "shipping", "query"),
                           timeout: float = 60.0) -> None:
        for name in services:
            async def ok(name: str = name) -> bool:
                resp = await self.health(name)
                if resp.status_code != 200:
                    raise NotYet(f"{name} /health {resp.status_code}: {resp.text[:200]}")
                return True

            await eventually(ok, timeout, what=f"{name} healthy")

    # ---- order service
    async def place(self, body: Any, *, idempotency_key: str | None = None, request_id: str | None = None,
                    raw: bytes | None = None) -> httpx.Response:
        headers = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        url = self.endpoints.order + "/orders"
        if raw is not None:
            return await self.http.post(url, content=raw, headers={**headers, "Content-Type": "application/json"})
        return await self.http.post(url, json=body, headers=headers)

    async def place_ok(self, body: Json, **kw: Any) -> Json:
        placed: Json = expect(await self.place(body, **kw), 202)
        return placed

    async def order(self, order_id: str, *, as_of_version: int | str | None = None) -> httpx.Response:
        params = {} if as_of_version is None else {"as_of_version": str(as_of_version)}
        return await self.http.get(f"{self.endpoints.order}/orders/{order_id}", params=params)

    async def order_ok(self, order_id: str) -> Json:
        o: Json = expect(await self.order(order_id), 200)
        return o

    async def order_events(self, order_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.order}/orders/{order_id}/events")

    async def cancel(self, order_id: str, *, request_id: str | None = None) -> httpx.Response:
        headers = {"X-Request-ID": request_id} if request_id else {}
        return await self.http.post(f"{self.endpoints.order}/orders/{order_id}/cancel", headers=headers)

    async def saga(self, order_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.order}/sagas/{order_id}")

    # ---- payment service
    async def payment(self, payment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.payment}/payments/{payment_id}")

    async def payments_of(self, order_id: str) -> list[Json]:
        found: list[Json] = expect(
            await self.http.get(f"{self.endpoints.payment}/payments", params={"order_id": order_id}), 200)
        return found

    async def payment_events(self, payment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.payment}/payments/{payment_id}/events")

    # ---- shipping service
    async def shipment(self, shipment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.shipping}/shipments/{shipment_id}")

    async def shipments_of(self, order_id: str) -> list[Json]:
        found: list[Json] = expect(
            await self.http.get(f"{self.endpoints.shipping}/shipments", params={"order_id": order_id}), 200)
        return found

    async def shipment_events(self, shipment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.shipping}/shipments/{shipment_id}/events")

    async def dispatch(self, shipment_id: str, *, request_id: str | None = None) -> httpx.Response:
        headers = {"X-Request-ID": request_id} if request_id else {}
        return await self.http.post(f"{self.endpoints.shipping}/shipments/{shipment_id}/dispatch", headers=headers)

    async def deliver(self, shipment_id: str, *, request_id: str | None = None) -> httpx.Response:
        headers = {"X-Request-ID": request_id} if request_id else {}
        return await self.http.post(f"{self.endpoints.shipping}/shipments/{shipment_id}/deliver", headers=headers)

    # ---- query service
    async def view(self, order_id: str, *, min_version: int | None = None,
                   wait_s: float | None = None) -> httpx.Response:
        params: dict[str, str] = {}
        if min_version is not None:
            params["min_version"] = str(min_version)
        if wait_s is not None:
            params["wait_s"] = str(wait_s)
        return await self.http.get(f"{self.endpoints.query}/orders/{order_id}", params=params)

    async def views(self, **params: Any) -> httpx.Response:
        clean = {k: str(v) for k, v in params.items() if v is not None}
        return await self.http.get(f"{self.endpoints.query}/orders", params=clean)

    async def timeline(self, order_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.query}/orders/{order_id}/timeline")

    async def stats(self) -> Json:
        s: Json = expect(await self.http.get(f"{self.endpoints.query}/stats"), 200)
        return s

    async def rebuild(self) -> httpx.Response:
        return await self.http.post(f"{self.endpoints.query}/admin/rebuild")

    async def rebuild_status(self, rebuild_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.query}/admin/rebuild/{rebuild_id}")

    # ---- waiting (bounded polling)
    async def wait_order(self, order_id: str, statuses: Iterable[str], timeout: float = 30.0) -> Json:
        """The write-side order once its status is one of `statuses`."""
        wanted = frozenset(statuses)
        seen: list[str] = []

        async def probe() -> Json | None:
            o = await self.order_ok(order_id)
            if not seen or seen[-1] != o["status"]:
                seen.append(o["status"])
            if o["status"] in wanted:
                return o
            if o["status"] in FINAL_ORDER_STATUSES:  # final and not wanted: fail now, not at timeout
                raise UnexpectedFinal(f"order {order_id} ended {o['status']} ({o.get('reason')}), "
                                      f"wanted {sorted(wanted)}")
            raise NotYet(f"order {order_id} is {o['status']} (seen {seen})")

        return await eventually(probe, timeout, what=f"order {order_id} in {sorted(wanted)}")

    async def wait_payment(self, order_id: str, status: str, timeout: float = 30.0) -> Json:
        async def probe() -> Json | None:
            ps = await self.payments_of(order_id)
            if len(ps) == 1 and ps[0]["status"] == status:
                return ps[0]
            raise NotYet(f"payments of {order_id}: {[(p['status'], p.get('reason')) for p in ps]}")

        return await eventually(probe, timeout, what=f"payment of {order_id} {status}")

    async def wait_shipment(self, order_id: str, status: str, timeout: float = 30.0) -> Json:
        async def probe() -> Json | None:
            ss = await self.shipments_of(order_id)
            if len(ss) == 1 and ss[0]["status"] == status:
                return ss[0]
            raise NotYet(f"shipments of {order_id}: {[(s['status'], s.get('reason')) for s in ss]}")

        return await eventually(probe, timeout, what=f"shipment of {order_id} {status}")

    async def wait_view(self, order_id: str, check: Callable[[Json], bool] | None = None,
                        timeout: float = 30.0, what: str = "") -> Json:
        """The query-side view of the order once `check(view)` holds (default: it exists)."""
        async def probe() -> Json | None:
            resp = await self.view(order_id)
            if resp.status_code == 404:
                raise NotYet(f"view of {order_id} not there yet")
            v: Json = expect(resp, 200)
            if check is None or check(v):
                return v
            raise NotYet(f"view of {order_id}: status={v.get('status')} payment={v.get('payment_status')} "
                         f"shipment={v.get('shipment_status')} version={v.get('version')}")

        return await eventually(probe, timeout, what=what or f"view of order {order_id}")

    async def wait_view_matches_write_side(self, order_id: str, timeout: float = 30.0) -> Json:
        """Read-your-writes: the view has applied the write side's current order version."""
        o = await self.order_ok(order_id)
        return await self.wait_view(
            order_id, lambda v: v["version"] >= o["version"] and v["status"] == o["status"], timeout,
            what=f"view of {order_id} at version {o['version']} {o['status']}")

    async def wait_timeline(self, order_id: str, types: Iterable[str], timeout: float = 30.0) -> Json:
        """The timeline once it holds (at least) every type in `types`."""
        wanted = list(types)

        async def probe() -> Json | None:
            resp = await self.timeline(order_id)
            if resp.status_code == 404:
                raise NotYet("no timeline yet")
            t: Json = expect(resp, 200)
            have = [e["type"] for e in t["events"]]
            missing = [w for w in wanted if w not in have]
            if missing:
                raise NotYet(f"timeline has {have}, missing {missing}")
            return t

        return await eventually(probe, timeout, what=f"timeline of {order_id}")

    # ---- a whole journey
    async def place_and_confirm(self, body: Json, timeout: float = 30.0) -> tuple[Json, Json]:
        """Place an order and wait until CONFIRMED; (the 202 answer, the confirmed order)."""
        placed = await self.place_ok(body)
        return placed, await self.wait_order(placed["order_id"], {"CONFIRMED"}, timeout)

    async def ship_and_deliver(self, order_id: str, timeout: float = 30.0) -> Json:
        """Dispatch and deliver the order's shipment via the shipping API; the DELIVERED order."""
        shipment = await self.wait_shipment(order_id, "SCHEDULED", timeout)
        expect(await self.dispatch(shipment["shipment_id"]), 200)
        await self.wait_order(order_id, {"SHIPPED"}, timeout)
        expect(await self.deliver(shipment["shipment_id"]), 200)
        return await self.wait_order(order_id, {"DELIVERED"}, timeout)


# ----------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class TapMessage:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: Json

    @property
    def type(self) -> str:
        return str(self.value.get("type"))

    @property
    def correlation_id(self) -> str | None:
        c = self.value.get("correlationid")
        return str(c) if c is not None else None


@dataclass
class KafkaTap:
    """Reads the topics from the offsets they had at `start()`: only what happens afterwards.

    No consumer group (manual assignment, no commits), so it never moves anyone's offsets,
    and it costs nothing on a stack that already holds millions of messages.
    """

    bootstrap: str
    topics: Sequence[str] = ALL_TOPICS
    messages: list[TapMessage] = field(default_factory=list)
    _consumer: Any = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = await self._partitions()
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, ends[tp])
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def _partitions(self) -> list[TopicPartition]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(self.topics))
        finally:
            await admin.close()
        found = {t["topic"]: t for t in described if t.get("error_code", 0) == 0}
        missing = [t for t in self.topics if t not in found]
        if missing:
            raise AssertionError(f"topics missing on {self.bootstrap}: {missing}")
        return [TopicPartition(t, p["partition"]) for t in self.topics
                for p in sorted(found[t]["partitions"], key=lambda p: int(p["partition"]))]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> KafkaTap:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        """Fetch what is there now (waiting up to timeout_ms); the number of new messages."""
        assert self._consumer is not None, "KafkaTap not started"
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        n = 0
        for tp, records in batches.items():
            for r in records:
                try:
                    value = json.loads(r.value)
                except (TypeError, ValueError):
                    value = {"_unparseable": repr(r.value)[:200]}
                key = r.key.decode() if isinstance(r.key, bytes) else r.key
                self.messages.append(TapMessage(tp.topic, tp.partition, r.offset, key, value))
                n += 1
        return n

    def of_order(self, order_id: str) -> list[TapMessage]:
        return [m for m in self.messages if m.correlation_id == order_id]

    async def wait_for(self, check: Callable[[list[TapMessage]], bool], timeout: float = 30.0,
                       what: str = "messages") -> list[TapMessage]:
        """Keep reading until `check(all messages seen so far)` holds."""
        async def probe() -> list[TapMessage] | None:
            await self.poll(200)
            if check(self.messages):
                return self.messages
            raise NotYet(f"{len(self.messages)} messages so far: {[m.type for m in self.messages][-30:]}")

        return await eventually(probe, timeout, what=what, interval=0.0, max_interval=0.0)

    async def wait_types(self, order_id: str, types: Iterable[str], timeout: float = 30.0) -> list[TapMessage]:
        """Read until the order's messages include every type in `types`; the order's messages."""
        wanted = set(types)
        await self.wait_for(lambda ms: wanted <= {m.type for m in ms if m.correlation_id == order_id},
                            timeout, what=f"{sorted(wanted)} of {order_id} on Kafka")
        return self.of_order(order_id)


# ----------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    data: str

    def json(self) -> Json:
        d: Json = json.loads(self.data)
        return d


class SseStream:
    """The events of one open `GET /stream` (read by a background task into a queue)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[SseEvent | None] = asyncio.Queue()
        self.comments = 0
        self.opened = asyncio.Event()  # the server sent its first bytes (its start position is fixed)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event_id: str | None = None
        data: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                self.opened.set()
                if line == "":
                    if data:
                        await self.queue.put(SseEvent(event_id, "\n".join(data)))
                    event_id, data = None, []
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "id":
                        event_id = value
                    elif name == "data":
                        data.append(value)
        finally:
            self.opened.set()
            await self.queue.put(None)  # end of stream

    async def next(self, timeout: float) -> SseEvent | None:
        """The next event, or None if none came within `timeout` or the stream ended."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def collect(self, until: Callable[[list[SseEvent]], bool], timeout: float) -> list[SseEvent]:
        """Events until `until(events)` holds or `timeout` passes (then whatever came)."""
        got: list[SseEvent] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ev = await self.next(left)
            if ev is None:
                break
            got.append(ev)
        return got

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass


@asynccontextmanager
async def sse(endpoints: Endpoints, *, order_id: str | None = None,
              last_event_id: str | None = None) -> AsyncIterator[SseStream]:
    """Open `GET /stream` (optionally filtered, optionally resuming) for the `async with` body."""
    params = {"order_id": order_id} if order_id else {}
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
        async with http.stream("GET", endpoints.query + "/stream", params=params, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise UnexpectedStatus(f"GET /stream -> {resp.status_code}: {resp.text[:300]}")
            stream = SseStream(resp)
            try:
                # The stream's start position is fixed once the server sent its first line
                # (`retry:`): only then is "what happens after connecting" well defined.
                await asyncio.wait_for(stream.opened.wait(), 15.0)
                yield stream
            finally:
                await stream.close()


# ----------------------------------------------------------------------------- checks


def fields_named(body: Any) -> list[str]:
    """The input fields a 422 body names: FastAPI's `detail[].loc` paths (as `a.b.0.c`, without
    the leading `body`/`query`/`header`) and a domain refusal's `field`."""
    out: list[str] = []
    if isinstance(body, dict):
        if isinstance(body.get("field"), str):
            out.append(body["field"])
        detail = body.get("detail")
        if isinstance(detail, list):
            for d in detail:
                loc = d.get("loc") if isinstance(d, dict) else None
                if isinstance(loc, list):
                    parts = [str(p) for p in loc]
                    if parts and parts[0] in ("body", "query", "header", "path") and len(parts) > 1:
                        parts = parts[1:]
                    out.append(".".join(parts))
    return out

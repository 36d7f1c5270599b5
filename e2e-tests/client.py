"""A small black-box client of the running system: HTTP (httpx) only; Kafka is in `streams.py`.

It imports nothing from `services/`, `shared/` or `infra/`: it knows the system only by its
published contract (docs/EVENTS.md, docs/API.md, docs/schemas/), so the end-to-end tests and the
demo see exactly what any other client would. Used by `conftest.py`, the `test_*.py` modules and
`demo.py`.

Pieces:
* `Endpoints`: the four base URLs and the Kafka bootstrap address.
* `TokenMaker` / `ActingAuth`: bearer tokens (docs/API.md, "Authorization"). conftest.py hands
  the client a token maker; by default a request acts as the customer its `POST /orders` body
  names and as an admin otherwise; `token=` on a method (or an explicit `Authorization` header)
  acts as anyone, `token=""` as nobody.
* `SystemClient`: one method per REST endpoint (raw `httpx.Response`), plus `wait_*` helpers
  that poll with a bound (never a fixed sleep used as synchronisation).
* `eventually(fn, timeout)`: the one polling primitive.
* The topics and message types as docs/EVENTS.md lists them (`TOPIC_TYPES`, `SCHEMA_VERSIONS`).

One module of ~450 lines on purpose: it is one job, the REST API as a client sees it (an
endpoint per method and the bounded waits built on them).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx

Json = dict[str, Any]
T = TypeVar("T")

# docs/EVENTS.md: the topics and the message types each one carries.
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
DLQ_TOPICS = tuple(f"{t}.dlq" for t in ALL_TOPICS)
# The schema version each message type is written in now (docs/schemas/<type>.v<N>.json);
# every type not named here is at version 1. Payment facts carry `amount: {amount_cents, currency}`.
SCHEMA_VERSIONS: dict[str, int] = {
    "payment.authorize": 2,
    "payment.authorized": 3,
    "payment.declined": 3,
    "payment.captured": 2,
    "payment.voided": 2,
    "payment.refunded": 2,
    # v2: the address's personal fields sealed (docs/CONTRACT.md, "Personal data") and, for the
    # shipping messages, the order's customer_id added.
    "order.placed": 2,
    "shipment.schedule": 2,
    "shipment.scheduled": 2,
    "shipment.failed": 2,
}


def schema_version(message_type: str) -> int:
    return SCHEMA_VERSIONS.get(message_type, 1)


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

    URL_ENV = {
        "order": "E2E_ORDER_URL",
        "payment": "E2E_PAYMENT_URL",
        "shipping": "E2E_SHIPPING_URL",
        "query": "E2E_QUERY_URL",
    }
    KAFKA_ENV = "E2E_KAFKA_BOOTSTRAP"

    @classmethod
    def make_up_defaults(cls) -> Endpoints:
        """The `make up` addresses (README)."""
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
        take the `make up` defaults (the demo).
        """
        env = os.environ if env is None else env
        names = [*cls.URL_ENV.values(), cls.KAFKA_ENV]
        given = {n: env[n].strip() for n in names if env.get(n, "").strip()}
        if not given:
            return None
        if require_all and len(given) != len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise ValueError(f"set all of {', '.join(names)} to test an external stack (missing: {missing})")
        d = cls.make_up_defaults()
        return cls(
            order=given.get("E2E_ORDER_URL", d.order).rstrip("/"),
            payment=given.get("E2E_PAYMENT_URL", d.payment).rstrip("/"),
            shipping=given.get("E2E_SHIPPING_URL", d.shipping).rstrip("/"),
            query=given.get("E2E_QUERY_URL", d.query).rstrip("/"),
            kafka=given.get(cls.KAFKA_ENV, d.kafka),
        )

    def service_urls(self) -> dict[str, str]:
        return {"order": self.order, "payment": self.payment, "shipping": self.shipping, "query": self.query}


# ----------------------------------------------------------------------------- tokens

#: `make(role, customer_id)` → a bearer token: role "customer" (with its customer id), "staff"
#: or "admin" (customer_id None).
TokenMaker = Callable[[str, "str | None"], str]
#: The customer a `POST /orders` acts as when its body names none (invalid input: still a customer).
NO_CUSTOMER = "e2e-no-customer"


class ActingAuth(httpx.Auth):
    """Bearer tokens for requests that bring none: `POST /orders` as the customer its body names
    (placing is a customer's act), everything else as an admin. Tokens are made once each.
    (The project's own tools use the same rule from infra/tokens.py; this client is black-box
    and imports nothing of the project, so it states the rule again.)"""

    def __init__(self, tokens: TokenMaker) -> None:
        self.tokens = tokens
        self._cache: dict[tuple[str, str | None], str] = {}

    def token(self, role: str, customer_id: str | None = None) -> str:
        key = (role, customer_id)
        if key not in self._cache:
            self._cache[key] = self.tokens(role, customer_id)
        return self._cache[key]

    def auth_flow(self, request: httpx.Request) -> Any:
        if "authorization" not in request.headers:
            if request.method == "POST" and request.url.path == "/orders":
                token = self.token("customer", customer_of(_body_of(request)))
            else:
                token = self.token("admin")
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _body_of(request: httpx.Request) -> bytes:
    """The request's body, or b"" while it is still a stream (a streamed body is not read here)."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return b""


def customer_of(content: bytes) -> str:
    """The `customer_id` a POST /orders body names (NO_CUSTOMER if it names no usable one)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return NO_CUSTOMER
    customer = body.get("customer_id") if isinstance(body, dict) else None
    usable = isinstance(customer, str) and 0 < len(customer) <= 200  # longer: a header too big
    return customer if usable and isinstance(customer, str) else NO_CUSTOMER


def bearer(token: str | None) -> dict[str, str]:
    """Headers for `token`: None = the client's default identity, "" = no Authorization at all."""
    if token is None:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}


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
    """A valid POST /orders body (docs/API.md); the knobs drive the outcome (README: outcomes)."""
    return {
        "customer_id": customer_id,
        "items": [dict(i) for i in items]
        if items is not None
        else [
            {"sku": "SKU-BOOK", "quantity": 2, "unit_price_cents": 1250},
            {"sku": "SKU-PEN", "quantity": 1, "unit_price_cents": 300},
        ],
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
    """The REST API (docs/API.md), one method per endpoint; `async with` to open and close it."""

    def __init__(self, endpoints: Endpoints, tokens: TokenMaker, *, timeout: float = 15.0) -> None:
        self.endpoints = endpoints
        self.auth = ActingAuth(tokens)
        self.http = httpx.AsyncClient(timeout=timeout, auth=self.auth)

    def token(self, role: str, customer_id: str | None = None) -> str:
        """A bearer token of `role` (customers: of `customer_id`), made once and reused."""
        return self.auth.token(role, customer_id)

    async def __aenter__(self) -> SystemClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---- operations
    async def health(self, service: str) -> httpx.Response:
        return await self.http.get(self.endpoints.service_urls()[service] + "/health", timeout=3.0)

    async def wait_healthy(
        self, services: Iterable[str] = ("order", "payment", "shipping", "query"), timeout: float = 60.0
    ) -> None:
        for name in services:

            async def ok(name: str = name) -> bool:
                resp = await self.health(name)
                if resp.status_code != 200:
                    raise NotYet(f"{name} /health {resp.status_code}: {resp.text[:200]}")
                return True

            await eventually(ok, timeout, what=f"{name} healthy")

    # ---- order service
    async def place(
        self,
        body: Any,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        headers = bearer(token)
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

    async def erase_personal_data(self, customer_id: str) -> httpx.Response:
        return await self.http.delete(f"{self.endpoints.order}/customers/{customer_id}/personal-data")

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
            await self.http.get(f"{self.endpoints.payment}/payments", params={"order_id": order_id}), 200
        )
        return found

    async def payment_events(self, payment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.payment}/payments/{payment_id}/events")

    # ---- shipping service
    async def shipment(self, shipment_id: str) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.shipping}/shipments/{shipment_id}")

    async def shipments_of(self, order_id: str) -> list[Json]:
        found: list[Json] = expect(
            await self.http.get(f"{self.endpoints.shipping}/shipments", params={"order_id": order_id}), 200
        )
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
    async def view(
        self, order_id: str, *, min_version: int | None = None, wait_s: float | None = None
    ) -> httpx.Response:
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

    async def consumers(self) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.query}/admin/consumers")

    async def dead_letters(self) -> httpx.Response:
        return await self.http.get(f"{self.endpoints.query}/admin/dlq")

    async def replay_dead_letter(self, topic: str, message_id: str, *, token: str | None = None) -> httpx.Response:
        body = {"topic": topic, "id": message_id}
        return await self.http.post(f"{self.endpoints.query}/admin/dlq/replay", json=body, headers=bearer(token))

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
                raise UnexpectedFinal(
                    f"order {order_id} ended {o['status']} ({o.get('reason')}), wanted {sorted(wanted)}"
                )
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

    async def wait_view(
        self, order_id: str, check: Callable[[Json], bool] | None = None, timeout: float = 30.0, what: str = ""
    ) -> Json:
        """The query-side view of the order once `check(view)` holds (default: it exists)."""

        async def probe() -> Json | None:
            resp = await self.view(order_id)
            if resp.status_code == 404:
                raise NotYet(f"view of {order_id} not there yet")
            v: Json = expect(resp, 200)
            if check is None or check(v):
                return v
            raise NotYet(
                f"view of {order_id}: status={v.get('status')} payment={v.get('payment_status')} "
                f"shipment={v.get('shipment_status')} version={v.get('version')}"
            )

        return await eventually(probe, timeout, what=what or f"view of order {order_id}")

    async def wait_view_matches_write_side(self, order_id: str, timeout: float = 30.0) -> Json:
        """Read-your-writes: the view has applied the write side's current order version."""
        o = await self.order_ok(order_id)
        return await self.wait_view(
            order_id,
            lambda v: v["version"] >= o["version"] and v["status"] == o["status"],
            timeout,
            what=f"view of {order_id} at version {o['version']} {o['status']}",
        )

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

"""`make demo`: a guided tour of the running system (the stack of `make up`).

It places orders that walk through the saga's journeys (README) and prints, as they unfold, the
facts every service records about each order (the query service's timeline), with a short
explanation of each one:

1. the happy path, up to delivery (dispatch and deliver through the shipping API),
2. a card decline,
3. a shipping failure, compensated by voiding the payment,
4. a customer cancel after the money was captured, compensated by a refund.

It talks HTTP only, like any client, and imports nothing from the services. Addresses: the
`make up` defaults (127.0.0.1:8001-8004), or `ORDER_PORT`/`PAYMENT_PORT`/`SHIPPING_PORT`/`QUERY_PORT`
as given to `make up`, or full base URLs in `E2E_ORDER_URL`, `E2E_PAYMENT_URL`,
`E2E_SHIPPING_URL`, `E2E_QUERY_URL`. Exit status: 0 done, 2 the stack is not up, 1 a step
did not happen as the tour expected.

    python e2e-tests/demo.py [--fast] [--no-color]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from client import Endpoints, Json, SystemClient, expect, order_body, total_of

SERVICES = ("order", "payment", "shipping", "query")

# What each fact means for the reader of the tour.
EXPLAIN: dict[str, str] = {
    "order.placed": "the order service recorded the order; its saga sends payment.authorize",
    "payment.authorized": "payment reserved the money; the saga sends shipment.schedule",
    "payment.declined": "payment refused it ({reason}); nothing was reserved, nothing to undo",
    "shipment.scheduled": "shipping booked a carrier; the saga sends payment.capture",
    "shipment.failed": "shipping cannot go there ({reason}); the saga compensates: payment.void",
    "payment.captured": "the money is taken; the saga confirms the order",
    "payment.voided": "compensation: the reserved money is released ({reason})",
    "payment.refunded": "compensation: the captured money went back to the customer ({reason})",
    "order.confirmed": "paid and scheduled: the order is CONFIRMED",
    "shipment.dispatched": "the warehouse handed the goods to the carrier (POST .../dispatch)",
    "order.shipped": "the saga learnt it from shipping: the order is SHIPPED",
    "shipment.delivered": "the carrier delivered (POST .../deliver)",
    "order.delivered": "final: DELIVERED",
    "order.rejected": "final: REJECTED ({reason})",
    "order.cancelled": "final: CANCELLED ({reason})",
    "shipment.cancelled": "compensation: the shipment is called off ({reason})",
}


def _money(data: Json) -> str:
    """The amount a fact names: a payment fact's `amount` (schema version 2: one Money value),
    or an order's total; "" when it names none."""
    amount = data.get("amount")
    if isinstance(amount, dict):
        cents, currency = amount.get("amount_cents"), amount.get("currency", "")
    else:
        cents, currency = data.get("amount_cents", data.get("total_cents")), data.get("currency", "")
    return f" {cents / 100:,.2f} {currency}" if isinstance(cents, int) else ""


@dataclass
class Style:
    color: bool

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, t: str) -> str:
        return self._c("1;36", t)

    def good(self, t: str) -> str:
        return self._c("32", t)

    def bad(self, t: str) -> str:
        return self._c("31", t)

    def dim(self, t: str) -> str:
        return self._c("2", t)

    def fact(self, t: str) -> str:
        return self._c("1", t)


class TourFailed(Exception):
    pass


def cli_tokens(role: str, customer_id: str | None) -> str:
    """A token from `python -m infra token` (the documented CLI, signing with `make up`'s key)."""
    who = ["--customer", customer_id] if role == "customer" and customer_id else ["--role", role]
    out = subprocess.run(
        [sys.executable, "-m", "infra", "token", *who], check=True, capture_output=True, text=True
    ).stdout
    return out.strip().splitlines()[-1]


def endpoints_from_env() -> Endpoints:
    given = Endpoints.from_env(require_all=False)
    if given is not None:
        return given
    port = {s: os.environ.get(f"{s.upper()}_PORT", str(p)) for s, p in zip(SERVICES, (8001, 8002, 8003, 8004))}
    kafka = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    return Endpoints(
        order=f"http://127.0.0.1:{port['order']}",
        payment=f"http://127.0.0.1:{port['payment']}",
        shipping=f"http://127.0.0.1:{port['shipping']}",
        query=f"http://127.0.0.1:{port['query']}",
        kafka=kafka,
    )


@dataclass
class Tour:
    client: SystemClient
    style: Style
    pause_s: float
    timeout_s: float = 30.0
    shown: dict[str, set[str]] = field(default_factory=dict)  # order id -> fact ids printed
    started: dict[str, datetime] = field(default_factory=dict)  # order id -> time of order.placed

    # ---- printing
    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def step(self, text: str) -> None:
        self.say(f"  {text}")

    def note(self, text: str) -> None:
        self.say(self.style.dim(f"  {text}"))

    async def breathe(self) -> None:
        if self.pause_s:
            await asyncio.sleep(self.pause_s)  # only so a human can read along; never to synchronise

    def _print_fact(self, order_id: str, e: Json) -> None:
        t = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00"))
        t0 = self.started.setdefault(order_id, t)
        data = e.get("data") or {}
        service = str(e["source"]).rsplit("/", 1)[-1]
        explain = EXPLAIN.get(e["type"], "").format(reason=data.get("reason", "?"))
        money = _money(data)
        offset = self.style.dim(f"{'+' + format((t - t0).total_seconds(), '.3f') + 's':>8}")
        fact = self.style.fact(f"{e['type']:<20}")
        self.say(f"    {offset}  {service:<8} {fact} v{e['sequence']:<2}{money:>14}  {self.style.dim(explain)}")

    async def follow(self, order_id: str, until: str, *, what: str) -> Json:
        """Print the order's timeline as it grows, until the fact `until` is in it."""
        seen = self.shown.setdefault(order_id, set())
        deadline = time.monotonic() + self.timeout_s
        while True:
            resp = await self.client.timeline(order_id)
            if resp.status_code == 200:
                timeline: Json = resp.json()
                for e in timeline["events"]:
                    if e["id"] not in seen:
                        seen.add(e["id"])
                        self._print_fact(order_id, e)
                if any(e["type"] == until for e in timeline["events"]):
                    return timeline
            elif resp.status_code != 404:
                raise TourFailed(f"GET /orders/{order_id}/timeline -> {resp.status_code}: {resp.text[:200]}")
            if time.monotonic() > deadline:
                raise TourFailed(f"{what}: no {until} within {self.timeout_s:.0f}s")
            await asyncio.sleep(0.2)

    async def place(self, body: Json, label: str) -> str:
        resp = await self.client.place(body, idempotency_key=f"demo-{uuid.uuid4()}")
        placed = expect(resp, 202)
        lines = ", ".join(f"{i['quantity']} x {i['sku']} @ {i['unit_price_cents'] / 100:.2f}" for i in body["items"])
        self.step(
            f"POST /orders  {label}: {lines} {body['currency']}, to {body['shipping_address']['country']}, "
            f"token {body['payment_token']}"
        )
        self.step(
            f"-> 202 {placed['status']}  order {placed['order_id']}  total "
            f"{placed['total_cents'] / 100:,.2f} {body['currency']}"
        )
        self.note("the answer comes before anything else happens: the rest is driven by facts on Kafka")
        return str(placed["order_id"])

    async def show_state(self, order_id: str) -> Json:
        order = await self.client.order_ok(order_id)
        view = await self.client.wait_view(order_id, lambda v: v["version"] >= order["version"], self.timeout_s)
        reason = f" ({order['reason']})" if order.get("reason") else ""
        self.step(f"order service  GET /orders/{{id}}        -> {order['status']}{reason}, version {order['version']}")
        self.step(
            f"query service  GET /orders/{{id}}        -> {view['status']}, payment {view['payment_status'] or '-'}, "
            f"shipment {view['shipment_status'] or '-'} (read model, fed only from Kafka)"
        )
        return order

    # ---- the journeys
    async def happy_path(self) -> str:
        self.say(self.style.title("\n1. The happy path: placed -> confirmed -> shipped -> delivered"))
        body = order_body(f"demo-{uuid.uuid4().hex[:8]}")
        order_id = await self.place(body, "a book and a pen")
        await self.follow(order_id, "order.confirmed", what="confirmation")
        await self.breathe()
        order = await self.client.order_ok(order_id)
        shipment_id = order["shipment_id"]
        self.step(f"POST /shipments/{shipment_id}/dispatch   (the warehouse hands the parcel over)")
        expect(await self.client.dispatch(shipment_id), 200)
        await self.follow(order_id, "order.shipped", what="shipping")
        await self.breathe()
        self.step(f"POST /shipments/{shipment_id}/deliver    (the carrier delivers)")
        expect(await self.client.deliver(shipment_id), 200)
        await self.follow(order_id, "order.delivered", what="delivery")
        final = await self.show_state(order_id)
        history = []
        for v in range(1, final["version"] + 1):
            past = expect(await self.client.order(order_id, as_of_version=v), 200)
            history.append(f"v{v} {past['status']}")
        self.step(f"time travel    GET /orders/{{id}}?as_of_version=N -> {', '.join(history)}")
        self.note("the state is never stored: it is folded from the order's facts, up to any version")
        return order_id

    async def card_decline(self) -> str:
        self.say(self.style.title("\n2. A card decline: the payment service says no"))
        order_id = await self.place(
            order_body(f"demo-{uuid.uuid4().hex[:8]}", payment_token="tok_decline"),
            "same basket, a card that is declined",
        )
        await self.follow(order_id, "order.rejected", what="rejection")
        await self.show_state(order_id)
        self.note("no shipment was ever asked for: the saga stops at the first refusal")
        return order_id

    async def shipping_failure(self) -> str:
        self.say(self.style.title("\n3. A shipping failure, compensated: the money is released"))
        order_id = await self.place(
            order_body(f"demo-{uuid.uuid4().hex[:8]}", country="AQ"), "to Antarctica, where no carrier goes"
        )
        await self.follow(order_id, "order.cancelled", what="compensation")
        await self.show_state(order_id)
        self.note("the payment had been authorized; the saga undid it (payment.void) before cancelling")
        return order_id

    async def customer_cancel(self) -> str:
        self.say(self.style.title("\n4. The customer cancels after paying: refund and call off the shipment"))
        body = order_body(
            f"demo-{uuid.uuid4().hex[:8]}", items=[{"sku": "SKU-LAMP", "quantity": 1, "unit_price_cents": 8900}]
        )
        order_id = await self.place(body, "a lamp")
        await self.follow(order_id, "order.confirmed", what="confirmation")
        await self.breathe()
        resp = await self.client.cancel(order_id)
        accepted = expect(resp, 202)
        self.step(
            f"POST /orders/{{id}}/cancel -> 202 (order still {accepted['status']}: "
            "it is CANCELLED once the compensations are confirmed)"
        )
        await self.follow(order_id, "order.cancelled", what="cancellation")
        await self.show_state(order_id)
        self.note(f"{total_of(body) / 100:.2f} EUR were captured, then refunded; once shipped, cancel answers 409")
        return order_id

    async def summary(self, order_ids: list[str]) -> None:
        self.say(self.style.title("\nWhat the query service knows now"))
        stats = await self.client.stats()
        by_status = ", ".join(f"{k} {v}" for k, v in stats["orders_by_status"].items() if v)
        self.step(f"GET /stats -> {stats['orders_total']} orders: {by_status}")
        for currency, money in stats["revenue_by_currency"].items():
            self.step(
                f"             revenue {currency}: captured {money['captured_cents'] / 100:,.2f} - refunded "
                f"{money['refunded_cents'] / 100:,.2f} = {money['revenue_cents'] / 100:,.2f}"
            )
        ep = self.client.endpoints
        self.say("\nLook further (every call but /health needs a bearer token):")
        self.step("TOKEN=$(python -m infra token --role staff | tail -1)")
        auth = '-H "Authorization: Bearer $TOKEN"'
        self.step(f"curl -s {auth} {ep.order}/sagas/{order_ids[2]}   # the saga's steps for the compensated order")
        self.step(f"curl -sN {auth} '{ep.query}/stream?order_id={order_ids[0]}&last_event_id=0'   # its facts as SSE")
        self.step('make watch ARGS="--order <id> --from-beginning"   # the same flow as raw Kafka messages')


async def check_up(client: SystemClient) -> list[str]:
    """The services that do not answer GET /health with 200."""
    down = []
    for name in SERVICES:
        try:
            resp = await client.health(name)
            if resp.status_code != 200:
                down.append(f"{name} ({client.endpoints.service_urls()[name]}: /health {resp.status_code})")
        except httpx.HTTPError as exc:
            down.append(f"{name} ({client.endpoints.service_urls()[name]}: {type(exc).__name__})")
    return down


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A guided tour of the running system (run `make up` first).")
    parser.add_argument("--fast", action="store_true", help="no reading pauses between steps")
    parser.add_argument("--no-color", action="store_true", help="plain output")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step (default 30)")
    args = parser.parse_args(argv)
    style = Style(color=sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    endpoints = endpoints_from_env()
    async with SystemClient(endpoints, cli_tokens, timeout=10.0) as client:
        down = await check_up(client)
        if down:
            print(
                f"make demo: the stack is not up: {'; '.join(down)}\n"
                "run `make up` first (or point E2E_ORDER_URL, ... / ORDER_PORT, ... at your stack)",
                file=sys.stderr,
            )
            return 2
        print(style.title("events-first: a guided tour"))
        print(
            f"  order {endpoints.order} · payment {endpoints.payment} · shipping {endpoints.shipping} · "
            f"query {endpoints.query}"
        )
        print(
            style.dim(
                "  Each order is followed through the query service's timeline (GET /orders/{id}/timeline):\n"
                "  every fact of every service about it, in causal order. Columns: time since the order\n"
                "  was placed, service, fact, version in its own stream, amount, what it means."
            )
        )
        tour = Tour(client, style, pause_s=0.0 if args.fast else 0.8, timeout_s=args.timeout)
        try:
            ids = [
                await tour.happy_path(),
                await tour.card_decline(),
                await tour.shipping_failure(),
                await tour.customer_cancel(),
            ]
            await tour.summary(ids)
        except (TourFailed, AssertionError, httpx.HTTPError) as exc:
            print(style.bad(f"\nmake demo: the tour stopped: {exc}"), file=sys.stderr)
            print("check `make ps` and `make logs`", file=sys.stderr)
            return 1
    print(style.good("\nDone."))
    return 0


def run() -> Any:
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run())

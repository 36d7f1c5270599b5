"""A small open-loop order generator: a fixed rate of POST /orders with a mix of outcomes.

Open loop: request i is sent at `start + i / rate` whether or not earlier ones were answered,
so a slow or dead service does not slow the offered load down (a closed loop would hide the
fault by waiting). Each request gets its own Idempotency-Key, so a retry (`retries > 0`)
can never place a second order.

Mix (default 90 % happy, 5 % declined card, 5 % unserved destination `AQ`), and optionally a
share of the accepted orders that the customer cancels shortly after placing them.

`python -m reliability.load --url http://127.0.0.1:8001 --rate 50 --duration 10` prints a
summary; `reliability.chaos` drives it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.tokens import ActingAuth, stack_auth
from shared.auth import Role

KINDS = ("happy", "decline", "unserved")


@dataclass(frozen=True)
class Mix:
    """Shares of the three outcomes the input drives; normalised when drawn."""

    happy: float = 0.90
    decline: float = 0.05
    unserved: float = 0.05

    def draw(self, rng: random.Random) -> str:
        return rng.choices(KINDS, weights=(self.happy, self.decline, self.unserved))[0]

    @classmethod
    def parse(cls, text: str) -> Mix:
        """'90,5,5' → Mix(0.9, 0.05, 0.05)."""
        parts = [float(p) for p in text.split(",")]
        if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
            raise ValueError("mix is three non-negative numbers: happy,decline,unserved")
        return cls(*parts)


def order_body(kind: str, seq: int, rng: random.Random, customer_prefix: str = "load") -> dict[str, Any]:
    """A valid POST /orders body whose outcome is driven by `kind`."""
    items = [
        {"sku": f"SKU-{rng.randint(1, 40)}", "quantity": rng.randint(1, 3), "unit_price_cents": rng.randint(100, 5000)}
        for _ in range(rng.randint(1, 3))
    ]
    return {
        "customer_id": f"{customer_prefix}-{seq % 50}",
        "items": items,
        "currency": "EUR",
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": f"{seq} Main St",
            "city": "Paris",
            "postal_code": "75001",
            "country": "AQ" if kind == "unserved" else rng.choice(("FR", "DE", "GB")),
        },
        "payment_token": "tok_decline" if kind == "decline" else "tok_visa",
    }


@dataclass
class Attempt:
    """One POST /orders (with its retries) as the client saw it."""

    seq: int
    kind: str
    url: str
    idempotency_key: str
    scheduled_at: float  # monotonic
    sent_at: float = 0.0
    finished_at: float = 0.0
    wall_time: float = 0.0
    status: int | None = None
    order_id: str | None = None
    error: str | None = None
    tries: int = 0
    cancel_status: int | None = None

    @property
    def placed(self) -> bool:
        return self.status == 202 and self.order_id is not None

    @property
    def latency_s(self) -> float:
        return max(self.finished_at - self.sent_at, 0.0)


@dataclass
class LoadResult:
    attempts: list[Attempt] = field(default_factory=list)
    skipped: int = 0  # not sent: the generator's own in-flight cap was reached
    duration_s: float = 0.0

    @property
    def placed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.placed]

    def placed_ids(self) -> list[str]:
        return [a.order_id for a in self.attempts if a.placed and a.order_id is not None]

    def summary(self) -> dict[str, Any]:
        outcomes = Counter(str(a.status) if a.status is not None else f"error:{a.error}" for a in self.attempts)
        latencies = sorted(a.latency_s for a in self.attempts if a.placed)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 4)

        return {
            "sent": len(self.attempts),
            "placed": len(self.placed),
            "skipped": self.skipped,
            "by_kind": dict(Counter(a.kind for a in self.placed)),
            "outcomes": dict(outcomes.most_common()),
            "cancels": dict(Counter(str(a.cancel_status) for a in self.attempts if a.cancel_status is not None)),
            "latency_s": {
                "p50": pct(0.5),
                "p99": pct(0.99),
                "mean": round(statistics.fmean(latencies), 4) if latencies else None,
            },
            "duration_s": round(self.duration_s, 3),
            "offered_rate": round(len(self.attempts) / self.duration_s, 2) if self.duration_s else None,
        }


class OrderLoad:
    """Offer `rate` orders/s to one or more order-service URLs (round robin) until stopped."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        rate: float,
        mix: Mix = Mix(),
        cancel_ratio: float = 0.0,
        timeout_s: float = 10.0,
        retries: int = 0,
        max_in_flight: int = 2000,
        seed: int | None = None,
        customer_prefix: str = "load",
        auth: ActingAuth,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if not urls:
            raise ValueError("at least one order-service URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.rate = rate
        self.mix = mix
        self.cancel_ratio = cancel_ratio
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_in_flight = max_in_flight
        self.rng = random.Random(seed)
        self.customer_prefix = customer_prefix
        self.auth = auth  # each order placed, and cancelled, by its customer's token
        self.result = LoadResult()
        self._seq = 0

    async def run(self, duration_s: float | None = None, stop: asyncio.Event | None = None) -> LoadResult:
        """Offer load for `duration_s` (or until `stop` is set); wait for answers; the result."""
        stop = stop or asyncio.Event()
        limits = httpx.Limits(max_connections=max(50, int(self.rate * 2)), max_keepalive_connections=50)
        in_flight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits, auth=self.auth) as client:
            i = 0
            while not stop.is_set():
                due = started + i / self.rate
                if duration_s is not None and due - started >= duration_s:
                    break
                delay = due - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except TimeoutError:
                        pass
                i += 1
                if len(in_flight) >= self.max_in_flight:
                    self.result.skipped += 1
                    continue
                task = asyncio.create_task(self._one(client, due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            self.result.duration_s = loop.time() - started
            if in_flight:
                await asyncio.gather(*list(in_flight), return_exceptions=True)
        return self.result

    async def _one(self, client: httpx.AsyncClient, scheduled_at: float) -> None:
        seq = self._seq
        self._seq += 1
        kind = self.mix.draw(self.rng)
        body = order_body(kind, seq, self.rng, self.customer_prefix)
        url = self.urls[seq % len(self.urls)]
        attempt = Attempt(seq, kind, url, f"{self.customer_prefix}-{uuid.uuid4()}", scheduled_at)
        self.result.attempts.append(attempt)
        attempt.sent_at = time.monotonic()
        attempt.wall_time = time.time()
        for try_no in range(1, self.retries + 2):
            attempt.tries = try_no
            try:
                response = await client.post(
                    f"{url}/orders", json=body, headers={"Idempotency-Key": attempt.idempotency_key}
                )
                attempt.status = response.status_code
                attempt.error = None
                if response.status_code == 202:
                    attempt.order_id = str(response.json()["order_id"])
                    break
                if response.status_code < 500:
                    break
            except httpx.HTTPError as exc:
                attempt.status = None
                attempt.error = type(exc).__name__
            if try_no <= self.retries:
                await asyncio.sleep(0.5 * try_no)
        attempt.finished_at = time.monotonic()
        if attempt.placed and self.cancel_ratio > 0 and self.rng.random() < self.cancel_ratio:
            await asyncio.sleep(self.rng.uniform(0.0, 1.5))
            try:
                response = await client.post(
                    f"{url}/orders/{attempt.order_id}/cancel",
                    headers=self.auth.headers(Role.CUSTOMER, str(body["customer_id"])),
                )
                attempt.cancel_status = response.status_code
            except httpx.HTTPError:
                attempt.cancel_status = -1


async def _main(args: argparse.Namespace) -> None:
    load = OrderLoad(
        args.url,
        rate=args.rate,
        mix=Mix.parse(args.mix),
        cancel_ratio=args.cancel_ratio,
        retries=args.retries,
        seed=args.seed,
        auth=stack_auth(args.run_dir),
    )
    result = await load.run(args.duration)
    print(json.dumps(result.summary(), indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="open-loop order generator (POST /orders at a fixed rate)")
    parser.add_argument("--url", action="append", default=None, help="order service base URL (repeatable)")
    parser.add_argument("--rate", type=float, default=50.0, help="orders per second (default 50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    parser.add_argument("--mix", default="90,5,5", help="happy,decline,unserved shares (default 90,5,5)")
    parser.add_argument("--cancel-ratio", type=float, default=0.0, help="share of placed orders cancelled")
    parser.add_argument("--retries", type=int, default=0, help="retries per request (same Idempotency-Key)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--run-dir", default=os.environ.get("RUN_DIR", ".run"), help="the stack's run dir: its auth/ key signs tokens"
    )
    args = parser.parse_args(argv)
    args.url = args.url or ["http://127.0.0.1:8001"]
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

"""The causal SSE feed end to end: the query service as a real process (`python -m
services.query`) fed through Kafka in adversarial order - every effect produced before its
cause, many orders at once from concurrent producers, the service SIGKILLed while facts are
held back and started again - and `GET /stream` read the way EventSource reads it
(reconnecting with Last-Event-ID). The stream never shows an effect before its cause and
loses nothing; a fact whose cause never comes is sent past the bound, marked `causalgap`.

Each test reads its own topics (QUERY_TOPICS), so other tests' facts never reach it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from infra.stack import LocalStack, free_port
from services.query.store import awaited_cause
from shared.contract import ORDER_EVENTS, PAYMENT_EVENTS, SHIPPING_EVENTS, OrderConfirmed, PaymentCaptured
from tests.auth_support import acting
from tests.conftest import NewTopicFactory
from tests.integration.kafka_support import wait_for
from tests.integration.service_support import scratch_database
from tests.unit.query.journeys import (
    Journey,
    Received,
    cancelled_after_capture,
    declined,
    happy,
    shipping_failed,
    topic_of,
    wire,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
Event = tuple[int, dict[str, Any]]


class QueryProcess:
    """`python -m services.query` on a free port; started and stopped (or killed) by its PID."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "HTTP_PORT": str(self.port), "QUERY_PORT": str(self.port)}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.proc is None, "already started: stop it first (a second start would leak the first process)"
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.query", cwd=REPO, env=self.env, stdout=out, stderr=out
            )

        async def healthy() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2, auth=acting()) as client:
                    return (await client.get(self.url + "/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(healthy, timeout_s=60, interval_s=0.2)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class StreamReader:
    """Reads `GET /stream` from the feed's start like EventSource: on a dropped connection it
    reconnects (every `retry` interval) with the last id it saw, until told to stop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[Event] = []
        self.connections = 0

    async def run(self) -> None:
        while True:
            headers = {"Last-Event-ID": str(self.events[-1][0] if self.events else 0)}
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None), auth=acting()) as client:
                    async with client.stream("GET", self.url + "/stream", headers=headers) as response:
                        self.connections += 1
                        await self._read(response)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)  # EventSource's reconnection delay (the server's `retry:`)

    async def _read(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "id" in fields:
                    self.events.append((int(fields["id"]), orjson.loads(fields["data"])))
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    def ids(self) -> set[str]:
        return {str(doc["id"]) for _, doc in self.events}

    async def until_seen(self, ids: set[str], timeout_s: float = 120) -> None:
        async def seen() -> bool:
            return ids <= self.ids()

        await wait_for(seen, timeout_s=timeout_s)


@asynccontextmanager
async def reading(url: str) -> AsyncIterator[StreamReader]:
    reader = StreamReader(url)
    task = asyncio.create_task(reader.run())
    try:
        yield reader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Producer:
    """One Kafka producer; each fact goes to this test's topic for its contract topic."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.topics = topics

    async def send_all(self, facts: Sequence[Received]) -> None:
        for f in facts:
            key, value = wire(f)
            await self.producer.send_and_wait(self.topics[topic_of(f)], value, key=key.encode())

    async def concurrently(self, facts: Sequence[Received], senders: int = 4) -> None:
        """`senders` tasks at once, each sending its share in order: the batches interleave."""
        await asyncio.gather(*(self.send_all(facts[i::senders]) for i in range(senders)))


@asynccontextmanager
async def setup(
    stack: LocalStack, new_topic: NewTopicFactory, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[QueryProcess, Producer, str]]:
    topics = {
        t: await new_topic(t.split(".")[0], partitions=3) for t in (ORDER_EVENTS, PAYMENT_EVENTS, SHIPPING_EVENTS)
    }
    async with scratch_database(stack, "query_causal") as dsn:
        service = QueryProcess(
            {
                "DATABASE_URL": dsn,
                "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
                "QUERY_TOPICS": ",".join(topics.values()),
                "LOG_LEVEL": "WARNING",
                **env,
            },
            tmp_path / "query.log",
        )
        producer = Producer(stack.kafka_bootstrap, topics)
        await producer.producer.start()
        try:
            yield service, producer, dsn
        finally:
            await producer.producer.stop()
            await service.stop(signal.SIGKILL)


def assert_causal(events: Sequence[Event]) -> None:
    """Each fact once, ids increasing, and after the fact its causationid names when that is sent."""
    ids = [str(doc["id"]) for _, doc in events]
    assert len(ids) == len(set(ids)), "a fact was sent twice"
    assert [seq for seq, _ in events] == sorted({seq for seq, _ in events}), "ids do not increase"
    position = {fid: i for i, fid in enumerate(ids)}
    for i, (_, doc) in enumerate(events):
        cause = position.get(str(doc["causationid"]))
        assert cause is None or cause < i, f"{doc['type']} {doc['id']} sent before its cause {doc['causationid']}"


async def held_count(dsn: str, ids: Sequence[str]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM fact_feed_held WHERE event_id = ANY($1::text[])", list(ids))
        return n
    finally:
        await conn.close()


async def test_effects_produced_before_their_causes_stream_after_them_across_a_crash(
    stack: LocalStack, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    rng = random.Random(1515)
    kinds = [happy, cancelled_after_capture, declined, shipping_failed]
    orders: list[Journey] = [kinds[i % len(kinds)]() for i in range(32)]
    facts = [f for j in orders for f in j.facts]
    effects = [f for f in facts if awaited_cause(f) is not None]
    causes = [f for f in facts if awaited_cause(f) is None]
    rng.shuffle(effects)
    rng.shuffle(causes)
    placed = [f for f in causes if f.type == "order.placed"]
    rest = [f for f in causes if f.type != "order.placed"]
    assert len(effects) >= 32 and all(f.type.startswith(("payment.", "shipment.")) for f in rest)

    # The bound is far away: this test is about holding and releasing, not about the bound.
    async with setup(stack, new_topic, tmp_path, FEED_CAUSAL_WAIT_MS="600000") as (service, producer, dsn):
        await service.start()
        async with reading(service.url) as stream:
            # 1. Every effect (on order.events) and the placements, concurrently, before any cause.
            await producer.concurrently(effects + placed)

            async def all_held() -> bool:
                return await held_count(dsn, [f.id for f in effects]) == len(effects)

            await wait_for(all_held, timeout_s=120)
            await stream.until_seen({f.id for f in placed})
            assert not stream.ids() & {f.id for f in effects}, "an effect was sent before its cause"

            # 2. A crash while they are held, causes produced while the service is down ...
            await service.stop(signal.SIGKILL)
            half = len(rest) // 2
            await producer.concurrently(rest[:half])
            # 3. ... and after it is back, concurrently again.
            await service.start()
            await producer.concurrently(rest[half:])
            await stream.until_seen({f.id for f in facts})
            live = list(stream.events)
            assert stream.connections >= 2, "the reader resumed across the restart"

        ours = [e for e in live if e[1]["id"] in {f.id for f in facts}]
        assert len(ours) == len(facts)
        assert_causal(live)
        assert not [doc["type"] for _, doc in ours if "causalgap" in doc], "every cause came: no gap"
        assert await held_count(dsn, [f.id for f in facts]) == 0
        # A new reader from the start gets exactly what the live reader got, in the same order
        # (from the same, still running, process).
        async with reading(service.url) as again:
            await again.until_seen({f.id for f in facts})
            assert again.events[: len(live)] == live


async def test_a_fact_whose_cause_never_comes_is_streamed_past_the_bound_with_the_causalgap_marker(
    stack: LocalStack, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    j = happy()
    captured = next(f for f in j.facts if isinstance(f.data, PaymentCaptured))
    confirmed = next(f for f in j.facts if isinstance(f.data, OrderConfirmed))
    before = j.facts[: j.facts.index(captured)]
    async with setup(stack, new_topic, tmp_path, FEED_CAUSAL_WAIT_MS="300") as (service, producer, _dsn):
        await service.start()
        async with reading(service.url) as stream:
            # order.confirmed without its cause (payment.captured): held, then sent marked.
            await producer.send_all([confirmed, *before])
            await stream.until_seen({confirmed.id, *(f.id for f in before)})
            gap = next(doc for _, doc in stream.events if doc["id"] == confirmed.id)
            assert gap["causalgap"] == "true" and gap["causationid"] == captured.id
            assert not [doc["type"] for _, doc in stream.events if doc["id"] != confirmed.id and "causalgap" in doc]
            # The cause comes late: sent once, unmarked; the effect is not sent again.
            await producer.send_all([captured])
            await stream.until_seen({captured.id})
            assert_causal([e for e in stream.events if e[1]["id"] != confirmed.id])
            sent = [doc["id"] for _, doc in stream.events]
            assert sent.count(confirmed.id) == 1 and sent.count(captured.id) == 1
            late = next(doc for _, doc in stream.events if doc["id"] == captured.id)
            assert "causalgap" not in late

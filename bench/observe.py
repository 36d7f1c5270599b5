"""How `make bench` sees sagas finish, without polling every order.

* `OrderEventsWatcher`: a group-less Kafka consumer on `order.events` (all partitions, from the
  end). For each final fact (order.confirmed / rejected / cancelled) it keeps the CloudEvents
  `time` — when the order service recorded the fact (the occurred-at of the append, just before
  its commit) — and when the benchmark received it from Kafka (after the outbox relay).
* `FeedWatcher`: one Server-Sent-Events connection to the query service's `GET /stream`. The
  stream reads `fact_feed`, which is written in the same transaction as the views, after the
  commit's NOTIFY: receiving a final order fact here means `GET /orders/{id}` on the query
  service already shows the final status. The receive time is the query-side completion time.

Both record wall-clock times (time.time()), like the load generator's send times: every
process runs on this machine's clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract import ORDER_EVENTS, OrderCancelled, OrderConfirmed, OrderRejected, OrderStatus

log = logging.getLogger("bench.observe")

FINAL_TYPES: dict[str, str] = {
    OrderConfirmed.TYPE: OrderStatus.CONFIRMED.value,
    OrderRejected.TYPE: OrderStatus.REJECTED.value,
    OrderCancelled.TYPE: OrderStatus.CANCELLED.value,
}
_FINAL_MARKERS = tuple(f'"{t}"'.encode() for t in FINAL_TYPES)


@dataclass(frozen=True, slots=True)
class WriteFinal:
    status: str
    recorded: float  # CloudEvents `time` of the final order fact (order service clock = ours)
    received: float  # when the benchmark consumed it from Kafka


@dataclass(frozen=True, slots=True)
class QueryFinal:
    status: str
    visible: float  # when the query service's SSE stream delivered it (after the view commit)


async def partitions_of(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Partition numbers of existing topics (internal ones included), from the broker's metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    out: dict[str, list[int]] = {}
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            out[str(topic["topic"])] = sorted(int(p["partition"]) for p in topic["partitions"])
    return out


_LAG = re.compile(r'^consumer_lag_messages\{consumer="([^"]+)",[^}]*\} (\S+)$', re.M)
_BACKLOG = re.compile(r"^outbox_backlog (\S+)$", re.M)


async def backlog(client: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """What a service has not processed yet, from its /metrics: Kafka lag per consumer and the
    outbox rows its relay saw at its last pass (`outbox`)."""
    try:
        text = (await client.get(base_url + "/metrics", timeout=5)).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for consumer, value in _LAG.findall(text):
        out[consumer] = out.get(consumer, 0.0) + float(value)
    found = _BACKLOG.search(text)
    if found:
        out["outbox"] = float(found.group(1))
    return out


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class OrderEventsWatcher:
    bootstrap: str
    topic: str = ORDER_EVENTS
    finals: dict[str, WriteFinal] = field(default_factory=dict)
    consumed: int = 0
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in (await partitions_of(self.bootstrap, [self.topic]))[self.topic]]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions now, so nothing of the run is skipped
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="order-events-watcher")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            now = time.time()
            for records in batches.values():
                self.consumed += len(records)
                for r in records:
                    value: bytes = r.value
                    if not any(m in value for m in _FINAL_MARKERS):
                        continue
                    doc = orjson.loads(value)
                    status = FINAL_TYPES.get(doc.get("type", ""))
                    if status is not None:
                        self.finals.setdefault(doc["subject"], WriteFinal(status, _parse_time(doc["time"]), now))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass
class FeedWatcher:
    base_url: str
    auth: httpx.Auth  # GET /stream needs a bearer token (infra.tokens.stack_auth)
    finals: dict[str, QueryFinal] = field(default_factory=dict)
    facts: int = 0
    reconnects: int = 0
    last_id: int | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 15.0) -> None:
        self._task = asyncio.create_task(self._run(), name="feed-watcher")
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), auth=self.auth) as client:
            while True:
                headers = {"Accept": "text/event-stream"}
                if self.last_id is not None:
                    headers["Last-Event-ID"] = str(self.last_id)
                try:
                    async with client.stream("GET", self.base_url + "/stream", headers=headers) as response:
                        response.raise_for_status()
                        self.connected.set()
                        buffer = b""
                        async for chunk in response.aiter_raw():
                            now = time.time()
                            buffer += chunk
                            blocks = buffer.split(b"\n\n")
                            buffer = blocks.pop()
                            for block in blocks:
                                self._on_block(block, now)
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("SSE stream interrupted: %r; resuming", exc)
                    await asyncio.sleep(0.2)
                self.reconnects += 1

    def _on_block(self, block: bytes, now: float) -> None:
        if not block.startswith(b"id: "):
            return  # retry: / keep-alive comments
        line, _, rest = block.partition(b"\n")
        self.last_id = int(line[4:])
        self.facts += 1
        if not any(m in rest for m in _FINAL_MARKERS):
            return
        doc = orjson.loads(rest[rest.index(b"data: ") + 6 :])
        status = FINAL_TYPES.get(doc.get("type", ""))
        if status is not None:
            self.finals.setdefault(doc["subject"], QueryFinal(status, now))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

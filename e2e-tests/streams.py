"""The system's streams as an outside client reads them: Kafka topics and Server-Sent Events.

* `KafkaTap`: reads every topic from "now" on (offsets captured at start, no consumer group,
  so it never moves a service's offsets) and keeps what it saw.
* `read_topics`: every message of some topics, from their beginning to their end right now.
* `SseStream` / `sse`: a Server-Sent Events reader for `GET /stream`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from client import ALL_TOPICS, Endpoints, Json, NotYet, UnexpectedStatus, eventually

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
        return await partitions_of(self.bootstrap, self.topics)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> KafkaTap:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
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

    async def wait_for(
        self, check: Callable[[list[TapMessage]], bool], timeout: float = 30.0, what: str = "messages"
    ) -> list[TapMessage]:
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
        await self.wait_for(
            lambda ms: wanted <= {m.type for m in ms if m.correlation_id == order_id},
            timeout,
            what=f"{sorted(wanted)} of {order_id} on Kafka",
        )
        return self.of_order(order_id)


@dataclass(frozen=True)
class WireMessage:
    """One Kafka record exactly as stored: key and value bytes, unparsed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


async def partitions_of(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics` (all of which must exist), in topic then partition order."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {t["topic"]: t for t in described if t.get("error_code", 0) == 0}
    missing = [t for t in topics if t not in found]
    if missing:
        raise AssertionError(f"topics missing on {bootstrap}: {missing}")
    return [
        TopicPartition(t, p["partition"])
        for t in topics
        for p in sorted(found[t]["partitions"], key=lambda p: int(p["partition"]))
    ]


async def read_topics(bootstrap: str, topics: Iterable[str], timeout: float = 60.0) -> list[WireMessage]:
    """Every committed message of `topics`, from each partition's beginning up to its end offset
    when the call starts (messages produced meanwhile may or may not be included)."""
    tps = await partitions_of(bootstrap, list(topics))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[WireMessage] = []
        deadline = time.monotonic() + timeout
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {sorted(str(tp) for tp in pending)} to their ends took over {timeout}s")
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                out.extend(
                    WireMessage(tp.topic, tp.partition, r.offset, r.key, r.value)
                    for r in records
                    if r.offset < ends[tp]
                )
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return sorted(out, key=lambda m: (m.topic, m.partition, m.offset))
    finally:
        await consumer.stop()


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
        except TimeoutError:
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
async def sse(
    endpoints: Endpoints, token: str, *, order_id: str | None = None, last_event_id: str | None = None
) -> AsyncIterator[SseStream]:
    """Open `GET /stream` as the bearer of `token` (optionally filtered, optionally resuming)
    for the `async with` body."""
    params = {"order_id": order_id} if order_id else {}
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
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

"""Product bug found by `make chaos` (fault `kafka-reset`): the kernel consumer can wedge forever.

What happened in the chaos run (order service, 50 orders/s, every connection between it and
Kafka reset for 5 s): the `order.saga` consumer stopped for good — no error, no restart, lag
growing on every partition — while the service stayed healthy (HTTP, relay, deadline
scheduler all fine). Its stored position for one partition was one batch ahead of its Kafka
committed offset: the runner was stuck in `await consumer.commit(...)` after its DB commit.
23 orders stayed PENDING for ever (captured payments, scheduled shipments) and their sagas,
compensating, re-sent `shipment.cancel` every step timeout, indefinitely (an invariant the audit checks:
no order stays PENDING past the saga timeout once all services are up).

Root cause (two steps, both reproduced below):
1. The services run on uvloop. After a peer reset, uvloop's transport raises `RuntimeError`
   on write, while the StreamReader holds the error without EOF, so aiokafka's
   `AIOKafkaConnection.connected()` still says True for a moment; `conn.send()` only
   catches `OSError`, so the RuntimeError escapes `AIOKafkaClient._metadata_update` and kills
   the client's background metadata synchronizer task.
2. From then on `client.force_metadata_update()` never resolves. The next time the group
   coordinator must be found again and the lookup fails once (NodeNotReady while the broker
   connection is re-established), `ensure_coordinator_known()` awaits that future for ever —
   and with it `consumer.commit()`, i.e. `ConsumerRunner._process_partition_batch`, i.e. the
   whole consumer loop.

Recommended fix (kernel, `shared/consumer.py`): never await the Kafka client unboundedly —
`await asyncio.wait_for(consumer.commit(...), timeout=…)` (e.g. 15 s) and, on timeout, treat
the consumer as broken: raise to `run()`, which stops it (already bounded) and starts a fresh
`AIOKafkaConsumer` (new client, new synchronizer); the stored positions make that exact. A
cheap extra guard: restart when `consumer._client._sync_task.done()`. (Alternatives: run the
services on the asyncio loop instead of uvloop, or catch RuntimeError in aiokafka's
`AIOKafkaConnection.send` — an upstream fix.) The relay already self-heals this way (a failed
send drops the producer and makes a new one).

Fixed in shared/consumer.py: offset commits are bounded and a dead metadata task or a commit
that never returns makes the runner replace its Kafka client (stored positions keep it exact).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import uvloop
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import NodeNotReadyError

from infra.stack import LocalStack
from shared.consumer import ConsumerRunner, ConsumerSettings, Delivery
from shared.contract import Envelope, ShipmentDispatched, encode, utc_now
from shared.db import create_pool, migrate
from shared.eventstore import EventStore, UnitOfWork
from tests.conftest import NewTopicFactory


def test_uvloop_raises_on_a_write_to_a_reset_connection_that_still_looks_open() -> None:
    """Step 1's premise: after an RST, uvloop raises RuntimeError on write and the reader shows no EOF."""

    async def scenario() -> tuple[bool, str]:
        async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        server = await asyncio.start_server(reset_at_once, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await asyncio.sleep(0.3)
        looks_open = not reader.at_eof()  # what AIOKafkaConnection.connected() checks
        try:
            writer.write(b"request")
            outcome = "write accepted"
        except RuntimeError as exc:
            outcome = f"RuntimeError: {exc}"
        server.close()
        return looks_open, outcome

    looks_open, outcome = uvloop.run(scenario())
    assert looks_open
    assert outcome.startswith("RuntimeError"), outcome  # not an OSError: aiokafka does not catch it


def _fact(n: int) -> bytes:
    """The n-th fact of one stream (version n + 1): any contract fact will do."""
    return encode(
        Envelope(
            id=str(uuid.uuid4()),
            source="/test",
            subject="s",
            sequence=n + 1,
            time=utc_now(),
            correlation_id="s",
            causation_id="s",
            data=ShipmentDispatched(order_id="s", shipment_id="s"),
        )
    )


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database)
    await migrate(pool, [])
    try:
        yield EventStore(pool, source="/test")
    finally:
        await pool.close()


@pytest.mark.integration
async def test_the_consumer_survives_a_metadata_refresh_that_hits_a_reset_connection(
    stack: LocalStack, store: EventStore, new_topic: NewTopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await new_topic("wedge", partitions=1)
    handled: list[int] = []

    async def handler(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        handled.extend(d.envelope.sequence - 1 for d in deliveries)

    runner = ConsumerRunner(
        name=f"wedge-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        store=store,
        bootstrap_servers=stack.kafka_bootstrap,
        handler=handler,
        settings=ConsumerSettings(retry_backoff_s=0.2),
    )
    stop = asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    for n in range(5):  # before the consumer starts: its first metadata already knows the topic
        await producer.send_and_wait(topic, _fact(n), key=b"s")
    task = asyncio.create_task(runner.run(stop))
    try:
        await _until(lambda: len(handled) >= 5, 60)
        consumer = runner._consumer
        assert consumer is not None
        client: AIOKafkaClient = consumer._client

        # Step 1: the next metadata request is written to a connection the broker just reset
        # (under uvloop: RuntimeError, see the test above).
        original_send = AIOKafkaConnection.send
        shots = {"metadata": 1}

        def send(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
            if shots["metadata"] and type(request).__name__.startswith("MetadataRequest"):
                shots["metadata"] = 0
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
            return original_send(self, request, expect_response)

        monkeypatch.setattr(AIOKafkaConnection, "send", send)
        client.force_metadata_update()
        await _until(lambda: shots["metadata"] == 0, 10)
        await asyncio.sleep(0.2)
        monkeypatch.setattr(AIOKafkaConnection, "send", original_send)

        # Step 2: the reset also fails the next offset commit (NodeNotReady: the coordinator is
        # marked dead) and the first coordinator lookup after it (the node is still not ready).
        original_client_send = AIOKafkaClient.send
        failures = {"OffsetCommitRequest": 1, "FindCoordinatorRequest": 1}

        async def client_send(self: AIOKafkaClient, node_id: Any, request: Any, **kwargs: Any) -> Any:
            kind = next((k for k in failures if type(request).__name__.startswith(k)), None)
            if (
                kind is not None
                and failures[kind]
                and (kind == "OffsetCommitRequest" or not failures["OffsetCommitRequest"])
            ):
                failures[kind] = 0
                raise NodeNotReadyError(f"node {node_id} not ready")
            return await original_client_send(self, node_id, request, **kwargs)

        monkeypatch.setattr(AIOKafkaClient, "send", client_send)

        # The broker is fine again: every new message must be handled. The first batch is; its
        # offset commit then waits for a coordinator lookup that waits for a metadata refresh
        # that nobody will ever do …
        for n in range(5, 10):
            await producer.send_and_wait(topic, _fact(n), key=b"s")
        await _until(lambda: len(handled) >= 10, 30)
        await _until(lambda: not any(failures.values()), 30)
        # … so nothing after it ever is.
        for n in range(10, 15):
            await producer.send_and_wait(topic, _fact(n), key=b"s")
        await _until(lambda: len(handled) >= 15, 30)
        assert sorted(set(handled)) == list(range(15))
    finally:
        await producer.stop()
        stop.set()
        try:
            await asyncio.wait_for(task, 15)
        except Exception:
            task.cancel()


async def _until(predicate: Any, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s")
        await asyncio.sleep(0.05)

"""aiokafka against confluent-kafka, side by side on this machine: `make bench-clients`.

Why: the relay and the consumers spend a large share of a saga's CPU in the Kafka client; the
choice between the pure-Python aiokafka (what the services use) and librdkafka through
confluent-kafka's asyncio wrappers (`confluent_kafka.aio`) is made by these figures, in the
shapes the services use them:

* produce as the relay does: a batch of keyed messages (the system's mean size) handed over at
  once, then every acknowledgement awaited, then the next batch; acks=all, idempotent, linger
  0 ms; at batch sizes 1, 10 and 100 (idle, moderate, busy relay);
* consume as the runners do: a group-less consumer reading a filled topic in polls of up to
  500 records.

Figures: process CPU (all threads, librdkafka's included) per message and messages/s. The CPU
per message is what matters on a shared machine; the rate swings with the load beside it. Its
own Kafka on free ports in a temporary directory; writes bench/results/clients.json.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from infra.stack import LocalStack, free_ports
from shared.kafka import make_admin, make_producer

RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).with_name("results"))
MESSAGE_BYTES = 576  # the system's mean message size (make bench, run_totals.mean_message_bytes)
PARTITIONS = 6
BATCHES = (1, 10, 100)
SECONDS = float(os.environ.get("BENCH_CLIENTS_S", "5"))
CONSUMED = int(os.environ.get("BENCH_CLIENTS_CONSUMED", "30000"))

Send = Callable[[list[bytes]], Awaitable[None]]


async def _measure_produce(send: Send, batch: int, keys: list[bytes]) -> dict[str, float]:
    """Batches handed over at once and awaited, for SECONDS: CPU µs per message and msgs/s."""
    sent = 0
    cpu, began = time.process_time(), time.monotonic()
    while time.monotonic() - began < SECONDS:
        await send(keys[sent % len(keys) : sent % len(keys) + batch])
        sent += batch
    wall, cpu = time.monotonic() - began, time.process_time() - cpu
    return {
        "batch": batch,
        "messages": sent,
        "cpu_us_per_message": round(cpu * 1e6 / sent, 1),
        "per_s": round(sent / wall),
    }


async def aiokafka_produce(bootstrap: str, topic: str, value: bytes, keys: list[bytes]) -> list[dict[str, float]]:
    producer = make_producer(bootstrap, client_id="bench-clients")
    await producer.start()
    try:

        async def send(batch: list[bytes]) -> None:
            futures = [await producer.send(topic, value, key=k) for k in batch]
            await asyncio.gather(*futures)

        await send(keys[:10])  # connections and metadata
        return [await _measure_produce(send, b, keys) for b in BATCHES]
    finally:
        await producer.stop()


async def confluent_produce(bootstrap: str, topic: str, value: bytes, keys: list[bytes]) -> list[dict[str, float]]:
    producer = AIOProducer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 0},
        buffer_timeout=0,
    )
    try:

        async def send(batch: list[bytes]) -> None:
            futures = [await producer.produce(topic, value, key=k) for k in batch]
            await producer.flush()
            await asyncio.gather(*futures)

        await send(keys[:10])
        return [await _measure_produce(send, b, keys) for b in BATCHES]
    finally:
        await producer.close()


async def aiokafka_consume(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        got, cpu, began = 0, time.process_time(), time.monotonic()
        while got < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            got += sum(len(records) for records in batches.values())
        return _consumed(got, time.process_time() - cpu, time.monotonic() - began)
    finally:
        await consumer.stop()


async def confluent_consume(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-clients-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        },
        max_workers=2,
    )
    try:
        await consumer.assign([CkTopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got, cpu, began = 0, time.process_time(), time.monotonic()
        while got < total:
            messages = await consumer.consume(num_messages=500, timeout=0.2)
            got += sum(1 for m in messages if m.error() is None)
        return _consumed(got, time.process_time() - cpu, time.monotonic() - began)
    finally:
        await consumer.close()


def _consumed(got: int, cpu: float, wall: float) -> dict[str, float]:
    return {"messages": got, "cpu_us_per_message": round(cpu * 1e6 / got, 1), "per_s": round(got / wall)}


async def compare(bootstrap: str) -> dict[str, Any]:
    value = os.urandom(MESSAGE_BYTES // 2).hex().encode()[:MESSAGE_BYTES]
    keys = [str(uuid.uuid4()).encode() for _ in range(1000)] * 2
    topics = {name: f"bench-clients-{name}-{uuid.uuid4().hex[:6]}" for name in ("aiokafka", "confluent")}
    admin = make_admin(bootstrap, client_id="bench-clients")
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics.values()])
    finally:
        await admin.close()
    produced = {
        "aiokafka": await aiokafka_produce(bootstrap, topics["aiokafka"], value, keys),
        "confluent-kafka": await confluent_produce(bootstrap, topics["confluent"], value, keys),
    }
    # Each reads the topic the other filled: the same messages, fresh from the broker's cache.
    consumed = {
        "aiokafka": await aiokafka_consume(bootstrap, topics["confluent"], CONSUMED),
        "confluent-kafka": await confluent_consume(bootstrap, topics["aiokafka"], CONSUMED),
    }
    return {
        "benchmark": "Kafka clients side by side (make bench-clients)",
        "versions": {"aiokafka": metadata.version("aiokafka"), "confluent-kafka": metadata.version("confluent-kafka")},
        "message_bytes": MESSAGE_BYTES,
        "produce_relay_shaped": produced,
        "consume_runner_shaped": consumed,
        "method": "one process, one client at a time, process CPU (all threads) per message; produce: "
        "acks=all, idempotent, linger 0 ms, a batch handed over at once and all its acks awaited",
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        kafka_port, controller_port, pg_port = free_ports(3)
        stack = LocalStack(Path(tmp), kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
        try:
            stack.start_kafka()
            result = asyncio.run(compare(stack.kafka_bootstrap))
        finally:
            stack.purge()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clients.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    for client, rows in result["produce_relay_shaped"].items():
        for row in rows:
            print(
                f"produce {client:>15} batch {row['batch']:>4}: {row['cpu_us_per_message']:>7} µs CPU/msg, {row['per_s']:>7} msgs/s"
            )
    for client, row in result["consume_runner_shaped"].items():
        print(f"consume {client:>15}           : {row['cpu_us_per_message']:>7} µs CPU/msg, {row['per_s']:>7} msgs/s")


if __name__ == "__main__":
    main()

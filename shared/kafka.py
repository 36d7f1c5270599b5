"""aiokafka client construction in one place, so every service uses the same safe settings."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient


def make_producer(bootstrap_servers: str, *, client_id: str) -> AIOKafkaProducer:
    """Idempotent, acks=all: retries never duplicate or reorder within a partition."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # the relay hands over a whole fetched batch at once: lingering only adds latency
        max_batch_size=256 * 1024,
        request_timeout_ms=15000,
        retry_backoff_ms=100,
    )


def make_consumer(bootstrap_servers: str, *, group_id: str | None, client_id: str) -> AIOKafkaConsumer:
    """Offsets are committed by the runner after the database commit, never automatically.
    `group_id` None: a consumer in no group, e.g. one that only asks for end offsets."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=500,  # the broker answers at once when data exists (fetch_min_bytes=1)
        max_poll_interval_ms=300000,
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
        retry_backoff_ms=100,
    )


def make_admin(bootstrap_servers: str, *, client_id: str) -> AIOKafkaAdminClient:
    """For describing and creating topics."""
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id)


async def partition_counts(bootstrap_servers: str, topics: Sequence[str], *, client_id: str) -> dict[str, int]:
    """The partition count of each of `topics` that exists (missing ones are left out)."""
    admin = make_admin(bootstrap_servers, client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}

"""Compose job `kafka-topics`: create the contract's Kafka topics before any service starts.

The topic names are declared once, in the contract (`shared.contract`: event, command and
dead-letter topics); this calls `shared.topics.ensure_topics`, the function `make up` and every
service use, so the partitions and configs (event topics keep facts forever: retention.ms=-1)
are those of `shared.topics.topic_specs()`. It reads KAFKA_BOOTSTRAP_SERVERS, TOPIC_PARTITIONS,
KAFKA_REPLICATION_FACTOR and KAFKA_MIN_INSYNC_REPLICAS (3 and 2 in the profile `cluster`) like
every service (`shared.settings.ServiceSettings`), retries until the
broker answers, then checks that every topic exists with all its partitions led. Exit 0 when
they all do, 1 if not within TIMEOUT_S. Safe to run any number of times.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from shared.settings import ServiceSettings
from shared.topics import ensure_topics, topic_specs

TIMEOUT_S = 120.0
RETRY_S = 1.0


async def missing_topics(bootstrap: str, wanted: dict[str, int]) -> list[str]:
    """Topics of `wanted` (name -> partitions) that do not exist yet or lack a partition leader."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics(sorted(wanted))
    finally:
        await admin.close()
    ok = {
        t["topic"]
        for t in described
        if t.get("error_code", 0) == 0
        and len(t.get("partitions", [])) >= wanted[t["topic"]]
        and all(p.get("leader", -1) >= 0 for p in t.get("partitions", []))
    }
    return sorted(set(wanted) - ok)


async def create_all(bootstrap: str, partitions: int, timeout_s: float = TIMEOUT_S) -> int:
    wanted = {s.name: s.partitions for s in topic_specs(partitions)}
    deadline = time.monotonic() + timeout_s
    problem = "not tried"
    while True:
        try:
            created = await asyncio.wait_for(ensure_topics(bootstrap, partitions), 30)
            missing = await asyncio.wait_for(missing_topics(bootstrap, wanted), 30)
            if not missing:
                print(
                    f"kafka topics ready on {bootstrap}: {len(wanted)} topics "
                    f"({len(created)} created now: {', '.join(created) or 'none'})",
                    flush=True,
                )
                return 0
            problem = f"not ready yet: {', '.join(missing)}"
        except Exception as exc:  # the broker may still be electing its controller
            problem = repr(exc)
        if time.monotonic() > deadline:
            print(
                f"kafka topics on {bootstrap} not ready after {timeout_s:.0f}s: {problem}", file=sys.stderr, flush=True
            )
            return 1
        await asyncio.sleep(RETRY_S)


def main() -> int:
    settings = ServiceSettings()
    return asyncio.run(create_all(settings.kafka_bootstrap_servers, settings.topic_partitions))


if __name__ == "__main__":
    sys.exit(main())

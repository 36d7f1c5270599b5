"""Creating the contract's Kafka topics, idempotently, with explicit partitions and configs.

Replication comes from settings (KAFKA_REPLICATION_FACTOR / KAFKA_MIN_INSYNC_REPLICAS, 1 / 1 by
default; 3 / 2 on a 3-broker cluster): with the producers' acks=all, a write is acknowledged
once `min.insync.replicas` replicas have it, so one broker of three can be lost without losing
an acknowledged fact or refusing writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contract import COMMAND_TOPICS, EVENT_TOPICS, dlq_topic


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int = 6, min_insync_replicas: int = 1) -> list[TopicSpec]:
    """Event topics keep facts forever; commands and DLQs keep a week / forever respectively."""
    isr = {"min.insync.replicas": str(min_insync_replicas)}
    forever = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete", **isr}
    specs = [TopicSpec(t, partitions, dict(forever)) for t in EVENT_TOPICS]
    week = {"retention.ms": str(7 * 24 * 3600 * 1000), **isr}
    specs += [TopicSpec(t, partitions, dict(week)) for t in COMMAND_TOPICS]
    specs += [TopicSpec(dlq_topic(t), 1, dict(forever)) for t in EVENT_TOPICS + COMMAND_TOPICS]
    return specs


def replication_of(replication_factor: int | None, min_insync_replicas: int | None) -> tuple[int, int]:
    """The given values, else the settings' (KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS)."""
    from shared.settings import ServiceSettings

    if replication_factor is None or min_insync_replicas is None:
        settings = ServiceSettings()
        if replication_factor is None:
            replication_factor = settings.kafka_replication_factor
        if min_insync_replicas is None:
            min_insync_replicas = settings.kafka_min_insync_replicas
    if not 1 <= min_insync_replicas <= replication_factor:
        raise ValueError(
            f"min.insync.replicas {min_insync_replicas} not within 1..replication factor {replication_factor}"
        )
    return replication_factor, min_insync_replicas


async def ensure_topics(
    bootstrap_servers: str,
    partitions: int = 6,
    *,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
) -> list[str]:
    """Create missing topics; return the names created. Safe to call any number of times.

    Replication not given is read from the settings, so a service started with the cluster's
    KAFKA_REPLICATION_FACTOR creates what the stack would have created.
    """
    from aiokafka.admin import NewTopic

    from shared.kafka import make_admin

    rf, min_isr = replication_of(replication_factor, min_insync_replicas)
    admin = make_admin(bootstrap_servers, client_id="topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in topic_specs(partitions, min_isr) if s.name not in existing]
        if wanted:
            await admin.create_topics([NewTopic(s.name, s.partitions, rf, topic_configs=s.configs) for s in wanted])
        return [s.name for s in wanted]
    finally:
        await admin.close()

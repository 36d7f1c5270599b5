"""Creating the contract's Kafka topics, idempotently, with explicit partitions and configs."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contract import COMMAND_TOPICS, EVENT_TOPICS, dlq_topic


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int = 6) -> list[TopicSpec]:
    """Event topics keep facts forever; commands and DLQs keep a week / forever respectively."""
    forever = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    specs = [TopicSpec(t, partitions, dict(forever)) for t in EVENT_TOPICS]
    specs += [TopicSpec(t, partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}) for t in COMMAND_TOPICS]
    specs += [TopicSpec(dlq_topic(t), 1, dict(forever)) for t in EVENT_TOPICS + COMMAND_TOPICS]
    return specs


async def ensure_topics(bootstrap_servers: str, partitions: int = 6) -> list[str]:
    """Create missing topics; return the names created. Safe to call any number of times."""
    from aiokafka.admin import NewTopic

    from shared.kafka import make_admin

    admin = make_admin(bootstrap_servers, client_id="topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in topic_specs(partitions) if s.name not in existing]
        if wanted:
            await admin.create_topics([NewTopic(s.name, s.partitions, 1, topic_configs=s.configs) for s in wanted])
        return [s.name for s in wanted]
    finally:
        await admin.close()

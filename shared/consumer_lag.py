"""Consumer lag per consumer group, read from Kafka without joining any group.

Lag of a partition = its end offset (read_committed) minus the group's committed offset. The
kernel's consumers keep their true positions in their own database and commit to Kafka now and
then (ConsumerRunner: advisory, every couple of seconds), so this lag may over-state the real one
by the facts of those seconds; it never under-states it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from shared.kafka import make_admin, make_consumer

CLIENT_ID = "consumer-lag"


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


async def consumer_lag(bootstrap: str) -> list[GroupLag]:
    """Every consumer group with committed offsets, and its lag per partition, by group name."""
    admin = make_admin(bootstrap, client_id=CLIENT_ID)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups())
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()
    tps = sorted({tp for offsets in committed.values() for tp in offsets})
    ends: dict[TopicPartition, int] = {}
    if tps:
        consumer = make_consumer(bootstrap, group_id=None, client_id=CLIENT_ID)
        await consumer.start()
        try:
            ends = {tp: int(end) for tp, end in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()
    return [
        GroupLag(
            group,
            [
                PartitionLag(tp.topic, tp.partition, offset, ends.get(tp, offset))
                for tp, offset in sorted(committed[group].items())
            ],
        )
        for group in groups
        if committed[group]
    ]

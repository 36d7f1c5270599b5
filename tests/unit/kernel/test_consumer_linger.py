"""ConsumerRunner._poll: a short poll lingers and takes what arrived meanwhile into its batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.consumer import ConsumerRunner, ConsumerSettings
from shared.eventstore import EventStore

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


@dataclass(frozen=True)
class Record:
    offset: int


class FakeConsumer:
    """getmany answers from a script; `ends` are the partitions' high-water marks."""

    def __init__(
        self, *answers: dict[TopicPartition, list[Record]], ends: dict[TopicPartition, int] | None = None
    ) -> None:
        self.answers = list(answers)
        self.ends = ends or {}
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.calls.append((timeout_ms, max_records))
        return self.answers.pop(0) if self.answers else {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)


def r(*offsets: int) -> list[Record]:
    return [Record(o) for o in offsets]


def runner(**settings: Any) -> ConsumerRunner:
    async def handler(*_: Any) -> None:
        return None

    return ConsumerRunner(
        name="c",
        topics=["t"],
        store=cast(EventStore, None),
        bootstrap_servers="unused",
        handler=handler,
        settings=ConsumerSettings(**settings),
    )


async def test_a_short_poll_at_the_partitions_ends_lingers_and_appends_what_arrived_in_order() -> None:
    consumer = FakeConsumer({A: r(0)}, {A: r(1), B: r(0)}, ends={A: 1})
    batches = await runner(batch_linger_s=0.001, max_batch=10)._poll(cast(AIOKafkaConsumer, consumer))
    assert batches == {A: r(0, 1), B: r(0)}
    assert consumer.calls[1] == (0, 9), "the second look does not wait and takes only what fits"


async def test_no_linger_for_an_empty_full_or_lagging_poll_or_when_it_is_off() -> None:
    for settings, first, ends in (
        ({"batch_linger_s": 0.001, "max_batch": 2}, {A: r(0, 1)}, {A: 2}),
        ({"batch_linger_s": 0.001, "max_batch": 10}, {}, {}),
        ({"batch_linger_s": 0.0, "max_batch": 10}, {A: r(0)}, {A: 1}),
        ({"batch_linger_s": 0.001, "max_batch": 10}, {A: r(0), B: r(0)}, {A: 1, B: 500}),  # B has a backlog
    ):
        consumer = FakeConsumer(first, {B: r(1)}, ends=ends)
        assert await runner(**settings)._poll(cast(AIOKafkaConsumer, consumer)) == first
        assert len(consumer.calls) == 1

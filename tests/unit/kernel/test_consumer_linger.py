"""ConsumerRunner._poll: a short poll lingers and takes what arrived meanwhile into its batch."""
from __future__ import annotations

from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.consumer import ConsumerRunner, ConsumerSettings
from shared.eventstore import EventStore

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    """getmany answers from a script; records are plain strings (the poll never looks inside)."""

    def __init__(self, *answers: dict[TopicPartition, list[str]]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[str]]:
        self.calls.append((timeout_ms, max_records))
        return self.answers.pop(0) if self.answers else {}


def runner(**settings: Any) -> ConsumerRunner:
    async def handler(*_: Any) -> None:
        return None

    return ConsumerRunner(
        name="c", topics=["t"], store=cast(EventStore, None), bootstrap_servers="unused",
        handler=handler, settings=ConsumerSettings(**settings),
    )


async def test_a_short_poll_lingers_and_appends_what_arrived_per_partition_in_order() -> None:
    consumer = FakeConsumer({A: ["a1"]}, {A: ["a2"], B: ["b1"]})
    batches = await runner(batch_linger_s=0.001, max_batch=10)._poll(cast(AIOKafkaConsumer, consumer))
    assert batches == {A: ["a1", "a2"], B: ["b1"]}
    assert consumer.calls[1] == (0, 9), "the second look does not wait and takes only what fits"


async def test_no_linger_for_an_empty_or_full_poll_or_when_it_is_off() -> None:
    for settings, first in (
        ({"batch_linger_s": 0.001, "max_batch": 2}, {A: ["a1", "a2"]}),
        ({"batch_linger_s": 0.001, "max_batch": 10}, {}),
        ({"batch_linger_s": 0.0, "max_batch": 10}, {A: ["a1"]}),
    ):
        consumer = FakeConsumer(first, {B: ["late"]})
        assert await runner(**settings)._poll(cast(AIOKafkaConsumer, consumer)) == first
        assert len(consumer.calls) == 1

"""What the checks look at: the event logs (typed, current-version facts), the raw topic
records and the query views. `reading.collect()` reads one from a running system; tests build
their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.eventstore import Recorded


def source_of(log: str) -> str:
    """The CloudEvents `source` of everything a service publishes (its facts, its commands)."""
    return f"/services/{log}"


@dataclass(frozen=True)
class TopicRecord:
    """A Kafka record as read: the value stays bytes, so a check can tell foreign ones apart."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None


@dataclass
class Snapshot:
    taken_at: datetime
    logs: dict[str, list[Recorded]]  # order | payment | shipping → its facts in insertion order
    outbox_backlog: dict[str, int] = field(default_factory=dict)
    topics: dict[str, list[TopicRecord]] | None = None  # None: not checked
    views: dict[str, dict[str, Any]] | None = None  # order_id → view; None: not checked
    #: Ids of facts and commands appended after the logs were read (seen again once the topics
    #: were read): on a topic they are not phantoms, just newer than the snapshot.
    late_ids: set[str] = field(default_factory=set)

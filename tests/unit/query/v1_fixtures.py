"""The v1 fixtures (tests/fixtures/v1, never regenerated) as the query service's tests use them:
the topic messages the previous code produced and the answers its query service gave."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from shared.contract import EVENT_TOPICS, Envelope, Message, decode, decode_data, encode, encode_data

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "v1"


@dataclass(frozen=True)
class TopicMessage:
    """One message exactly as it was on the topic: UTF-8 key and value bytes, unchanged."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes

    def envelope(self) -> Envelope[Message]:
        return decode(self.value)

    def as_v2(self) -> TopicMessage:
        """The same message re-encoded by the contract codec: current schema versions, same id."""
        return TopicMessage(self.topic, self.partition, self.offset, self.key, encode(self.envelope()))


@cache
def topic_messages() -> tuple[TopicMessage, ...]:
    """Every message of the event topics the query service reads, by topic, partition, offset."""
    out = []
    for line in (FIXTURES / "topics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["topic"] in EVENT_TOPICS:
            out.append(TopicMessage(m["topic"], m["partition"], m["offset"], m["key"].encode(), m["value"].encode()))
    return tuple(out)


@cache
def expected() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
    return doc


def order_ids() -> list[str]:
    return sorted(expected()["orders"])


def expected_order(order_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = expected()["orders"][order_id]["query_service"]["GET /orders/{id}"]
    return answer


def expected_timeline(order_id: str) -> dict[str, Any]:
    """The recorded timeline with each fact's data upcast by the contract, as it is shown now
    (everything else of the answer is compared as recorded)."""
    recorded = expected()["orders"][order_id]["query_service"]["GET /orders/{id}/timeline"]
    events = [
        {**e, "data": msgspec.json.decode(encode_data(decode_data(e["type"], 1, json.dumps(e["data"]))))}
        for e in recorded["events"]
    ]
    return {**recorded, "events": events}


def expected_stats() -> dict[str, Any]:
    stats: dict[str, Any] = expected()["query"]["GET /stats"]
    return stats


def expected_customer_lists() -> dict[str, dict[str, Any]]:
    lists: dict[str, dict[str, Any]] = expected()["query"]["GET /orders?customer_id="]
    return lists

"""Reading tests/fixtures/v1 (facts and messages the previous code wrote, schema version 1) for
the order service's tests: rows as stored, and the same facts decoded through the contract."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from shared.contract import COMMAND_TOPICS, Fact, Message, decode, decode_data

V1 = Path(__file__).resolve().parents[2] / "fixtures" / "v1"


@dataclass(frozen=True)
class Row:
    """One row of a service's `events` table, as the v1 code stored it."""

    event_id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str
    data: dict[str, Any]

    @property
    def raw_data(self) -> str:
        return json.dumps(self.data)

    @property
    def fact(self) -> Fact:
        """The fact as the code reads it now: validated and upcast to its current version."""
        fact = decode_data(self.type, self.schema_version, self.raw_data)
        assert isinstance(fact, Fact)
        return fact


def _rows(name: str) -> list[Row]:
    rows = []
    for line in (V1 / name).read_text().splitlines():
        doc = json.loads(line)
        rows.append(
            Row(
                event_id=doc["event_id"],
                stream_id=doc["stream_id"],
                version=doc["version"],
                type=doc["type"],
                schema_version=doc["schema_version"],
                occurred_at=datetime.fromisoformat(doc["occurred_at"]),
                correlation_id=doc["correlation_id"],
                causation_id=doc["causation_id"],
                data=doc["data"],
            )
        )
    return rows


@cache
def order_rows() -> list[Row]:
    """Every row of the v1 order database's `events` table, in insertion order."""
    return _rows("order_events.jsonl")


@cache
def participant_facts() -> dict[str, Fact]:
    """Every payment and shipment fact of the v1 run, by event id (= the id the saga saw)."""
    return {row.event_id: row.fact for name in ("payment_events.jsonl", "shipping_events.jsonl") for row in _rows(name)}


@cache
def streams() -> dict[str, list[Row]]:
    by_stream: dict[str, list[Row]] = defaultdict(list)
    for row in order_rows():
        by_stream[row.stream_id].append(row)
    return {stream_id: sorted(rows, key=lambda r: r.version) for stream_id, rows in by_stream.items()}


@cache
def expected() -> dict[str, Any]:
    """expected.json: per order its journey, input (payment token included) and API answers."""
    doc: dict[str, Any] = json.loads((V1 / "expected.json").read_text())
    return doc


@cache
def command_messages() -> dict[str, tuple[str, Message]]:
    """Every command the v1 saga sent, by message id: (topic, the command decoded now)."""
    found: dict[str, tuple[str, Message]] = {}
    for line in (V1 / "topics.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["topic"] in COMMAND_TOPICS:
            envelope = decode(doc["value"].encode())
            found[envelope.id] = (doc["topic"], envelope.data)
    return found


def order_ids() -> list[str]:
    return list(expected()["orders"])

"""`python -m infra dlq`'s pure parts: which topic is meant, the table and the JSON of a listing."""

from __future__ import annotations

from datetime import UTC, datetime

from infra.dlq import DeadLetterRecord, dlq_of, table
from shared.contract import (
    PAYMENT_COMMANDS,
    DeadLetterFailure,
    DeadLetterOrigin,
    dlq_topic,
    make_dead_letter,
    read_dead_letter,
)
from shared.contract.dead_letter import UNDECODABLE_TYPE

WHEN = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DLQ = dlq_topic(PAYMENT_COMMANDS)


def record(offset: int, value: bytes | None, error: str = "boom") -> DeadLetterRecord:
    letter = make_dead_letter(value, DeadLetterOrigin(PAYMENT_COMMANDS, 1, 40 + offset, "pay-1"), failure(error))[1]
    return DeadLetterRecord(DLQ, 0, offset, b"pay-1", letter, read_dead_letter(letter))


def failure(error: str) -> DeadLetterFailure:
    return DeadLetterFailure(PAYMENT_COMMANDS, error, 2, WHEN, WHEN)


def test_a_topic_names_its_dlq_and_a_dlq_itself() -> None:
    assert dlq_of(PAYMENT_COMMANDS) == dlq_of(DLQ) == DLQ


def test_the_table_has_a_row_per_dead_letter_with_the_columns_an_operator_needs() -> None:
    cloudevent = b'{"specversion":"1.0","id":"cmd-1","source":"/s","type":"payment.authorize","data":{"order_id":"o"}}'
    rows = [
        record(0, b"\xff garbage"),
        record(1, cloudevent, error="a long\nerror " + "x" * 200),
        DeadLetterRecord(DLQ, 0, 2, None, b"nope", None),
    ]
    header, garbage, command, foreign = table(rows).splitlines()
    assert header.split() == [
        "DLQ",
        "TOPIC",
        "OFFSET",
        "ID",
        "TYPE",
        "CONSUMER",
        "ATTEMPTS",
        "LAST",
        "FAILURE",
        "ERROR",
    ]
    assert garbage.split()[:7] == [DLQ, "0", f"{PAYMENT_COMMANDS}:1:40", UNDECODABLE_TYPE, PAYMENT_COMMANDS, "2"] + [
        "2026-11-30T08:00:00Z"
    ]
    assert command.split()[:4] == [DLQ, "1", "cmd-1", "payment.authorize"]
    assert "a long error xxx" in command and command.endswith("…") and len(command.split("a long")[1]) < 110
    assert foreign.split()[:3] == [DLQ, "2", "?"] and foreign.endswith("not a dead letter")


def test_the_json_has_every_attribute_and_the_whole_error() -> None:
    row = record(3, b"\x00", error="e" * 500).as_json()
    assert row["error"] == "e" * 500 and row["attempts"] == 2 and row["key"] == "pay-1"
    assert row["origin"] == {"topic": PAYMENT_COMMANDS, "partition": 1, "offset": 43}
    assert (row["dlq"], row["offset"], row["type"], row["consumer"]) == (DLQ, 3, UNDECODABLE_TYPE, PAYMENT_COMMANDS)
    assert DeadLetterRecord(DLQ, 0, 9, None, b"x", None).as_json() == {
        "dlq": DLQ,
        "partition": 0,
        "offset": 9,
        "key": None,
        "error": "not a dead letter",
    }

"""Envelopes and their CloudEvents 1.0 structured-mode mapping."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest

from shared.ids import caused_by, current_context, derived_id
from shared.messages import (
    Command,
    MessageFormatError,
    RecordedEvent,
    command_to_cloudevent,
    decode,
    encode,
    event_to_cloudevent,
)

WHEN = datetime(2026, 11, 22, 10, 30, tzinfo=timezone.utc)


def recorded(**overrides: object) -> RecordedEvent:
    fields: dict[str, object] = dict(
        event_id=uuid.UUID(int=7),
        type="payment.captured",
        stream_id="pay-1",
        version=3,
        schema_version=2,
        occurred_at=WHEN,
        correlation_id="order-1",
        causation_id="cmd-9",
        data={"order_id": "order-1", "amount_cents": 1250},
    )
    fields.update(overrides)
    return RecordedEvent(**fields)  # type: ignore[arg-type]


def test_event_maps_to_every_cloudevents_attribute() -> None:
    doc = event_to_cloudevent(recorded(), "/services/payment")
    assert doc == {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=7)),
        "source": "/services/payment",
        "type": "payment.captured",
        "subject": "pay-1",
        "time": "2026-11-22T10:30:00+00:00",
        "datacontenttype": "application/json",
        "correlationid": "order-1",
        "causationid": "cmd-9",
        "sequence": "3",
        "schemaversion": "2",
        "data": {"order_id": "order-1", "amount_cents": 1250},
    }


def test_event_round_trips_through_the_wire_format() -> None:
    event = recorded()
    env = decode(encode(event_to_cloudevent(event, "/services/payment")))
    assert env.as_recorded_event() == event
    assert not env.is_command


def test_command_is_marked_by_sequence_zero_and_keeps_causal_ids() -> None:
    command = Command(type="payment.capture", target_id="pay-1", data={"order_id": "o", "payment_id": "pay-1"})
    env = decode(encode(command_to_cloudevent(command, "/services/order", "o", "evt-1", WHEN)))
    assert env.is_command
    assert (env.type, env.subject, env.correlation_id, env.causation_id) == ("payment.capture", "pay-1", "o", "evt-1")
    assert env.id == str(command.command_id)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (None, "empty"),
        (b"\xff\x00not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({"specversion": "1.0", "id": "x"}), "missing CloudEvents attributes"),
        (
            orjson.dumps({"specversion": "0.3", "id": "x", "source": "s", "type": "t", "subject": "s", "time": WHEN.isoformat(), "data": {}}),
            "unsupported specversion",
        ),
        (
            orjson.dumps({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "subject": "s", "time": "yesterday", "data": {}}),
            "bad attribute",
        ),
        (
            orjson.dumps({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "subject": "s", "time": WHEN.isoformat(), "data": "str"}),
            "data is not a JSON object",
        ),
    ],
)
def test_poison_values_are_refused_with_a_reason(raw: bytes | None, complaint: str) -> None:
    with pytest.raises(MessageFormatError, match=complaint):
        decode(raw)


def test_derived_ids_are_stable_and_distinct_per_role() -> None:
    assert derived_id("order-1", "payment") == derived_id("order-1", "payment")
    assert derived_id("order-1", "payment") != derived_id("order-1", "shipment")
    assert derived_id("order-1", "payment") != derived_id("order-2", "payment")


def test_causal_context_nests_and_resets() -> None:
    assert current_context() is None
    with caused_by("corr", "cause-1"):
        with caused_by("corr", "cause-2") as inner:
            assert current_context() == inner
        ctx = current_context()
        assert ctx is not None and ctx.causation_id == "cause-1"
    assert current_context() is None

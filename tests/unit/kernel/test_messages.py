"""The contract's envelope and codec: CloudEvents 1.0 structured mode, validated and upcast on read."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.contract import (
    MESSAGES,
    CapturePayment,
    Command,
    Envelope,
    Fact,
    Message,
    MessageFormatError,
    Money,
    PaymentCaptured,
    PaymentFact,
    decode,
    decode_data,
    encode,
    encode_data,
)
from shared.ids import caused_by, current_context, derived_id

WHEN = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
V1 = Path(__file__).resolve().parents[2] / "fixtures" / "v1"


def captured(amount_cents: int = 1250) -> PaymentCaptured:
    return PaymentCaptured(
        order_id="order-1", payment_id="pay-1", amount=Money(amount_cents=amount_cents, currency="EUR")
    )


def recorded(data: Message | None = None, sequence: int = 3) -> Envelope[Message]:
    return Envelope(
        id=str(uuid.UUID(int=7)),
        source="/services/payment",
        subject="pay-1",
        sequence=sequence,
        time=WHEN,
        correlation_id="order-1",
        causation_id="cmd-9",
        data=data or captured(),
    )


def cloudevent(**attributes: Any) -> bytes:
    """A CloudEvents value with every required attribute, overridden by `attributes`."""
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/s",
        "type": PaymentCaptured.TYPE,
        "subject": "pay-1",
        "time": WHEN.isoformat(),
        "sequence": "1",
        "schemaversion": "2",
        "data": {"order_id": "o", "payment_id": "pay-1", "amount": {"amount_cents": 5, "currency": "EUR"}},
    }
    doc.update(attributes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def test_a_fact_maps_to_every_cloudevents_attribute() -> None:
    doc = orjson.loads(encode(recorded()))
    assert doc == {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=7)),
        "source": "/services/payment",
        "type": "payment.captured",
        "subject": "pay-1",
        "time": "2026-11-22T10:30:00Z",
        "datacontenttype": "application/json",
        "correlationid": "order-1",
        "causationid": "cmd-9",
        "sequence": "3",
        "schemaversion": "2",
        "data": {"order_id": "order-1", "payment_id": "pay-1", "amount": {"amount_cents": 1250, "currency": "EUR"}},
    }


def test_a_fact_round_trips_through_the_wire_format_as_its_typed_struct() -> None:
    env = recorded()
    back = decode(encode(env))
    assert back == env
    assert isinstance(back.data, PaymentCaptured) and back.data.amount == Money(amount_cents=1250, currency="EUR")
    assert (back.type, back.uuid, back.is_command) == ("payment.captured", uuid.UUID(int=7), False)
    assert encode(env, data=encode_data(env.data)) == encode(env), "pre-encoded data gives the same bytes"


def test_a_command_is_marked_by_sequence_zero_and_keeps_its_target_and_causal_ids() -> None:
    command = CapturePayment(order_id="o", payment_id="pay-1")
    env = decode(encode(recorded(command, sequence=0)))
    assert env.is_command and isinstance(env.data, CapturePayment) and isinstance(env.data, Command)
    assert (env.type, env.subject, env.data.target_id) == ("payment.capture", "pay-1", "pay-1")
    assert (env.correlation_id, env.causation_id) == ("order-1", "cmd-9")


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (None, "empty message value"),
        (b"\xff\x00not json", "not a CloudEvents JSON object"),
        (b"[1, 2]", "not a CloudEvents JSON object"),
        (orjson.dumps({"specversion": "1.0", "id": "x"}), "missing required field"),
        (cloudevent(specversion="0.3"), "unsupported specversion"),
        (cloudevent(time="yesterday"), "datetime"),
        (cloudevent(sequence="three"), "bad attribute"),
        (cloudevent(sequence="-1"), "must not be negative"),
        (cloudevent(data="str"), "does not match its schema"),
        (cloudevent(type="payment.teleported"), "unknown message type 'payment.teleported'"),
        (cloudevent(schemaversion="3"), "payment.captured has no schema version 3"),
        (cloudevent(schemaversion="0"), "payment.captured has no schema version 0"),
        (
            cloudevent(data={"order_id": "o", "payment_id": "p", "amount": {"amount_cents": "12", "currency": "EUR"}}),
            r"Expected `int`, got `str` - at `\$.amount.amount_cents`",
        ),
        (
            cloudevent(data={"order_id": "o", "payment_id": "p", "amount": {"amount_cents": -1, "currency": "EUR"}}),
            "Expected `int` >= 0",
        ),
        (
            cloudevent(data={"order_id": "o", "payment_id": "p", "amount": {"amount_cents": 1, "currency": "euro"}}),
            "currency",
        ),
        (cloudevent(data={"order_id": "o", "payment_id": "p"}), "missing required field `amount`"),
    ],
)
def test_poison_values_are_refused_with_a_reason(raw: bytes | None, complaint: str) -> None:
    with pytest.raises(MessageFormatError, match=complaint):
        decode(raw)


def test_unknown_data_fields_are_ignored_so_a_producer_may_add_optional_ones() -> None:
    raw = cloudevent(
        data={"order_id": "o", "payment_id": "p", "amount": {"amount_cents": 1, "currency": "EUR"}, "new": 1}
    )
    assert decode(raw).data == PaymentCaptured(
        order_id="o", payment_id="p", amount=Money(amount_cents=1, currency="EUR")
    )


def test_a_v1_payment_fact_is_read_as_v2_and_written_again_only_as_v2() -> None:
    raw = cloudevent(
        schemaversion="1", data={"order_id": "o", "payment_id": "p", "amount_cents": 700, "currency": "USD"}
    )
    env = decode(raw)
    assert env.data == PaymentCaptured(order_id="o", payment_id="p", amount=Money(amount_cents=700, currency="USD"))
    doc = orjson.loads(encode(env))
    assert doc["schemaversion"] == "2"
    assert doc["data"] == {"order_id": "o", "payment_id": "p", "amount": {"amount_cents": 700, "currency": "USD"}}
    with pytest.raises(MessageFormatError, match="does not match its schema"):
        decode(cloudevent(schemaversion="1", data={"order_id": "o", "payment_id": "p", "currency": "USD"}))


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (V1 / name).read_text().splitlines() if line.strip()]


def test_every_message_the_previous_code_put_on_kafka_decodes_to_the_current_version() -> None:
    messages = _jsonl("topics.jsonl")
    assert len(messages) == 189
    for m in messages:
        env = decode(m["value"].encode())
        original = json.loads(m["value"])
        assert (env.id, env.type, env.subject, env.sequence) == (
            original["id"],
            original["type"],
            original["subject"],
            int(original["sequence"]),
        )
        assert env.data.TOPIC == m["topic"], f"{env.type} arrived on {m['topic']}"
        assert type(env.data) is MESSAGES[env.type]
        if isinstance(env.data, PaymentFact):
            flat = original["data"]
            assert env.data.amount == Money(amount_cents=flat["amount_cents"], currency=flat["currency"])


def test_every_fact_the_previous_code_stored_decodes_to_the_current_version() -> None:
    rows = [r for name in ("order_events.jsonl", "payment_events.jsonl", "shipping_events.jsonl") for r in _jsonl(name)]
    assert len(rows) == 360 + 40 + 32
    for row in rows:
        fact = decode_data(row["type"], row["schema_version"], json.dumps(row["data"]))
        assert isinstance(fact, Fact) and fact.TYPE == row["type"]
        assert b"tok_" not in encode_data(fact), f"{row['type']}: the payment token is not carried over"


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

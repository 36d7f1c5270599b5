"""Dead letters are CloudEvents that keep the original message whole: its attributes (known or
not) and its data as they were, plus the `dlq*` extension attributes; anything that is not a
CloudEvent becomes one (`dead_letter.undecodable`). `original_value` gives back what was on the
topic, byte for byte for everything this system writes, so a replay resubmits the same message."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contract import (
    DeadLetterFailure,
    DeadLetterFormatError,
    DeadLetterOrigin,
    Envelope,
    Money,
    PaymentCaptured,
    encode,
    failed_message_id,
    make_dead_letter,
    original_value,
    read_dead_letter,
)
from shared.contract.dead_letter import DLQ_ATTRIBUTES, UNDECODABLE_TYPE

FIRST = datetime(2026, 11, 30, 8, 0, 0, 250000, tzinfo=UTC)
LAST = FIRST + timedelta(minutes=5)
ORIGIN = DeadLetterOrigin("payment.events", 4, 1234, "pay-1", FIRST - timedelta(seconds=1))
FAILURE = DeadLetterFailure("order.saga", "ValueError('boom')", 6, FIRST, LAST)
ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,20}$")


def captured(**extensions: str) -> bytes:
    env = Envelope(
        id=str(uuid.uuid4()),
        source="/services/payment",
        subject="pay-1",
        sequence=3,
        time=FIRST,
        correlation_id="order-1",
        causation_id="cmd-1",
        data=PaymentCaptured(order_id="order-1", payment_id="pay-1", amount=Money(amount_cents=1500, currency="EUR")),
        **extensions,  # type: ignore[arg-type]
    )
    return encode(env)


def letter_of(value: bytes | None) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(make_dead_letter(value, ORIGIN, FAILURE)[1])
    return parsed


def assert_valid_cloudevent(document: dict[str, Any]) -> None:
    """CloudEvents 1.0 JSON format: the required attributes, attribute names of a-z and 0-9
    (`data` and `data_base64` aside, never both), attribute values strings, integers or booleans."""
    assert document["specversion"] == "1.0"
    assert all(isinstance(document[a], str) and document[a] for a in ("id", "source", "type"))
    assert not ("data" in document and "data_base64" in document)
    for name, value in document.items():
        if name not in ("data", "data_base64"):
            assert ATTRIBUTE_NAME.match(name), name
            assert isinstance(value, str | int | bool), name
    if "time" in document:
        datetime.fromisoformat(document["time"])


def test_a_cloudevent_keeps_its_attributes_and_data_and_gains_the_dlq_attributes() -> None:
    original = captured(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    letter = letter_of(original)
    assert_valid_cloudevent(letter)
    kept = orjson.loads(original)
    assert {k: v for k, v in letter.items() if k not in DLQ_ATTRIBUTES} == kept
    assert letter["data"] == kept["data"] and letter["traceparent"] == kept["traceparent"]
    assert {k: letter[k] for k in DLQ_ATTRIBUTES} == {
        "dlqerror": "ValueError('boom')",
        "dlqconsumer": "order.saga",
        "dlqattempts": "6",
        "dlqfirstfailure": "2026-11-30T08:00:00.250000Z",
        "dlqlastfailure": "2026-11-30T08:05:00.250000Z",
        "dlqtopic": "payment.events",
        "dlqpartition": "4",
        "dlqoffset": "1234",
    }
    assert make_dead_letter(original, ORIGIN, FAILURE)[0] == kept["id"] == failed_message_id(original, ORIGIN)
    assert original_value(make_dead_letter(original, ORIGIN, FAILURE)[1]) == original, "byte for byte"


def test_unknown_extension_attributes_and_data_that_breaks_its_schema_are_kept_as_they_were() -> None:
    document = orjson.loads(captured())
    document["data"] = {"amount": "not a number", "nested": [1, {"x": None}]}
    document["partnerref"] = "abc-1"
    document["priority"] = 7
    document["urgent"] = True
    document["dlqerror"] = "an older error, replaced"
    original = orjson.dumps(document)
    letter = letter_of(original)
    assert_valid_cloudevent(letter)
    assert letter["data"] == document["data"]
    assert (letter["partnerref"], letter["priority"], letter["urgent"]) == ("abc-1", 7, True)
    assert letter["dlqerror"] == FAILURE.error
    # the original's own `dlq*` attribute is the one thing a dead letter cannot give back
    assert original_value(orjson.dumps(letter)) == orjson.dumps({k: v for k, v in document.items() if k != "dlqerror"})


@pytest.mark.parametrize(
    "value",
    [
        b"\x00 definitely not json",
        b"[1, 2, 3]",
        b'"a string"',
        b"{}",
        b'{"specversion":"0.3","id":"x","source":"/s","type":"t"}',
        b'{"specversion":"1.0","id":"","source":"/s","type":"t"}',
        b'{"specversion":"1.0","id":"x","source":"/s"}',
        b'{"specversion":"1.0","id":"x","source":"/s","type":"t","Upper":"no"}',
        b'{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":{"an":"object"}}',
        b'{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":null}',
        b'{"specversion":"1.0","id":"x","source":"/s","type":"t","time":"yesterday"}',
        b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AQ=="}',
        b"",
    ],
)
def test_anything_that_is_not_a_cloudevent_becomes_an_undecodable_one_holding_its_bytes(value: bytes) -> None:
    letter = letter_of(value)
    assert_valid_cloudevent(letter)
    assert letter["type"] == UNDECODABLE_TYPE
    assert letter["id"] == "payment.events:4:1234" == failed_message_id(value, ORIGIN)
    assert letter["source"] == "/topics/payment.events"
    assert letter["subject"] == "pay-1", "the Kafka key"
    assert letter["time"] == "2026-11-30T07:59:59.250000Z", "the record's timestamp"
    assert letter["datacontenttype"] == "application/octet-stream"
    assert base64.b64decode(letter["data_base64"]) == value
    assert original_value(make_dead_letter(value, ORIGIN, FAILURE)[1]) == value


def test_a_missing_value_stays_missing() -> None:
    letter = make_dead_letter(None, DeadLetterOrigin("t", 0, 1), FAILURE)[1]
    assert "data_base64" not in orjson.loads(letter) and "subject" not in orjson.loads(letter)
    assert original_value(letter) is None
    assert orjson.loads(letter)["time"] == "2026-11-30T08:00:00.250000Z", "no record timestamp: the first failure"


@given(st.binary(max_size=300))
def test_any_bytes_come_back_exactly(value: bytes) -> None:
    assert original_value(make_dead_letter(value, ORIGIN, FAILURE)[1]) == value


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.from_regex(r"\A[a-z0-9]{1,12}\Z"), st.text(max_size=12) | st.integers(-(2**53), 2**53) | st.booleans()
    ),
    _JSON,
)
def test_any_compact_cloudevent_comes_back_byte_for_byte(extensions: dict[str, Any], data: Any) -> None:
    document = {"specversion": "1.0", "id": "i-1", "source": "/s", "type": "some.type"}
    document |= {k: v for k, v in extensions.items() if k not in document and k not in DLQ_ATTRIBUTES}
    document["data"] = data
    original = orjson.dumps(document)
    letter = make_dead_letter(original, ORIGIN, FAILURE)[1]
    assert_valid_cloudevent(orjson.loads(letter))
    assert original_value(letter) == original


def test_reading_a_dead_letter() -> None:
    original = captured()
    letter = read_dead_letter(make_dead_letter(original, ORIGIN, FAILURE)[1])
    assert (letter.id, letter.type, letter.dlqconsumer, letter.attempts) == (
        orjson.loads(original)["id"],
        PaymentCaptured.TYPE,
        "order.saga",
        6,
    )
    assert letter.origin == ("payment.events", 4, 1234) and not letter.undecodable
    assert letter.correlationid == "order-1"
    assert read_dead_letter(make_dead_letter(b"\xff", ORIGIN, FAILURE)[1]).undecodable
    for not_a_letter in (b"\xff", b"{}", original, None):
        with pytest.raises(DeadLetterFormatError):
            read_dead_letter(not_a_letter)


def test_a_version_1_dead_letter_is_read_as_the_current_form() -> None:
    """Version 1 (plain JSON) letters stay on the DLQ topics for ever: listing and replay read them."""
    original = captured()
    v1 = orjson.dumps(
        {
            "consumer": "payment.commands",
            "error": "boom",
            "failed_at": "2026-11-01T10:00:00+00:00",
            "origin": {"topic": "payment.commands", "partition": 2, "offset": 9, "key": "pay-1"},
            "value_base64": base64.b64encode(original).decode(),
        }
    )
    letter = read_dead_letter(v1)
    assert (letter.id, letter.dlqconsumer, letter.dlqerror, letter.attempts) == (
        orjson.loads(original)["id"],
        "payment.commands",
        "boom",
        1,
    )
    assert letter.origin == ("payment.commands", 2, 9)
    assert letter.dlqfirstfailure == letter.dlqlastfailure == "2026-11-01T10:00:00Z"
    assert original_value(v1) == original

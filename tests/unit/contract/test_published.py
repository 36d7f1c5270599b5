"""The published contract (docs/schemas/, docs/asyncapi.yaml, docs/EVENTS.md) is exactly what the code
declares, is valid AsyncAPI 3.0.0 by the official JSON Schema, and accepts and rejects the payloads
the codec does: other teams build on these files, so they must not drift or lie.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.jsonschema import DRAFT7

from shared.contract import (
    ALL_MESSAGES,
    CHANNELS,
    CUSTOMER_FACTS,
    MESSAGES,
    DeadLetterFailure,
    DeadLetterOrigin,
    Envelope,
    Message,
    MessageFormatError,
    PaymentCaptured,
    decode,
    decode_data,
    encode,
    encode_data,
    make_dead_letter,
    personal_fields,
    publish,
)
from shared.contract.base import Money
from shared.contract.saga import SAGA_FACTS
from shared.contract.upcasting import registered_steps
from shared.personal import DataKey, legacy, seal
from tests.unit.contract import asyncapi_spec

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / publish.SCHEMAS_DIR
FIXTURES_V1 = ROOT / "tests" / "fixtures" / "v1"
DOCUMENT_URI = "urn:events-first:asyncapi-under-test"

ORDER_ID = "c069364f-5659-4b5f-b309-a3412a8126da"
PAYMENT_ID = "9e5530b7-d9cd-51eb-b328-87f8c1d87156"
SHIPMENT_ID = "550e256d-fba3-55e2-8fed-6573dcefdded"
CLEAR_ADDRESS = {"name": "Ada Lovelace", "line1": "1 Rue de Rivoli", "city": "Paris", "postal_code": "75001"}
KEY = DataKey("0" * 32, "cust-1", 1, bytes(32))
ADDRESS = {**{field: seal(KEY, field, text) for field, text in CLEAR_ADDRESS.items()}, "country": "FR"}
ORDER_PLACED = {
    "order_id": ORDER_ID,
    "customer_id": "cust-1",
    "items": [{"sku": "SKU-BOOK-1", "quantity": 2, "unit_price_cents": 1500}],
    "currency": "EUR",
    "total_cents": 3000,
    "shipping_address": ADDRESS,
}
PAYMENT_V2 = {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "amount": {"amount_cents": 3000, "currency": "EUR"}}
PAYMENT_V1 = {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "amount_cents": 3000, "currency": "EUR"}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    data.update(changes)
    return data


def _without(base: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in copy.deepcopy(base).items() if k not in keys}


def _schema_file(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return schema


def _errors(validator: Any, instance: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(instance)]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / publish.ASYNCAPI_FILE).read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _official_validator() -> Any:
    schema, registry = asyncapi_spec.load()
    return validator_for(schema)(schema, registry=registry)


def _official() -> Any:
    """A validator for the official AsyncAPI 3.0.0 schema; without it the test fails (it never skips)."""
    try:
        return _official_validator()
    except asyncapi_spec.SpecUnavailable as exc:
        pytest.fail(f"cannot validate docs/asyncapi.yaml: {exc}", pytrace=False)


def _payload_validator(document: dict[str, Any], message_id: str) -> Any:
    """The payload schema of one message of the document, its `#/components/...` refs resolved in it."""
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, DRAFT7.create_resource(document))
    return Draft7Validator({"$ref": f"{DOCUMENT_URI}#/components/messages/{message_id}/payload"}, registry=registry)


def _envelope(message: Message, subject: str, sequence: int = 1) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(
        encode(
            Envelope(
                id="08c29407-af3d-481d-a9d9-c5817488acaa",
                source="/services/test",
                subject=subject,
                sequence=sequence,
                time=datetime(2026, 11, 30, tzinfo=UTC),
                correlation_id=message.order_id,
                causation_id="probe-1",
                data=message,
            )
        )
    )
    return value


# ------------------------------------------------------------------------------------------ (a) drift


def test_the_committed_files_are_what_the_contract_generates() -> None:
    drift = publish.check(ROOT)
    if drift:
        files = publish.generate()
        first = next((d.split(" ")[0] for d in drift if d.endswith("(differs)")), None)
        diff = ""
        if first is not None:
            committed = (ROOT / first).read_text(encoding="utf-8").splitlines()
            lines = difflib.unified_diff(committed, files[first].splitlines(), first, "generated", lineterm="")
            diff = "\n".join(list(lines)[:40])
        pytest.fail(
            "the published contract drifted from shared/contract:\n  "
            + "\n  ".join(drift)
            + f"\n{publish.REGENERATE}\n{diff}",
            pytrace=False,
        )


def test_generation_is_deterministic() -> None:
    assert publish.generate() == publish.generate()


def test_check_reports_changed_missing_and_stray_files_and_write_repairs_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert publish.main(["--root", str(tmp_path)]) == 0
    assert publish.check(tmp_path) == []
    (tmp_path / publish.EVENTS_FILE).write_text("hand edit\n")
    (tmp_path / publish.ASYNCAPI_FILE).unlink()
    (tmp_path / publish.SCHEMAS_DIR / "order.placed.v0.json").write_text("{}\n")
    capsys.readouterr()

    assert publish.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{publish.EVENTS_FILE} (differs)" in err
    assert f"{publish.ASYNCAPI_FILE} (missing)" in err
    assert f"{publish.SCHEMAS_DIR}/order.placed.v0.json (no longer generated)" in err
    assert "make contract" in err

    changed = publish.write(tmp_path)
    assert sorted(changed) == sorted(
        [publish.EVENTS_FILE, publish.ASYNCAPI_FILE, f"{publish.SCHEMAS_DIR}/order.placed.v0.json"]
    )
    assert publish.check(tmp_path) == []
    assert publish.write(tmp_path) == []


# ------------------------------------------------------------------ (b) valid by the official schema


def test_the_official_schema_is_the_pinned_one_and_resolves_offline() -> None:
    official = _official()
    assert official.schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert asyncapi_spec.SCHEMA_FILE.is_relative_to(ROOT / ".cache" / "asyncapi-specs" / "6.11.1")
    schema, registry = asyncapi_spec.load()
    resolver = registry.resolver()  # every absolute reference the schema makes, none fetched
    refs = sorted(set(_absolute_refs(schema)))
    assert any("/bindings/kafka/" in r for r in refs)
    for ref in refs:
        resolver.lookup(ref)


def _absolute_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "examples":  # example documents, not references of the schema
                continue
            if key == "$ref" and isinstance(value, str) and value.startswith("http"):
                yield value
            else:
                yield from _absolute_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _absolute_refs(item)


def test_asyncapi_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    official = _official()
    error = best_match(official.iter_errors(document))
    assert error is None, (
        f"docs/asyncapi.yaml is not valid AsyncAPI 3.0.0 at {list(error.absolute_path)}: {error.message}"
    )


def _break_info(doc: dict[str, Any]) -> None:
    del doc["info"]


def _break_action(doc: dict[str, Any]) -> None:
    doc["operations"]["order_sends_order_events"]["action"] = "publish"  # AsyncAPI 2 wording


def _break_address(doc: dict[str, Any]) -> None:
    doc["channels"]["order_events"]["address"] = 9092


def _break_kafka_key(doc: dict[str, Any]) -> None:
    doc["components"]["messages"]["order.placed"]["bindings"]["kafka"]["key"] = "order id"


def _break_data_schema(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["Money"]["required"] = "amount_cents"


@pytest.mark.parametrize("breakage", [_break_info, _break_action, _break_address, _break_kafka_key, _break_data_schema])
def test_the_validator_rejects_a_broken_document(
    document: dict[str, Any], breakage: Callable[[dict[str, Any]], None]
) -> None:
    official = _official()
    broken = copy.deepcopy(document)
    breakage(broken)
    assert _errors(official, broken), f"{breakage.__name__}: the official schema accepted a broken document"


# ------------------------------------------------------------------------ (c) schemas and examples


def test_every_schema_file_is_a_valid_2020_12_schema_with_a_local_id() -> None:
    files = sorted(SCHEMAS.glob("*.json"))
    assert len(files) == len(ALL_MESSAGES) + 2
    ids = set()
    for path in files:
        schema = _schema_file(path.name)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == publish.JSON_SCHEMA_DIALECT
        assert schema["$id"].startswith("urn:events-first:schema:"), path.name
        ids.add(schema["$id"])
    assert len(ids) == len(files)
    for cls in ALL_MESSAGES:
        schema = _schema_file(f"{cls.TYPE}.v{cls.VERSION}.json")
        assert (schema["title"], schema["$id"]) == (cls.TYPE, f"urn:events-first:schema:{cls.TYPE}:v{cls.VERSION}")


def _node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
def test_personal_fields_keep_their_marker(cls: type[Message]) -> None:
    schema = _schema_file(f"{cls.TYPE}.v{cls.VERSION}.json")
    for path in personal_fields(cls):
        node = schema
        for part in path.split("."):
            node = _node(schema, node)
            node = node["items"] if part.endswith("[]") else node
            node = _node(schema, node)["properties"][part.removesuffix("[]")]
        assert node.get("x-personal-data") is True, f"{cls.TYPE}: {path} is personal but not marked"


DATA_EXAMPLES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("order.placed", "complete", ORDER_PLACED, True),
    ("order.placed", "unknown field (additive)", _with(ORDER_PLACED, gift_note="for Ada"), True),
    (
        "order.placed",
        "quantity 0",
        _with(ORDER_PLACED, items=[{"sku": "A", "quantity": 0, "unit_price_cents": 1}]),
        False,
    ),
    ("order.placed", "lowercase currency", _with(ORDER_PLACED, currency="eur"), False),
    ("order.placed", "no address", _without(ORDER_PLACED, "shipping_address"), False),
    ("order.placed", "empty postal code", _with(ORDER_PLACED, shipping_address=_with(ADDRESS, postal_code="")), False),
    (
        "order.placed",
        "address in clear",
        _with(ORDER_PLACED, shipping_address={**CLEAR_ADDRESS, "country": "FR"}),
        False,
    ),
    (
        "order.placed",
        "legacy clear text",
        _with(ORDER_PLACED, shipping_address=_with(ADDRESS, name=legacy("Ada"))),
        True,
    ),
    (
        "order.placed",
        "bad key id",
        _with(ORDER_PLACED, shipping_address=_with(ADDRESS, name="pd1.xyz." + "A" * 40)),
        False,
    ),
    ("order.confirmed", "ids", {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "shipment_id": SHIPMENT_ID}, True),
    ("order.rejected", "empty reason", {"order_id": ORDER_ID, "reason": ""}, False),
    ("payment.captured", "v2 amount", PAYMENT_V2, True),
    ("payment.captured", "v1 flat amount_cents", PAYMENT_V1, False),
    ("payment.captured", "negative amount", _with(PAYMENT_V2, amount={"amount_cents": -1, "currency": "EUR"}), False),
    ("payment.declined", "v2 with reason", _with(PAYMENT_V2, reason="card_declined"), True),
    ("payment.declined", "no reason", PAYMENT_V2, False),
    (
        "payment.authorize",
        "with token",
        {**PAYMENT_V1, "payment_token": "tok_visa"},
        True,
    ),
    ("payment.authorize", "no token", PAYMENT_V1, False),
    ("payment.authorize", "beyond BIGINT", {**PAYMENT_V1, "amount_cents": 2**63, "payment_token": "t"}, False),
    ("shipment.scheduled", "address", {"order_id": ORDER_ID, "shipment_id": SHIPMENT_ID, "address": ADDRESS}, True),
    (
        "shipment.scheduled",
        "country spelt out",
        {"order_id": ORDER_ID, "shipment_id": SHIPMENT_ID, "address": _with(ADDRESS, country="France")},
        False,
    ),
    ("shipment.cancel", "no shipment id", {"order_id": ORDER_ID, "reason": "order_cancelled"}, False),
    (
        "saga.step_requested",
        "v2 names the command",
        {
            "order_id": ORDER_ID,
            "command_type": "payment.authorize",
            "target_id": PAYMENT_ID,
            "command_id": "c-1",
            "requested_at": "2026-11-30T00:04:33+00:00",
        },
        True,
    ),
    (
        "saga.step_requested",
        "v1 copies the command",
        {"order_id": ORDER_ID, "command": {"type": "payment.authorize"}, "requested_at": "2026-11-30T00:04:33+00:00"},
        False,
    ),
    ("saga.completed", "unknown status", {"order_id": ORDER_ID, "status": "LOST"}, False),
    ("saga.completed", "status", {"order_id": ORDER_ID, "status": "DELIVERED"}, True),
]


@pytest.mark.parametrize(
    ("message_type", "case", "data", "valid"),
    DATA_EXAMPLES,
    ids=[f"{t}: {case}" for t, case, _, _ in DATA_EXAMPLES],
)
def test_data_schemas_accept_and_reject_what_the_codec_does(
    message_type: str, case: str, data: dict[str, Any], valid: bool
) -> None:
    cls = MESSAGES[message_type]
    validator = Draft202012Validator(_schema_file(f"{cls.TYPE}.v{cls.VERSION}.json"))
    errors = _errors(validator, data)
    assert (not errors) is valid, f"{message_type} ({case}): schema says {errors or 'valid'}"
    try:
        decode_data(message_type, cls.VERSION, json.dumps(data))
        decoded = True
    except MessageFormatError:
        decoded = False
    assert decoded is valid, f"{message_type} ({case}): the codec disagrees with the published schema"


def test_dead_letter_schema_describes_what_consumers_write() -> None:
    validator = Draft202012Validator(_schema_file(f"dead-letter.v{publish.DEAD_LETTER_VERSION}.json"))
    when = datetime(2026, 11, 30, 0, 4, 33, tzinfo=UTC)
    failure = DeadLetterFailure("query", "order.placed data does not match its schema", 3, when, when)
    origin = DeadLetterOrigin("order.events", 0, 7, ORDER_ID)
    original = encode(
        Envelope(
            id=ORDER_ID,
            source="/services/payment",
            subject=PAYMENT_ID,
            sequence=3,
            time=when,
            correlation_id=ORDER_ID,
            causation_id=ORDER_ID,
            data=PaymentCaptured(
                order_id=ORDER_ID, payment_id=PAYMENT_ID, amount=Money(amount_cents=1, currency="EUR")
            ),
        )
    )
    for written in (original, b"{}", b"\xff not json"):  # a CloudEvent kept; anything else wrapped
        value = json.loads(make_dead_letter(written, origin, failure)[1])
        assert _errors(validator, value) == [], written
        assert _errors(validator, _without(value, "dlqerror"))
        assert _errors(validator, _with(value, dlqoffset=7))
        assert _errors(validator, _with(value, dlqattempts="0"))
        assert _errors(validator, _with(value, specversion="0.3"))


def test_envelope_schema_describes_the_wire_form() -> None:
    validator = Draft202012Validator(_schema_file("cloudevent.json"))
    value = _envelope(
        PaymentCaptured(order_id=ORDER_ID, payment_id=PAYMENT_ID, amount=Money(amount_cents=3000, currency="EUR")),
        PAYMENT_ID,
        2,
    )
    assert _errors(validator, value) == []
    for attribute in ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"):
        assert _errors(validator, _without(value, attribute)), f"{attribute} is required"
    assert _errors(validator, _without(value, "correlationid", "causationid", "sequence", "schemaversion")) == []
    assert _errors(validator, _with(value, sequence="two"))
    assert _errors(validator, _with(value, schemaversion="v2"))
    assert _errors(validator, _with(value, specversion="0.3"))


def test_asyncapi_payloads_pin_type_version_and_data(document: dict[str, Any]) -> None:
    captured = _envelope(
        PaymentCaptured(order_id=ORDER_ID, payment_id=PAYMENT_ID, amount=Money(amount_cents=3000, currency="EUR")),
        PAYMENT_ID,
        2,
    )
    validator = _payload_validator(document, "payment.captured")
    assert _errors(validator, captured) == []
    assert _errors(validator, _with(captured, schemaversion="1", data=PAYMENT_V1)), "a v1 value passed as v2"
    assert _errors(validator, _with(captured, data=PAYMENT_V1)), "v1 data passed under schemaversion 2"
    assert _errors(validator, _without(captured, "schemaversion")), "without schemaversion it would be read as v1"
    assert _errors(_payload_validator(document, "order.placed"), captured), "a payment fact passed as order.placed"


def _fixture_rows(name: str) -> list[dict[str, Any]]:
    path = FIXTURES_V1 / name
    assert path.is_file(), f"{path.relative_to(ROOT)} (recorded v1 facts) is missing"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_recorded_v1_topic_values_match_the_published_contract(document: dict[str, Any]) -> None:
    """Real values written by the version 1 code: current ones are valid as they are, older ones once upcast."""
    envelope = Draft202012Validator(_schema_file("cloudevent.json"))
    addresses = {c["address"]: c for c in document["channels"].values()}
    validators: dict[str, Any] = {}
    seen_old = 0
    for record in _fixture_rows("topics.jsonl"):
        value = json.loads(record["value"])
        assert _errors(envelope, value) == [], record
        assert value["subject"] == record["key"]
        message_type = value["type"]
        assert f"#/components/messages/{message_type}" in json.dumps(addresses[record["topic"]]["messages"])
        validator = validators.setdefault(message_type, _payload_validator(document, message_type))
        if value["schemaversion"] == str(MESSAGES[message_type].VERSION):
            assert _errors(validator, value) == [], record
        else:
            seen_old += 1
            assert _errors(validator, value), f"an old {message_type} passed as the current version"
            assert _errors(validator, json.loads(encode(decode(record["value"].encode())))) == [], record
    assert seen_old, "the fixtures hold v1 payment facts: none was seen"


@pytest.mark.parametrize("log", ["order_events.jsonl", "payment_events.jsonl", "shipping_events.jsonl"])
def test_recorded_v1_event_logs_match_the_published_data_schemas(log: str) -> None:
    validators: dict[str, Any] = {}
    for row in _fixture_rows(log):
        cls = MESSAGES[row["type"]]
        validator = validators.setdefault(
            cls.TYPE, Draft202012Validator(_schema_file(f"{cls.TYPE}.v{cls.VERSION}.json"))
        )
        current = json.loads(encode_data(decode_data(cls.TYPE, row["schema_version"], json.dumps(row["data"]))))
        assert _errors(validator, current) == [], row
        if row["schema_version"] == cls.VERSION:
            assert _errors(validator, row["data"]) == [], row


# ---------------------------------------------------------------------------------- (d) coverage


def test_every_channel_is_in_the_document_with_its_messages(document: dict[str, Any]) -> None:
    channels = {c["address"]: c for c in document["channels"].values()}
    assert set(channels) == {c.topic for c in CHANNELS}
    for channel in CHANNELS:
        listed = channels[channel.topic]["messages"]
        if channel.dead_letters:
            (ref,) = listed.values()
            message = _resolve(document, ref["$ref"])
            assert message["payload"] == {"$ref": f"#/components/schemas/dead-letter.v{publish.DEAD_LETTER_VERSION}"}
        else:
            assert list(listed) == [cls.TYPE for cls in channel.messages]
            for cls in channel.messages:
                message = _resolve(document, listed[cls.TYPE]["$ref"])
                assert message["name"] == cls.TYPE
                assert message["contentType"] == "application/cloudevents+json"
                overlay = message["payload"]["allOf"][1]["properties"]
                assert overlay["type"] == {"const": cls.TYPE}
                assert overlay["schemaversion"] == {"const": str(cls.VERSION)}
                assert overlay["data"] == {"$ref": f"#/components/schemas/{cls.TYPE}.v{cls.VERSION}"}
        for message_ref in listed.values():
            key = _resolve(document, message_ref["$ref"])["bindings"]["kafka"]["key"]
            assert key == {"type": "string", "description": channel.key}


def test_every_message_is_on_its_channel_or_is_a_private_fact(document: dict[str, Any]) -> None:
    on_channels = json.dumps(document["channels"])
    for cls in ALL_MESSAGES:
        assert f"{cls.TYPE}.v{cls.VERSION}" in document["components"]["schemas"], cls.TYPE
        if cls.TOPIC is None:
            assert cls in SAGA_FACTS + CUSTOMER_FACTS
            assert cls.TYPE not in document["components"]["messages"]
            assert f"/{cls.TYPE}'" not in on_channels and f'/{cls.TYPE}"' not in on_channels
            assert (
                "never leaves the order service's log"
                in document["components"]["schemas"][f"{cls.TYPE}.v{cls.VERSION}"]["description"]
            )
        else:
            assert f'"#/components/messages/{cls.TYPE}"' in on_channels, cls.TYPE


def test_one_operation_per_sender_and_receiver_of_each_channel(document: dict[str, Any]) -> None:
    expected: dict[str, tuple[str, str, str]] = {}
    for channel in CHANNELS:
        cid = channel.topic.replace(".", "_")
        expected |= {f"{s}_sends_{cid}": ("send", s, cid) for s in channel.senders}
        expected |= {f"{r}_receives_{cid}": ("receive", r, cid) for r in channel.receivers}
    operations = document["operations"]
    assert set(operations) == set(expected)
    assert "order_sends_order_events" in operations and "operator_receives_order_events_dlq" in operations
    for name, (action, service, cid) in expected.items():
        operation = operations[name]
        assert operation["action"] == action
        assert operation["channel"] == {"$ref": f"#/channels/{cid}"}
        assert {"name": service} in operation["tags"]
        for message in operation["messages"]:  # AsyncAPI 3: an operation's messages are its channel's
            assert message["$ref"].startswith(f"#/channels/{cid}/messages/")
    assert {t["name"] for t in document["info"]["tags"]} == {"order", "payment", "shipping", "query", "operator"}


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from [value] if key == "$ref" else refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = list(refs(document))
    assert len(found) > 100
    for ref in found:
        _resolve(document, ref)


def test_catalogue_lists_every_topic_message_and_upcaster() -> None:
    text = (ROOT / publish.EVENTS_FILE).read_text(encoding="utf-8")
    assert "make contract" in text.splitlines()[0] and "do not edit by hand" in text.splitlines()[0]
    for channel in CHANNELS:
        assert f"## {channel.topic}\n" in text
    for cls in ALL_MESSAGES:
        assert f"### `{cls.TYPE}` v{cls.VERSION}\n" in text
    for message_type, version in registered_steps():
        assert f"| `{message_type}` | v{version} → v{version + 1} |" in text


def test_without_npm_the_missing_spec_is_an_error_not_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncapi_spec, "SCHEMA_FILE", tmp_path / "absent" / "3.0.0.json")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(asyncapi_spec.SpecUnavailable, match="npm is needed"):
        asyncapi_spec.ensure()

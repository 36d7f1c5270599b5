"""Every message on every topic keeps the published contract: the committed JSON Schemas.

After this session's journeys (and a handful run here, so that every message type is on the
topics), every message of every event, command and dead-letter topic is read from the
beginning and validated with `jsonschema` (Draft 2020-12) against docs/schemas/: the
CloudEvents envelope against `cloudevent.json` and its `data` against
`<type>.v<schemaversion>.json`; a dead letter against `dead-letter.v2.json`. The schemas are
what `python -m shared.contract.publish` generated and the repository committed: they are the
contract other teams build against, so a message that breaks them breaks those teams. The one
exception is a message a consumer dead-lettered (a dead letter names its topic, partition and
offset): poison, such as test_dlq.py sends, is what the DLQ is for.

On a stack whose topics hold messages written by code older than the committed contract (a
long-lived `make up` stack), a message of a version no longer published fails here too: that
is what such a stack really carries.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from client import COMMAND_TOPICS, DLQ_TOPICS, EVENT_TOPICS, TOPIC_TYPES, SystemClient, expect, new_customer, order_body
from jsonschema import Draft202012Validator, FormatChecker
from streams import KafkaTap, WireMessage, read_topics

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
ENVELOPE_SCHEMA = "cloudevent"
DEAD_LETTER_SCHEMA = "dead-letter.v2"
#: The fields of a dead letter written before dead letters were CloudEvents (version 1, plain
#: JSON): the DLQ topics keep them for ever, so a long-lived stack may still hold some.
DEAD_LETTER_V1_FIELDS = frozenset({"consumer", "error", "failed_at", "origin", "value_base64"})
REPORTED = 60  # at most this many errors are listed in a failure


def _rfc3339(value: object) -> bool:
    """RFC 3339 date-time: a date, a time and a zone (jsonschema checks it only with extra packages)."""
    if not isinstance(value, str):
        return True
    return "T" in value.upper() and datetime.fromisoformat(value).tzinfo is not None


FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_rfc3339)


@cache
def validator(name: str) -> Draft202012Validator | None:
    """The validator of docs/schemas/<name>.json; None when the repository publishes no such schema."""
    path = SCHEMAS / f"{name}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


def schema_errors(name: str, document: Any) -> list[str]:
    v = validator(name)
    if v is None:
        return [f"no committed schema docs/schemas/{name}.json"]
    return [f"{name}: {e.message} (at {e.json_path})" for e in sorted(v.iter_errors(document), key=str)]


def contract_errors(m: WireMessage) -> tuple[str | None, list[str]]:
    """(the schema `data` was checked against, what breaks the contract) for one record."""
    try:
        document = json.loads(m.value or b"")
    except ValueError as exc:
        return None, [f"not JSON: {exc}"]
    if m.topic in DLQ_TOPICS:
        if isinstance(document, dict) and set(document) == DEAD_LETTER_V1_FIELDS:
            return "dead-letter.v1", _base64_errors(document, "value_base64")
        errors = schema_errors(DEAD_LETTER_SCHEMA, document)
        if not errors and "data_base64" in document:
            errors += _base64_errors(document, "data_base64")
        return DEAD_LETTER_SCHEMA, errors
    errors = schema_errors(ENVELOPE_SCHEMA, document)
    if errors or not isinstance(document, dict):
        return None, errors
    data_schema = f"{document['type']}.v{document.get('schemaversion', '1')}"
    return data_schema, schema_errors(data_schema, document["data"])


def dead_letter_origin(m: WireMessage) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the message a dead letter holds, if it says."""
    try:
        letter = json.loads(m.value or b"")
        return letter["dlqtopic"], int(letter["dlqpartition"]), int(letter["dlqoffset"])
    except (ValueError, KeyError, TypeError):
        return None


def _base64_errors(document: dict[str, Any], field: str) -> list[str]:
    try:
        base64.b64decode(document[field], validate=True)
    except (ValueError, TypeError) as exc:
        return [f"{field} is not base64: {exc}"]
    return []


def test_the_committed_schemas_refuse_what_breaks_the_contract() -> None:
    """The check cannot pass vacuously: a broken envelope, broken data, an unknown type and a
    version nobody publishes are all reported."""
    good: dict[str, Any] = {
        "specversion": "1.0",
        "id": "3f0e4a5c-1d7b-4b9e-9a57-1f1a3e5d9c10",
        "source": "/services/payment",
        "type": "payment.captured",
        "subject": "p-1",
        "time": "2026-11-30T00:04:33.430810Z",
        "datacontenttype": "application/json",
        "correlationid": "o-1",
        "causationid": "c-1",
        "sequence": "2",
        "schemaversion": "2",
        "data": {"order_id": "o-1", "payment_id": "p-1", "amount": {"amount_cents": 3000, "currency": "EUR"}},
    }

    def check(doc: dict[str, Any], topic: str = "payment.events") -> list[str]:
        return contract_errors(WireMessage(topic, 0, 0, b"p-1", json.dumps(doc).encode()))[1]

    assert check(good) == []
    assert check({**good, "data": {**good["data"], "amount": {"amount_cents": "3000", "currency": "EUR"}}})
    assert check({**good, "data": {"order_id": "o-1", "payment_id": "p-1", "amount_cents": 3000, "currency": "EUR"}})
    assert check({**good, "time": "yesterday"}) and check({**good, "sequence": "-1"})
    assert check({**good, "type": "payment.teleported"}) == [
        "no committed schema docs/schemas/payment.teleported.v2.json"
    ]
    assert check({**good, "schemaversion": "1"}) == ["no committed schema docs/schemas/payment.captured.v1.json"]
    assert contract_errors(WireMessage("order.events", 0, 0, None, b"\x00 no json"))[1][0].startswith("not JSON")
    assert check({"consumer": "c"}, topic="payment.events.dlq")
    letter = {
        **good,
        "dlqerror": "boom",
        "dlqconsumer": "order.saga",
        "dlqattempts": "3",
        "dlqfirstfailure": "2026-11-30T00:04:34Z",
        "dlqlastfailure": "2026-11-30T00:04:35Z",
        "dlqtopic": "payment.events",
        "dlqpartition": "0",
        "dlqoffset": "7",
    }
    assert check(letter, topic="payment.events.dlq") == []
    assert check({**letter, "dlqattempts": 3}, topic="payment.events.dlq")
    assert check({k: v for k, v in letter.items() if k != "dlqconsumer"}, topic="payment.events.dlq")
    undecodable = {**letter, "type": "dead_letter.undecodable", "data_base64": "not base64!"}
    del undecodable["data"]
    assert check(undecodable, topic="payment.events.dlq")


async def run_journeys(client: SystemClient, tap: KafkaTap) -> None:
    """Confirmed, declined, unserved country, cancelled after capture, dispatched and delivered:
    between them every message type there is. Done once each order's last fact is on Kafka."""

    async def confirmed() -> tuple[str, str]:
        placed, _ = await client.place_and_confirm(order_body(new_customer("wire-ok")))
        return placed["order_id"], "order.confirmed"

    async def declined() -> tuple[str, str]:
        placed = await client.place_ok(order_body(new_customer("wire-no"), payment_token="tok_decline"))
        await client.wait_order(placed["order_id"], {"REJECTED"})
        return placed["order_id"], "order.rejected"

    async def unserved() -> tuple[str, str]:
        placed = await client.place_ok(order_body(new_customer("wire-aq"), country="AQ"))
        await client.wait_order(placed["order_id"], {"CANCELLED"})
        return placed["order_id"], "payment.voided"

    async def cancelled_after_capture() -> tuple[str, str]:
        placed, _ = await client.place_and_confirm(order_body(new_customer("wire-refund")))
        expect(await client.cancel(placed["order_id"]), 202)
        await client.wait_order(placed["order_id"], {"CANCELLED"})
        return placed["order_id"], "payment.refunded"

    async def delivered() -> tuple[str, str]:
        placed, _ = await client.place_and_confirm(order_body(new_customer("wire-delivered")))
        await client.ship_and_deliver(placed["order_id"])
        return placed["order_id"], "order.delivered"

    done = await asyncio.gather(confirmed(), declined(), unserved(), cancelled_after_capture(), delivered())
    for order_id, last in done:
        await tap.wait_types(order_id, {last, "order.placed"})


async def test_every_message_on_every_topic_validates_against_the_committed_schemas(
    client: SystemClient, tap: KafkaTap
) -> None:
    await run_journeys(client, tap)
    messages = await read_topics(client.endpoints.kafka, EVENT_TOPICS + COMMAND_TOPICS + DLQ_TOPICS)
    dead_lettered = {origin for m in messages if m.topic in DLQ_TOPICS and (origin := dead_letter_origin(m))}
    failures: list[str] = []
    validated: Counter[str] = Counter()
    for m in messages:
        schema, errors = contract_errors(m)
        if errors and (m.topic, m.partition, m.offset) in dead_lettered:
            continue  # poison a consumer dead-lettered: refused, as the contract says
        failures += [f"{m.where}: {e}" for e in errors]
        if schema is not None and not errors:
            validated[schema] += 1
    per_topic = Counter(m.topic for m in messages)
    assert not failures, (
        f"{len(failures)} contract violations in {len(messages)} messages "
        f"(per topic: {dict(per_topic)}):\n  " + "\n  ".join(failures[:REPORTED])
    )
    assert all(per_topic[t] for t in EVENT_TOPICS + COMMAND_TOPICS), f"a topic is empty: {dict(per_topic)}"
    seen_types = {schema.rsplit(".v", 1)[0] for schema in validated}
    every_type = set().union(*TOPIC_TYPES.values())
    assert every_type <= seen_types, f"never validated: {sorted(every_type - seen_types)}"

"""The messages on the wire (docs/EVENTS.md): every message of an order's flow, read straight from
Kafka, is a CloudEvents 1.0 structured-mode document keyed by its aggregate id, in the schema
version of its type, with the causal chain intact."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import datetime

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from client import (
    ALL_TOPICS,
    COMMAND_TOPICS,
    DLQ_TOPICS,
    EVENT_TOPICS,
    TOPIC_TYPES,
    SystemClient,
    expect,
    new_customer,
    order_body,
    schema_version,
)
from streams import KafkaTap, TapMessage

SOURCE_OF_TOPIC = {
    "order.events": "/services/order",
    "payment.events": "/services/payment",
    "shipping.events": "/services/shipping",
    "payment.commands": "/services/order",
    "shipping.commands": "/services/order",
}
# Which data field holds the aggregate id (= subject = Kafka key), by topic.
AGGREGATE_FIELD = {
    "order.events": "order_id",
    "payment.events": "payment_id",
    "payment.commands": "payment_id",
    "shipping.events": "shipment_id",
    "shipping.commands": "shipment_id",
}
REQUIRED = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "correlationid",
    "causationid",
    "sequence",
    "schemaversion",
}


def check_envelope(m: TapMessage, order_id: str) -> None:
    v = m.value
    where = f"{m.topic}@{m.partition}/{m.offset} {m.type}"
    assert REQUIRED <= set(v), f"{where}: missing {REQUIRED - set(v)}"
    assert v["specversion"] == "1.0", where
    uuid.UUID(str(v["id"]))  # the event / command id is a UUID
    assert v["source"] == SOURCE_OF_TOPIC[m.topic], where
    assert v["type"] in TOPIC_TYPES[m.topic], f"{where}: {v['type']} does not belong on {m.topic}"
    assert isinstance(v["data"], dict), where
    assert v["data"]["order_id"] == order_id, f"{where}: data.order_id"
    assert v["subject"] == m.key == v["data"][AGGREGATE_FIELD[m.topic]], f"{where}: subject/key/aggregate id"
    stamp = datetime.fromisoformat(str(v["time"]).replace("Z", "+00:00"))
    assert stamp.tzinfo is not None, f"{where}: time without a zone"
    assert v["datacontenttype"] == "application/json", where
    assert v["correlationid"] == order_id, where
    assert isinstance(v["causationid"], str) and v["causationid"], where
    assert isinstance(v["sequence"], str) and v["sequence"].isdigit(), f"{where}: sequence {v['sequence']!r}"
    assert v["schemaversion"] == str(schema_version(m.type)), f"{where}: schemaversion {v['schemaversion']!r}"
    if m.topic in COMMAND_TOPICS:
        assert v["sequence"] == "0", f"{where}: commands carry sequence 0 (docs/EVENTS.md)"
    else:
        assert int(v["sequence"]) >= 1, where


def check_streams(messages: list[TapMessage]) -> None:
    """Per subject: one partition, sequence 1, 2, 3 ... in offset order, each event once."""
    by_subject: dict[str, list[TapMessage]] = defaultdict(list)
    for m in messages:
        if m.topic in EVENT_TOPICS:
            by_subject[str(m.key)].append(m)
    for subject, ms in by_subject.items():
        assert len({(m.topic, m.partition) for m in ms}) == 1, f"{subject} spread over partitions"
        ms.sort(key=lambda m: m.offset)
        seqs = [int(m.value["sequence"]) for m in ms]
        assert seqs == list(range(1, len(ms) + 1)), f"{subject}: sequences {seqs} ({[m.type for m in ms]})"
    ids = [m.value["id"] for m in messages]
    assert len(ids) == len(set(ids)), "a message id appears twice"


async def test_happy_flow_messages_are_cloudevents_with_a_causal_chain(client: SystemClient, tap: KafkaTap) -> None:
    token = f"tok_e2e_{uuid.uuid4().hex}"  # any token but tok_decline authorizes; this one is traceable
    place_req, dispatch_req, deliver_req = (f"e2e-req-{uuid.uuid4()}" for _ in range(3))
    placed = await client.place_ok(order_body(new_customer("wire"), payment_token=token), request_id=place_req)
    order_id = placed["order_id"]
    confirmed = await client.wait_order(order_id, {"CONFIRMED"})
    expect(await client.dispatch(confirmed["shipment_id"], request_id=dispatch_req), 200)
    await client.wait_order(order_id, {"SHIPPED"})
    expect(await client.deliver(confirmed["shipment_id"], request_id=deliver_req), 200)
    await client.wait_order(order_id, {"DELIVERED"})
    wanted = {
        "order.placed",
        "payment.authorize",
        "payment.authorized",
        "shipment.schedule",
        "shipment.scheduled",
        "payment.capture",
        "payment.captured",
        "order.confirmed",
        "shipment.dispatched",
        "order.shipped",
        "shipment.delivered",
        "order.delivered",
    }
    ours = await tap.wait_types(order_id, wanted)

    for m in ours:
        check_envelope(m, order_id)
    check_streams(ours)
    by_type: dict[str, list[TapMessage]] = defaultdict(list)
    for m in ours:
        by_type[m.type].append(m)
    assert set(by_type) == wanted, f"unexpected messages: {set(by_type) - wanted}"
    assert all(len(ms) == 1 for ms in by_type.values()), {t: len(ms) for t, ms in by_type.items()}
    one = {t: ms[0].value for t, ms in by_type.items()}
    assert {m.topic for m in ours} == set(ALL_TOPICS)

    # Every message names the message that caused it: HTTP request -> fact -> command -> fact ...
    # payment.authorize is sent in the same transaction as order.placed, by the same request:
    # it names that request (the order service's documented choice) or order.placed itself.
    assert one["payment.authorize"]["causationid"] in (place_req, one["order.placed"]["id"])
    chain = [
        ("order.placed", place_req),
        ("payment.authorized", one["payment.authorize"]["id"]),
        ("shipment.schedule", one["payment.authorized"]["id"]),
        ("shipment.scheduled", one["shipment.schedule"]["id"]),
        ("payment.capture", one["shipment.scheduled"]["id"]),
        ("payment.captured", one["payment.capture"]["id"]),
        ("order.confirmed", one["payment.captured"]["id"]),
        ("shipment.dispatched", dispatch_req),
        ("order.shipped", one["shipment.dispatched"]["id"]),
        ("shipment.delivered", deliver_req),
        ("order.delivered", one["shipment.delivered"]["id"]),
    ]
    for typ, cause in chain:
        assert one[typ]["causationid"] == cause, f"{typ} caused by {one[typ]['causationid']}, expected {cause}"

    # Data of the facts (docs/EVENTS.md) and the token staying inside payment.authorize.
    assert one["order.placed"]["data"]["total_cents"] == placed["total_cents"]
    assert one["payment.authorize"]["data"]["payment_token"] == token
    assert one["payment.captured"]["data"]["amount"] == {"amount_cents": placed["total_cents"], "currency": "EUR"}
    assert "amount_cents" not in one["payment.captured"]["data"], "version 2: the amount is one Money value"
    assert one["payment.authorize"]["data"]["amount_cents"] == placed["total_cents"], "commands keep their v1 shape"
    leaks = [m.type for m in ours if token in json.dumps(m.value) and m.type != "payment.authorize"]
    assert leaks == [], f"the payment token leaked into {leaks}"
    timeline = await client.wait_timeline(order_id, ["order.delivered"])
    assert token not in json.dumps(timeline) and token not in json.dumps(await client.order_ok(order_id))
    assert token not in json.dumps(expect(await client.order_events(order_id), 200))
    # The write side and the wire agree on the facts' ids.
    assert [str(e["event_id"]) for e in expect(await client.order_events(order_id), 200)] == [
        m.value["id"] for m in sorted((m for m in ours if m.topic == "order.events"), key=lambda m: m.offset)
    ]


async def test_compensation_messages_cover_every_type(client: SystemClient, tap: KafkaTap) -> None:
    """A decline, a shipping failure and a cancel after capture: with the happy flow, every type on the topics."""
    declined = (await client.place_ok(order_body(new_customer("wire-decline"), payment_token="tok_decline")))[
        "order_id"
    ]
    failed = (await client.place_ok(order_body(new_customer("wire-aq"), country="AQ")))["order_id"]
    placed, _ = await client.place_and_confirm(order_body(new_customer("wire-cancel")))
    cancelled = placed["order_id"]
    expect(await client.cancel(cancelled), 202)
    await client.wait_order(declined, {"REJECTED"})
    await client.wait_order(failed, {"CANCELLED"})
    await client.wait_order(cancelled, {"CANCELLED"})
    expected = {
        declined: {"order.placed", "payment.authorize", "payment.declined", "order.rejected"},
        failed: {
            "order.placed",
            "payment.authorize",
            "payment.authorized",
            "shipment.schedule",
            "shipment.failed",
            "payment.void",
            "payment.voided",
            "order.cancelled",
        },
        cancelled: {
            "order.placed",
            "payment.authorized",
            "shipment.scheduled",
            "payment.captured",
            "order.confirmed",
            "shipment.cancel",
            "shipment.cancelled",
            "payment.refund",
            "payment.refunded",
            "order.cancelled",
        },
    }
    seen: set[str] = set()
    for order_id, types in expected.items():
        ours = await tap.wait_types(order_id, types)
        for m in ours:
            check_envelope(m, order_id)
        check_streams(ours)
        seen |= {m.type for m in ours}
        finals = [m.value for m in ours if m.type in ("order.rejected", "order.cancelled")]
        assert len(finals) == 1, f"{order_id}: {[f['type'] for f in finals]}"
        assert finals[0]["data"]["reason"] == (await client.order_ok(order_id))["reason"]
    happy = {"order.shipped", "order.delivered", "shipment.dispatched", "shipment.delivered", "payment.capture"}
    assert seen | happy == set().union(*TOPIC_TYPES.values()), set().union(*TOPIC_TYPES.values()) - seen - happy


async def test_topics_exist_and_event_topics_keep_facts_forever(client: SystemClient) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=client.endpoints.kafka)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        wanted = set(ALL_TOPICS) | set(DLQ_TOPICS)
        assert wanted <= topics, f"missing topics: {wanted - topics}"
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in EVENT_TOPICS])
    finally:
        await admin.close()
    for resp in responses:
        for res in resp.to_object()["resources"]:
            assert res["error_code"] == 0, res
            config = {e["config_names"]: e["config_value"] for e in res["config_entries"]}
            assert config["retention.ms"] == "-1", f"{res['resource_name']} retention.ms={config['retention.ms']}"
            assert config.get("retention.bytes", "-1") == "-1", res["resource_name"]
            assert "compact" not in config.get("cleanup.policy", "delete"), f"{res['resource_name']} is compacted"

"""The topics the previous code (schema version 1 everywhere) filled, through today's codec and
projection: the same summaries and timelines its query service answered, and the same models
whether the log holds v1, v2 or a mix of both."""

from __future__ import annotations

import random

import msgspec
import pytest

from services.query.api import OrderSummary, TimelineEntry
from services.query.projection import OrderReadModel, Received, causal_order, project
from shared.contract import PaymentFact
from tests.unit.query.v1_fixtures import (
    TopicMessage,
    expected_order,
    expected_timeline,
    order_ids,
    topic_messages,
)


def models_of(messages: list[TopicMessage]) -> dict[str, OrderReadModel]:
    return project(m.envelope() for m in messages).orders


def facts_of(messages: list[TopicMessage]) -> list[Received]:
    return project(m.envelope() for m in messages).facts


def test_the_fixture_holds_every_fact_of_the_event_topics_at_schema_version_1() -> None:
    messages = topic_messages()
    assert len(messages) == 130
    assert {msgspec.json.decode(m.value)["schemaversion"] for m in messages} == {"1"}
    assert len(facts_of(list(messages))) == 130


def test_v1_payment_facts_arrive_upcast_to_the_current_money_shape() -> None:
    raw = {m.envelope().id: msgspec.json.decode(m.value)["data"] for m in topic_messages()}
    payments = [(f.id, f.data) for f in facts_of(list(topic_messages())) if isinstance(f.data, PaymentFact)]
    assert len(payments) == 40
    for fact_id, data in payments:
        assert isinstance(data, PaymentFact)
        assert (data.amount.amount_cents, data.amount.currency) == (
            raw[fact_id]["amount_cents"],
            raw[fact_id]["currency"],
        )
        assert "amount_cents" not in msgspec.to_builtins(data)


@pytest.mark.parametrize("order_id", order_ids())
def test_v1_topics_give_the_summary_the_previous_service_answered(order_id: str) -> None:
    model = models_of(list(topic_messages()))[order_id]
    assert OrderSummary.of(model).model_dump(mode="json") == expected_order(order_id)


@pytest.mark.parametrize("order_id", order_ids())
def test_v1_topics_give_the_timeline_the_previous_service_answered_with_data_upcast(order_id: str) -> None:
    facts = [f for f in facts_of(list(topic_messages())) if f.data.order_id == order_id]
    events = [TimelineEntry.of(f).model_dump(mode="json") for f in causal_order(facts)]
    assert events == expected_timeline(order_id)["events"]


def test_v1_v2_and_mixed_logs_in_any_order_give_the_same_models() -> None:
    v1 = list(topic_messages())
    v2 = [m.as_v2() for m in v1]
    # payment facts are v2, payment.authorized/declined v3, shipment.scheduled/failed v2 (customer_id)
    assert {msgspec.json.decode(m.value)["schemaversion"] for m in v2} == {"1", "2", "3"}
    ids = order_ids()
    mixed = [m2 if ids.index(m1.envelope().data.order_id) % 2 else m1 for m1, m2 in zip(v1, v2)]
    reference = models_of(v2)
    assert models_of(v1) == reference
    assert models_of(mixed) == reference
    both = mixed + v2  # the same facts twice, once per version: a repeat changes nothing
    random.Random(3).shuffle(both)
    assert models_of(both) == reference

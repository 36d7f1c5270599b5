"""The payment service against real Kafka and PostgreSQL: commands in, facts out, REST views.

Every test runs its own app on a scratch database, produces commands onto the real
`payment.commands` topic with fresh order ids, and checks both the REST state and the facts
the relay published to `payment.events` (a topic shared with the rest of the session).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from infra.stack import LocalStack
from services.payment.app import SCHEMA, create_app
from services.payment.settings import PaymentSettings
from shared.contract import PaymentAuthorized, message_class
from shared.ids import derived_id
from shared.runtime import Runtime
from tests.integration.kafka_support import read_topic, wait_for
from tests.integration.participant_support import (
    command_message,
    connected,
    facts_about,
    refused_count,
    restore_v1_log,
    send,
    state_once,
    v1_expected,
)
from tests.integration.service_support import running, scratch_database

pytestmark = pytest.mark.integration

COMMANDS = "payment.commands"
EVENTS = "payment.events"
LIMIT = 1_000_000


def settings_for(stack: LocalStack, dsn: str) -> PaymentSettings:
    return PaymentSettings(
        database_url=dsn,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        payment_limit_cents=LIMIT,
        relay_poll_interval_s=0.1,
        db_pool_max_size=10,
    )


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with scratch_database(stack, "payment") as dsn, running(create_app(settings_for(stack, dsn))) as http:
        yield http


class Flow:
    """One order's payment: builds its commands the way the saga does."""

    def __init__(self, amount_cents: int = 4200, token: str = "tok_ok") -> None:
        self.order_id = str(uuid.uuid4())
        self.payment_id = derived_id(self.order_id, "payment")
        self.amount_cents = amount_cents
        self.token = token

    def authorize(self, command_id: uuid.UUID | None = None) -> tuple[str, bytes, str]:
        data = {
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "amount_cents": self.amount_cents,
            "currency": "EUR",
            "payment_token": self.token,
        }
        return self.command("payment.authorize", data, command_id)

    def capture(self) -> tuple[str, bytes, str]:
        return self.command("payment.capture", {"payment_id": self.payment_id, "order_id": self.order_id})

    def void(self, reason: str = "shipping_failed:destination_not_served") -> tuple[str, bytes, str]:
        return self.command(
            "payment.void", {"payment_id": self.payment_id, "order_id": self.order_id, "reason": reason}
        )

    def refund(self, reason: str = "cancelled_by_customer") -> tuple[str, bytes, str]:
        return self.command(
            "payment.refund", {"payment_id": self.payment_id, "order_id": self.order_id, "reason": reason}
        )

    def command(self, kind: str, data: dict[str, Any], command_id: uuid.UUID | None = None) -> tuple[str, bytes, str]:
        return command_message(kind, self.payment_id, data, correlation_id=self.order_id, command_id=command_id)

    @property
    def url(self) -> str:
        return f"/payments/{self.payment_id}"


def assert_fact(fact: dict[str, Any], flow: Flow, kind: str, caused_by: str, sequence: int) -> None:
    """The published CloudEvent carries the envelope (docs/EVENTS.md) and the command's causal ids."""
    assert fact["type"] == kind
    assert fact["specversion"] == "1.0"
    assert fact["source"] == "/services/payment"
    assert fact["subject"] == flow.payment_id
    assert fact["correlationid"] == flow.order_id
    assert fact["causationid"] == caused_by
    assert fact["sequence"] == str(sequence)
    assert fact["data"]["order_id"] == flow.order_id
    assert fact["data"]["payment_id"] == flow.payment_id


async def test_authorize_publishes_authorized_with_causal_ids_and_serves_the_state(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    flow = Flow(amount_cents=LIMIT)  # exactly at the limit is still fine
    authorize = flow.authorize()
    await send(stack, COMMANDS, authorize)

    state = await state_once(client, flow.url, status="AUTHORIZED")
    assert state == {
        "payment_id": flow.payment_id,
        "order_id": flow.order_id,
        "status": "AUTHORIZED",
        "amount_cents": LIMIT,
        "currency": "EUR",
        "version": 1,
    }
    [fact] = await facts_about(stack, EVENTS, flow.payment_id, 1)
    assert_fact(fact, flow, "payment.authorized", caused_by=authorize[2], sequence=1)
    assert fact["schemaversion"] == str(PaymentAuthorized.VERSION)
    assert fact["data"] == {
        "payment_id": flow.payment_id,
        "order_id": flow.order_id,
        "amount": {"amount_cents": LIMIT, "currency": "EUR"},
    }
    assert "payment_token" not in fact["data"]

    events = (await client.get(f"{flow.url}/events")).json()
    assert [(e["type"], e["version"], e["correlation_id"], e["causation_id"]) for e in events] == [
        ("payment.authorized", 1, flow.order_id, authorize[2])
    ]
    assert events[0]["event_id"] == fact["id"]
    assert (events[0]["schema_version"], events[0]["data"]) == (PaymentAuthorized.VERSION, fact["data"])
    assert (await client.get("/payments", params={"order_id": flow.order_id})).json() == [state]


async def test_decline_token_and_amount_over_limit_are_declined_with_reasons(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    card = Flow(token="tok_decline")
    too_much = Flow(amount_cents=LIMIT + 1)
    await send(stack, COMMANDS, card.authorize(), too_much.authorize())

    for flow, reason in ((card, "card_declined"), (too_much, "amount_over_limit")):
        state = await state_once(client, flow.url, status="DECLINED")
        assert (state["reason"], state["version"], state["amount_cents"]) == (reason, 1, flow.amount_cents)
        [fact] = await facts_about(stack, EVENTS, flow.payment_id, 1)
        assert fact["type"] == "payment.declined"
        assert fact["data"]["reason"] == reason


async def test_capture_refund_and_void_follow_the_payment_lifecycle(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    kept, dropped = Flow(), Flow()
    commands = [kept.authorize(), kept.capture(), kept.refund("cancelled_by_customer")]
    voiding = [dropped.authorize(), dropped.void("shipping_failed:destination_not_served")]
    await send(stack, COMMANDS, *commands, *voiding)

    refunded = await state_once(client, kept.url, status="REFUNDED")
    assert (refunded["version"], refunded["reason"]) == (3, "cancelled_by_customer")
    facts = await facts_about(stack, EVENTS, kept.payment_id, 3)
    for n, (fact, kind, command) in enumerate(
        zip(facts, ("payment.authorized", "payment.captured", "payment.refunded"), commands), start=1
    ):
        assert_fact(fact, kept, kind, caused_by=command[2], sequence=n)
        assert fact["data"]["amount"] == {"amount_cents": kept.amount_cents, "currency": "EUR"}

    voided = await state_once(client, dropped.url, status="VOIDED")
    assert (voided["version"], voided["reason"]) == (2, "shipping_failed:destination_not_served")
    facts = await facts_about(stack, EVENTS, dropped.payment_id, 2)
    assert_fact(facts[1], dropped, "payment.voided", caused_by=voiding[1][2], sequence=2)
    assert facts[1]["data"]["reason"] == "shipping_failed:destination_not_served"


async def test_a_redelivered_command_message_has_one_effect(client: httpx.AsyncClient, stack: LocalStack) -> None:
    flow = Flow()
    authorize = flow.authorize()
    # The same message twice (a producer retry / relay re-publish), then a capture as a marker:
    # on one partition it is handled after both copies.
    await send(stack, COMMANDS, authorize, authorize, flow.capture())

    await state_once(client, flow.url, status="CAPTURED")
    events = (await client.get(f"{flow.url}/events")).json()
    assert [e["type"] for e in events] == ["payment.authorized", "payment.captured"]
    facts = await facts_about(stack, EVENTS, flow.payment_id, 2)
    assert [f["type"] for f in facts] == ["payment.authorized", "payment.captured"]


async def test_a_retried_command_is_answered_again_with_the_recorded_fact(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    flow = Flow()
    first = flow.authorize()
    await send(stack, COMMANDS, first)
    [original] = await facts_about(stack, EVENTS, flow.payment_id, 1)

    retry, capture, capture_retry = flow.authorize(), flow.capture(), flow.capture()  # new message ids
    await send(stack, COMMANDS, retry, capture, capture_retry)
    facts = await facts_about(stack, EVENTS, flow.payment_id, 4)
    assert [f["type"] for f in facts] == [
        "payment.authorized",
        "payment.authorized",
        "payment.captured",
        "payment.captured",
    ]
    assert facts[1] == original  # the same envelope: same id, same causal ids, same time
    assert facts[3] == facts[2]
    assert facts[2]["causationid"] == capture[2]

    state = await state_once(client, flow.url, status="CAPTURED")
    assert state["version"] == 2
    assert [e["event_id"] for e in (await client.get(f"{flow.url}/events")).json()] == [original["id"], facts[2]["id"]]


async def test_a_declined_payment_is_re_answered_as_declined(client: httpx.AsyncClient, stack: LocalStack) -> None:
    flow = Flow(token="tok_decline")
    await send(stack, COMMANDS, flow.authorize())
    [declined] = await facts_about(stack, EVENTS, flow.payment_id, 1)
    await send(stack, COMMANDS, flow.authorize())
    facts = await facts_about(stack, EVENTS, flow.payment_id, 2)
    assert facts == [declined, declined]


async def test_refused_commands_append_nothing_and_are_counted(client: httpx.AsyncClient, stack: LocalStack) -> None:
    voided, never = Flow(), Flow()
    capture_refused = refused_count("payment", "payment.capture", "illegal_payment_transition")
    void_refused = refused_count("payment", "payment.void", "payment_not_found")

    authorize = voided.authorize()
    await send(
        stack,
        COMMANDS,
        authorize,
        voided.void(),
        voided.capture(),  # refused: the money was released
        voided.authorize(),  # marker after the refusal: re-answered with the first fact
        never.void(),  # refused: no such payment, and no tombstone is left behind
        never.authorize(),  # so a later authorize still works
    )
    facts = await facts_about(stack, EVENTS, voided.payment_id, 3)
    assert [f["type"] for f in facts] == ["payment.authorized", "payment.voided", "payment.authorized"]
    assert facts[2]["id"] == facts[0]["id"]
    events = (await client.get(f"{voided.url}/events")).json()
    assert [e["type"] for e in events] == ["payment.authorized", "payment.voided"]

    await state_once(client, never.url, status="AUTHORIZED", version=1)
    assert refused_count("payment", "payment.capture", "illegal_payment_transition") == capture_refused + 1
    assert refused_count("payment", "payment.void", "payment_not_found") == void_refused + 1
    assert "commands_refused_total" in (await client.get("/metrics")).text


async def test_a_malformed_command_is_dead_lettered_and_the_next_one_processed(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    flow = Flow()
    bad = flow.command("payment.authorize", {"payment_id": flow.payment_id, "order_id": flow.order_id})
    await send(stack, COMMANDS, bad, flow.authorize())

    await state_once(client, flow.url, status="AUTHORIZED", version=1)

    def mine(seen: list[Any]) -> list[dict[str, Any]]:
        return [s.value for s in seen if s.value.get("id") == bad[2]]  # a dead letter keeps the original's id

    dead = mine(await read_topic(stack.kafka_bootstrap, COMMANDS + ".dlq", until=lambda s: bool(mine(s))))
    assert dead and "amount_cents" in dead[0]["dlqerror"]
    assert dead[0]["dlqconsumer"] == "payment.commands"
    assert dead[0]["data"] == orjson.loads(bad[1])["data"], "the original data, as it was"


async def test_unknown_ids_are_404_and_order_id_is_required(client: httpx.AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    for url in (f"/payments/{unknown}", f"/payments/{unknown}/events"):
        response = await client.get(url)
        assert response.status_code == 404
        assert response.json()["code"] == "payment_not_found"
    assert (await client.get("/payments", params={"order_id": unknown})).json() == []
    missing = await client.get("/payments")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "order_id"]


async def test_health_metrics_and_openapi(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["database"] == health.json()["kafka"] == "up"
    metrics = (await client.get("/metrics")).text
    assert "events_appended_total" in metrics and "consumer_lag_messages" in metrics
    openapi = (await client.get("/openapi.json")).json()
    assert {"/payments", "/payments/{payment_id}", "/payments/{payment_id}/events"} <= set(openapi["paths"])
    assert openapi["components"]["schemas"]["PaymentView"]["examples"][0]["status"] == "AUTHORIZED"
    assert (await client.get("/docs")).status_code == 200


# ------------------------------------------------------------------------------ scale-out


@asynccontextmanager
async def replicas(stack: LocalStack, dsn: str, n: int) -> AsyncIterator[list[FastAPI]]:
    """n instances of the service on one database, all in the `payment.commands` group."""
    async with AsyncExitStack() as stack_of_apps:
        apps = [create_app(settings_for(stack, dsn)) for _ in range(n)]
        for app in apps:
            await stack_of_apps.enter_async_context(running(app))
        yield apps


def runtime(app: FastAPI) -> Runtime:
    value: Runtime = app.state.runtime
    return value


def assignment(app: FastAPI) -> set[int]:
    consumer = runtime(app).consumers[0]._consumer
    if consumer is None:
        return set()
    return {tp.partition for tp in consumer.assignment() if tp.topic == COMMANDS}


async def test_two_replicas_in_one_group_answer_every_command_exactly_once(stack: LocalStack) -> None:
    flows = [Flow(token="tok_decline" if i % 10 == 0 else "tok_ok") for i in range(60)]
    async with scratch_database(stack, "payment") as dsn, replicas(stack, dsn, 2) as (a, b):
        # Both members hold partitions before the load arrives, so both really take part.
        await wait_for(lambda: bool(assignment(a)) and bool(assignment(b)), timeout_s=60)
        assert not assignment(a) & assignment(b)
        per_flow = []
        for flow in flows:
            commands = [flow.authorize(), flow.authorize()]  # a retry with a new message id
            if flow.token == "tok_ok":
                commands.append(flow.capture())
            per_flow.append(commands)
        messages = [m for commands in per_flow for m in commands]
        # Four producers at once; each keeps its flows' commands in order (one key, one partition).
        await asyncio.gather(
            *(send(stack, COMMANDS, *[m for commands in per_flow[i::4] for m in commands]) for i in range(4))
        )

        pool = runtime(a).pool
        ids = [f.payment_id for f in flows]
        expected_facts = sum(1 if f.token == "tok_decline" else 2 for f in flows)

        async def all_answered() -> bool:
            async with pool.acquire() as conn:
                n = await conn.fetchval("SELECT count(*) FROM events WHERE stream_id = ANY($1::text[])", ids)
            return bool(n == expected_facts)

        await wait_for(all_answered, timeout_s=90)
        async with pool.acquire() as conn:
            handled = await conn.fetchval(
                "SELECT count(*) FROM inbox WHERE consumer = 'payment.commands' AND message_id = ANY($1::text[])",
                [m[2] for m in messages],
            )
            rows = await conn.fetch(
                "SELECT stream_id, array_agg(type ORDER BY version) AS types FROM events"
                " WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
                ids,
            )
        assert handled == len(messages)
        by_stream = {r["stream_id"]: list(r["types"]) for r in rows}
        for flow in flows:
            want = ["payment.declined"] if flow.token == "tok_decline" else ["payment.authorized", "payment.captured"]
            assert by_stream[flow.payment_id] == want

        # Every payment's answers are on the topic: one distinct fact per effect, the retried
        # authorize answered with the very same event id.
        wanted = set(ids)
        seen = await read_topic(
            stack.kafka_bootstrap,
            EVENTS,
            until=lambda s: len([x for x in s if x.value["subject"] in wanted]) >= len(messages),
            timeout_s=90,
        )
        published: dict[str, list[dict[str, Any]]] = {}
        for s in seen:
            if s.value["subject"] in wanted:
                published.setdefault(s.value["subject"], []).append(s.value)
        for flow in flows:
            facts = published[flow.payment_id]
            answers = len(by_stream[flow.payment_id]) + 1  # + the re-answered authorize
            assert len(facts) >= answers
            assert len({f["id"] for f in facts}) == len(by_stream[flow.payment_id])


# ------------------------------------------------------------------------------ a v1 event log


def _as_now(event: dict[str, Any]) -> dict[str, Any]:
    """A v1 payment fact as the API shows it now: upcast to its current version, its flat amount
    one `amount` value (and no `customer_id`: the v1 fact did not know it)."""
    data = {k: v for k, v in event["data"].items() if k not in ("amount_cents", "currency")}
    data["amount"] = {"amount_cents": event["data"]["amount_cents"], "currency": event["data"]["currency"]}
    return {**event, "schema_version": message_class(event["type"]).VERSION, "data": data}


async def test_a_v1_event_log_serves_the_same_answers_and_its_streams_continue_in_v2(stack: LocalStack) -> None:
    expected = v1_expected()["orders"]
    async with scratch_database(stack, "payment") as dsn:
        rows = await restore_v1_log(dsn, SCHEMA, "payment_events", "payment_by_order")
        async with running(create_app(settings_for(stack, dsn))) as client:
            for order_id, order in expected.items():
                answers = order["payment_service"]
                listed = (await client.get("/payments", params={"order_id": order_id})).json()
                assert listed == answers["GET /payments?order_id="], order["journey"]
                for payment in listed:  # the REST view keeps the flat amount
                    assert (await client.get(f"/payments/{payment['payment_id']}")).json() == payment
                for payment_id, events in answers["GET /payments/{id}/events"].items():
                    shown = (await client.get(f"/payments/{payment_id}/events")).json()
                    assert shown == [_as_now(e) for e in events], order["journey"]

            # A captured v1 payment is refunded: the new fact is v2, after the v1 ones.
            order_id = v1_expected()["journeys"]["confirmed"][0]
            [payment] = expected[order_id]["payment_service"]["GET /payments?order_id="]
            assert (payment["status"], payment["version"]) == ("CAPTURED", 2)
            payment_id = payment["payment_id"]
            refund = command_message(
                "payment.refund",
                payment_id,
                {"payment_id": payment_id, "order_id": order_id, "reason": "cancelled_by_customer"},
                correlation_id=order_id,
            )
            await send(stack, COMMANDS, refund)
            refunded = await state_once(client, f"/payments/{payment_id}", status="REFUNDED")
            assert refunded == {**payment, "status": "REFUNDED", "version": 3, "reason": "cancelled_by_customer"}
            events = (await client.get(f"/payments/{payment_id}/events")).json()
            assert [(e["type"], e["version"], e["schema_version"]) for e in events] == [
                ("payment.authorized", 1, PaymentAuthorized.VERSION),
                ("payment.captured", 2, 2),
                ("payment.refunded", 3, 2),
            ]
            assert events[2]["data"] == {
                "payment_id": payment_id,
                "order_id": order_id,
                "amount": {"amount_cents": payment["amount_cents"], "currency": payment["currency"]},
                "reason": "cancelled_by_customer",
            }
            assert events[2]["causation_id"] == refund[2]
            [published] = [
                f for f in await facts_about(stack, EVENTS, payment_id, 1) if f["id"] == events[2]["event_id"]
            ]
            assert (published["sequence"], published["schemaversion"]) == ("3", "2")

            async with connected(dsn) as conn:
                stored = await conn.fetch(
                    "SELECT version, schema_version, data->'amount_cents' IS NOT NULL AS flat FROM events"
                    " WHERE stream_id = $1 ORDER BY version",
                    payment_id,
                )
                total = await conn.fetchval("SELECT count(*) FROM events")
            # The v1 rows are never rewritten: only the new fact is written as v2.
            assert [(r["version"], r["schema_version"], r["flat"]) for r in stored] == [
                (1, 1, True),
                (2, 1, True),
                (3, 2, False),
            ]
            assert total == len(rows) + 1

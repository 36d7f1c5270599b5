"""The shipping service against real Kafka and PostgreSQL: commands and HTTP in, facts out.

Every test runs its own app on a scratch database, produces commands onto the real
`shipping.commands` topic with fresh order ids, and checks the REST state and the facts the
relay published to `shipping.events` (a topic shared with the rest of the session).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from infra.stack import LocalStack
from services.shipping.app import SCHEMA, create_app
from services.shipping.settings import ShippingSettings
from shared.contract import ShipmentDispatched, ShipmentScheduled, message_class
from shared.ids import derived_id
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

COMMANDS = "shipping.commands"
EVENTS = "shipping.events"


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with scratch_database(stack, "shipping") as dsn:
        settings = ShippingSettings(
            database_url=dsn,
            kafka_bootstrap_servers=stack.kafka_bootstrap,
            shipping_unserved_countries="AQ, nz",  # the default AQ plus one, lower case on purpose
            relay_poll_interval_s=0.1,
            db_pool_max_size=10,
        )
        async with running(create_app(settings)) as http:
            yield http


class Flow:
    """One order's shipment: builds its commands the way the saga does."""

    def __init__(self, country: str = "GB") -> None:
        self.order_id = str(uuid.uuid4())
        self.shipment_id = derived_id(self.order_id, "shipment")
        self.address = {
            "name": "Ada Lovelace",
            "line1": "12 St James's Sq",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": country,
        }

    def schedule(self, command_id: uuid.UUID | None = None) -> tuple[str, bytes, str]:
        data = {"shipment_id": self.shipment_id, "order_id": self.order_id, "address": self.address}
        return self.command("shipment.schedule", data, command_id)

    def cancel(self, reason: str = "cancelled_by_customer") -> tuple[str, bytes, str]:
        return self.command(
            "shipment.cancel", {"shipment_id": self.shipment_id, "order_id": self.order_id, "reason": reason}
        )

    def command(self, kind: str, data: dict[str, Any], command_id: uuid.UUID | None = None) -> tuple[str, bytes, str]:
        return command_message(kind, self.shipment_id, data, correlation_id=self.order_id, command_id=command_id)

    @property
    def url(self) -> str:
        return f"/shipments/{self.shipment_id}"


def assert_fact(fact: dict[str, Any], flow: Flow, kind: str, caused_by: str, sequence: int) -> None:
    """The published CloudEvent carries the envelope (docs/EVENTS.md) and the cause's ids."""
    assert fact["type"] == kind
    assert fact["source"] == "/services/shipping"
    assert fact["subject"] == flow.shipment_id
    assert fact["correlationid"] == flow.order_id
    assert fact["causationid"] == caused_by
    assert fact["sequence"] == str(sequence)
    assert fact["data"]["order_id"] == flow.order_id
    assert fact["data"]["shipment_id"] == flow.shipment_id


async def test_schedule_publishes_scheduled_and_serves_the_state(client: httpx.AsyncClient, stack: LocalStack) -> None:
    flow = Flow()
    schedule = flow.schedule()
    await send(stack, COMMANDS, schedule)

    state = await state_once(client, flow.url, status="SCHEDULED")
    assert state == {
        "shipment_id": flow.shipment_id,
        "order_id": flow.order_id,
        "status": "SCHEDULED",
        "address": flow.address,
        "version": 1,
    }
    [fact] = await facts_about(stack, EVENTS, flow.shipment_id, 1)
    assert_fact(fact, flow, "shipment.scheduled", caused_by=schedule[2], sequence=1)
    assert fact["data"]["address"] == flow.address
    events = (await client.get(f"{flow.url}/events")).json()
    assert [(e["event_id"], e["type"], e["causation_id"]) for e in events] == [
        (fact["id"], "shipment.scheduled", schedule[2])
    ]
    assert (await client.get("/shipments", params={"order_id": flow.order_id})).json() == [state]


async def test_unserved_destinations_fail_with_destination_not_served(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    antarctica, new_zealand = Flow(country="AQ"), Flow(country="NZ")
    await send(stack, COMMANDS, antarctica.schedule(), new_zealand.schedule())
    for flow in (antarctica, new_zealand):
        state = await state_once(client, flow.url, status="FAILED")
        assert (state["reason"], state["version"]) == ("destination_not_served", 1)
        [fact] = await facts_about(stack, EVENTS, flow.shipment_id, 1)
        assert fact["type"] == "shipment.failed"
        assert fact["data"] == {
            "shipment_id": flow.shipment_id,
            "order_id": flow.order_id,
            "reason": "destination_not_served",
        }
        # A failed shipment cannot be dispatched.
        assert (await client.post(f"{flow.url}/dispatch")).status_code == 409


async def test_dispatch_and_deliver_over_http_with_409_on_illegal_transitions(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    flow = Flow()
    await send(stack, COMMANDS, flow.schedule())
    await state_once(client, flow.url, status="SCHEDULED")

    early = await client.post(f"{flow.url}/deliver")
    assert early.status_code == 409
    assert early.json()["code"] == "illegal_shipment_transition"

    dispatched = await client.post(f"{flow.url}/dispatch", headers={"X-Request-ID": "req-dispatch-1"})
    assert dispatched.status_code == 200
    assert (dispatched.json()["status"], dispatched.json()["version"]) == ("DISPATCHED", 2)
    again = await client.post(f"{flow.url}/dispatch")  # a retried POST: no second fact
    assert (again.status_code, again.json()["version"]) == (200, 2)

    delivered = await client.post(f"{flow.url}/deliver", headers={"X-Request-ID": "req-deliver-1"})
    assert delivered.status_code == 200
    assert (delivered.json()["status"], delivered.json()["version"]) == ("DELIVERED", 3)
    assert (await client.post(f"{flow.url}/dispatch")).status_code == 409

    facts = await facts_about(stack, EVENTS, flow.shipment_id, 3)
    assert [f["type"] for f in facts] == ["shipment.scheduled", "shipment.dispatched", "shipment.delivered"]
    assert_fact(facts[1], flow, "shipment.dispatched", caused_by="req-dispatch-1", sequence=2)
    assert_fact(facts[2], flow, "shipment.delivered", caused_by="req-deliver-1", sequence=3)
    events = (await client.get(f"{flow.url}/events")).json()
    assert [e["type"] for e in events] == ["shipment.scheduled", "shipment.dispatched", "shipment.delivered"]


async def test_racing_dispatches_append_one_fact(client: httpx.AsyncClient, stack: LocalStack) -> None:
    flow = Flow()
    await send(stack, COMMANDS, flow.schedule())
    await state_once(client, flow.url, status="SCHEDULED")

    responses = await asyncio.gather(*(client.post(f"{flow.url}/dispatch") for _ in range(8)))
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["version"] for r in responses} == {2}
    events = (await client.get(f"{flow.url}/events")).json()
    assert [e["type"] for e in events] == ["shipment.scheduled", "shipment.dispatched"]


async def test_cancel_then_a_retried_cancel_is_re_answered_and_dispatch_is_refused(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    flow = Flow()
    cancel = flow.cancel()
    await send(stack, COMMANDS, flow.schedule(), cancel)
    state = await state_once(client, flow.url, status="CANCELLED")
    assert (state["reason"], state["version"]) == ("cancelled_by_customer", 2)
    facts = await facts_about(stack, EVENTS, flow.shipment_id, 2)
    assert_fact(facts[1], flow, "shipment.cancelled", caused_by=cancel[2], sequence=2)
    assert facts[1]["data"]["reason"] == "cancelled_by_customer"

    await send(stack, COMMANDS, flow.cancel())  # a new message with the same intent
    facts = await facts_about(stack, EVENTS, flow.shipment_id, 3)
    assert facts[2] == facts[1]
    assert (await client.post(f"{flow.url}/dispatch")).status_code == 409
    assert len((await client.get(f"{flow.url}/events")).json()) == 2


async def test_duplicates_retries_and_refusals_of_schedule_and_cancel(
    client: httpx.AsyncClient, stack: LocalStack
) -> None:
    shipped, never = Flow(), Flow()
    cancel_refused = refused_count("shipment", "shipment.cancel", "shipment_already_dispatched")
    unknown_refused = refused_count("shipment", "shipment.cancel", "shipment_not_found")

    schedule = shipped.schedule()
    await send(stack, COMMANDS, schedule, schedule, shipped.schedule())  # redelivery, then a retry
    facts = await facts_about(stack, EVENTS, shipped.shipment_id, 2)
    assert [f["id"] for f in facts] == [facts[0]["id"]] * 2
    assert facts[1] == facts[0]

    assert (await client.post(f"{shipped.url}/dispatch")).status_code == 200
    await send(
        stack,
        COMMANDS,
        shipped.cancel(),  # refused: the goods are on their way
        never.cancel(),  # refused: no such shipment, and no tombstone is left behind
        never.schedule(),  # so a later schedule still works
    )
    await state_once(client, never.url, status="SCHEDULED", version=1)
    assert refused_count("shipment", "shipment.cancel", "shipment_not_found") == unknown_refused + 1
    assert refused_count("shipment", "shipment.cancel", "shipment_already_dispatched") == cancel_refused + 1
    events = (await client.get(f"{shipped.url}/events")).json()
    assert [e["type"] for e in events] == ["shipment.scheduled", "shipment.dispatched"]


async def test_unknown_shipments_are_404(client: httpx.AsyncClient) -> None:
    unknown = f"/shipments/{uuid.uuid4()}"
    for response in (
        await client.get(unknown),
        await client.get(f"{unknown}/events"),
        await client.post(f"{unknown}/dispatch"),
        await client.post(f"{unknown}/deliver"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "shipment_not_found"
    assert (await client.get("/shipments", params={"order_id": str(uuid.uuid4())})).json() == []


async def test_health_metrics_and_openapi(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "# TYPE commands_refused_total counter" in metrics.text
    openapi = (await client.get("/openapi.json")).json()
    dispatch = openapi["paths"]["/shipments/{shipment_id}/dispatch"]["post"]
    assert {"200", "404", "409"} <= set(dispatch["responses"])
    assert openapi["components"]["schemas"]["ShipmentView"]["examples"][0]["status"] == "SCHEDULED"


# ------------------------------------------------------------------------------ a v1 event log


async def test_a_v1_event_log_serves_the_same_answers_and_its_streams_continue(stack: LocalStack) -> None:
    expected = v1_expected()["orders"]
    async with scratch_database(stack, "shipping") as dsn:
        rows = await restore_v1_log(dsn, SCHEMA, "shipping_events", "shipment_by_order")
        async with running(
            create_app(ShippingSettings(database_url=dsn, kafka_bootstrap_servers=stack.kafka_bootstrap))
        ) as client:
            for order_id, order in expected.items():
                answers = order["shipping_service"]
                listed = (await client.get("/shipments", params={"order_id": order_id})).json()
                assert listed == answers["GET /shipments?order_id="], order["journey"]
                for shipment in listed:
                    assert (await client.get(f"/shipments/{shipment['shipment_id']}")).json() == shipment
                for shipment_id, events in answers["GET /shipments/{id}/events"].items():
                    # Shown as before, the facts that start a shipment upcast to v2 (no customer_id known).
                    shown = (await client.get(f"/shipments/{shipment_id}/events")).json()
                    assert shown == [{**e, "schema_version": message_class(e["type"]).VERSION} for e in events]

            # A v1 shipment still SCHEDULED is dispatched: its stream continues at version 2.
            order_id = v1_expected()["journeys"]["confirmed"][0]
            [shipment] = expected[order_id]["shipping_service"]["GET /shipments?order_id="]
            assert (shipment["status"], shipment["version"]) == ("SCHEDULED", 1)
            url = f"/shipments/{shipment['shipment_id']}"
            dispatched = await client.post(f"{url}/dispatch", headers={"X-Request-ID": "req-v1-dispatch"})
            assert dispatched.status_code == 200
            assert dispatched.json() == {**shipment, "status": "DISPATCHED", "version": 2}
            events = (await client.get(f"{url}/events")).json()
            assert [(e["type"], e["version"], e["schema_version"]) for e in events] == [
                ("shipment.scheduled", 1, ShipmentScheduled.VERSION),
                ("shipment.dispatched", 2, ShipmentDispatched.VERSION),
            ]
            assert events[1]["data"] == {"shipment_id": shipment["shipment_id"], "order_id": order_id}
            assert events[1]["correlation_id"] == order_id and events[1]["causation_id"] == "req-v1-dispatch"
            async with connected(dsn) as conn:
                total = await conn.fetchval("SELECT count(*) FROM events")
            assert total == len(rows) + 1

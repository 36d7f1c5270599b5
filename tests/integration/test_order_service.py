"""The order service alone against real Kafka and PostgreSQL: REST contract, idempotency,
time travel, cancel, the saga's commands on Kafka, replies fed by hand, and timeouts.

No payment or shipping service runs here: where a test needs a participant's answer it puts
the fact on `payment.events` itself. Topics are shared with the whole session, so everything
read from Kafka is filtered by this test's order ids.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from infra.stack import LocalStack
from services.order import saga
from shared.contract import (
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    SHIPPING_COMMANDS,
    Money,
    PaymentAuthorized,
    PaymentDeclined,
    SagaDeadlineSet,
    SagaStepRequested,
    SagaTimedOut,
)
from shared.ids import derived_id
from shared.logs import JsonFormatter
from tests.integration.kafka_support import read_topic
from tests.integration.order_support import (
    ADDRESS,
    fetch,
    order_body,
    order_service,
    place,
    publish_fact,
    reaches,
)
from tests.integration.service_support import scratch_database

pytestmark = pytest.mark.integration

PAYMENT_SOURCE = "/services/payment"
TOTAL = Money(amount_cents=4950, currency="EUR")


@dataclass
class Service:
    client: httpx.AsyncClient
    dsn: str

    async def count(self, where: str = "TRUE") -> int:
        rows = await fetch(self.dsn, f"SELECT count(*) AS n FROM events WHERE {where}")
        n: int = rows[0]["n"]
        return n


@pytest.fixture
async def service(stack: LocalStack) -> AsyncIterator[Service]:
    async with scratch_database(stack, "order") as dsn, order_service(stack, dsn) as client:
        yield Service(client, dsn)


async def messages_about(
    stack: LocalStack, topic: str, order_id: str, count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The CloudEvents on `topic` correlated with `order_id`, once there are `count` of them."""

    def mine(seen: list[Any]) -> list[dict[str, Any]]:
        return [s.value for s in seen if s.value.get("correlationid") == order_id]

    seen = await read_topic(stack.kafka_bootstrap, topic, until=lambda s: len(mine(s)) >= count, timeout_s=timeout_s)
    found = mine(seen)
    assert len(found) >= count, (
        f"expected {count} messages about {order_id} on {topic}, saw {[m['type'] for m in found]}"
    )
    return found


# --------------------------------------------------------------------------- placing


async def test_place_answers_202_appends_order_placed_and_sends_authorize(
    service: Service, stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request_id = f"req-{uuid.uuid4()}"
    body_sent = order_body(payment_token="tok_secret")
    response = await service.client.post("/orders", json=body_sent, headers={"X-Request-ID": request_id})

    assert response.status_code == 202, response.text
    body = response.json()
    order_id = body["order_id"]
    assert body == {"order_id": order_id, "status": "PENDING", "version": 1, "total_cents": 4950}
    assert response.headers["location"] == f"/orders/{order_id}"
    uuid.UUID(order_id)

    state = (await service.client.get(f"/orders/{order_id}")).json()
    assert state["status"] == "PENDING" and state["version"] == 1 and state["total_cents"] == 4950
    assert state["shipping_address"] == ADDRESS and "reason" not in state
    assert state["items"] == order_body()["items"]

    [placed] = (await service.client.get(f"/orders/{order_id}/events")).json()
    assert placed["type"] == "order.placed" and placed["version"] == 1 and placed["stream_id"] == order_id
    assert placed["correlation_id"] == order_id and placed["causation_id"] == request_id
    assert "payment_token" not in placed["data"]

    # The command, as published by the outbox relay (CloudEvents structured mode).
    [authorize] = await messages_about(stack, PAYMENT_COMMANDS, order_id, 1)
    payment_id = derived_id(order_id, "payment")
    assert authorize["type"] == "payment.authorize"
    assert authorize["specversion"] == "1.0" and authorize["source"] == "/services/order"
    assert authorize["subject"] == payment_id and authorize["sequence"] == "0"
    assert authorize["datacontenttype"] == "application/json" and authorize["time"]
    assert authorize["correlationid"] == order_id and authorize["causationid"] == request_id
    assert authorize["data"] == {
        "payment_id": payment_id,
        "order_id": order_id,
        "amount_cents": 4950,
        "currency": "EUR",
        "payment_token": "tok_secret",
        "customer_id": body_sent["customer_id"],
    }
    # The fact on order.events, keyed by the order id, without the token.
    [fact] = await messages_about(stack, ORDER_EVENTS, order_id, 1)
    assert fact["type"] == "order.placed" and fact["subject"] == order_id and fact["sequence"] == "1"
    assert fact["id"] == placed["event_id"] and "payment_token" not in fact["data"]

    # The saga shows the step it took; the token is in none of its facts.
    saga_view = (await service.client.get(f"/sagas/{order_id}")).json()
    assert saga_view["step"] == "authorizing_payment" and saga_view["awaiting"] == ["payment.authorize"]
    assert saga_view["history"][:2] == ["started", "payment.authorize"]
    assert saga_view["deadline"] is not None
    assert "tok_secret" not in str(saga_view)
    requested = [e for e in saga_view["events"] if e["type"] == SagaStepRequested.TYPE]
    assert requested[0]["data"] == {
        "order_id": order_id,
        "command_type": "payment.authorize",
        "target_id": payment_id,
        "command_id": authorize["id"],
        "requested_at": requested[0]["data"]["requested_at"],
    }
    # Nor is it anywhere in the order database: only the command that needed it carried it.
    stored = await fetch(service.dsn, "SELECT count(*) AS n FROM events WHERE data::text LIKE '%tok_secret%'")
    assert stored[0]["n"] == 0
    # And no log line, extras included, shows it.
    lines = [JsonFormatter("order").format(record) for record in caplog.records]
    assert lines and not [line for line in lines if "tok_secret" in line]


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing customer", {k: v for k, v in order_body().items() if k != "customer_id"}, "customer_id"),
    ("blank customer", order_body(customer_id="   "), "customer_id"),
    ("no items", order_body(items=[]), "items"),
    ("quantity as string", order_body(items=[{"sku": "a", "quantity": "2", "unit_price_cents": 1}]), "quantity"),
    ("quantity as float", order_body(items=[{"sku": "a", "quantity": 2.0, "unit_price_cents": 1}]), "quantity"),
    ("quantity as bool", order_body(items=[{"sku": "a", "quantity": True, "unit_price_cents": 1}]), "quantity"),
    ("zero quantity", order_body(items=[{"sku": "a", "quantity": 0, "unit_price_cents": 1}]), "quantity"),
    ("negative price", order_body(items=[{"sku": "a", "quantity": 1, "unit_price_cents": -1}]), "unit_price_cents"),
    ("huge price", order_body(items=[{"sku": "a", "quantity": 1, "unit_price_cents": 10**30}]), "unit_price_cents"),
    ("extra item field", order_body(items=[{"sku": "a", "quantity": 1, "unit_price_cents": 1, "x": 1}]), "x"),
    ("lower-case currency", order_body(currency="eur"), "currency"),
    ("country name", order_body(shipping_address={**ADDRESS, "country": "Germany"}), "country"),
    ("missing city", order_body(shipping_address={k: v for k, v in ADDRESS.items() if k != "city"}), "city"),
    ("missing token", {k: v for k, v in order_body().items() if k != "payment_token"}, "payment_token"),
    ("extra field", order_body(discount_cents=100), "discount_cents"),
]


@pytest.mark.parametrize("case, body, field", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_invalid_body_is_422_naming_the_field_and_appends_nothing(
    service: Service, case: str, body: dict[str, Any], field: str
) -> None:
    response = await service.client.post("/orders", json=body)

    assert response.status_code == 422, (case, response.text)
    named = [str(part) for error in response.json()["detail"] for part in error["loc"]]
    assert field in named, (case, response.json())
    assert await service.count() == 0


async def test_domain_rule_violations_are_422_with_the_field_and_append_nothing(service: Service) -> None:
    biggest = 2**63 - 1
    too_much = order_body(items=[{"sku": "a", "quantity": 2, "unit_price_cents": biggest}])
    response = await service.client.post("/orders", json=too_much)
    assert response.status_code == 422
    assert response.json()["field"] == "items" and response.json()["code"] == "invalid_field"

    not_json = await service.client.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    digits = b'{"customer_id": "c", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": ' + b"9" * 5000 + b"}]}"
    absurd = await service.client.post("/orders", content=digits, headers={"content-type": "application/json"})
    # Python's JSON parser refuses > 4300-digit integers; the runtime answers that as 422 too.
    assert absurd.status_code == 422
    assert absurd.json()["detail"][0]["type"] == "json_invalid"
    assert await service.count() == 0


# --------------------------------------------------------------------------- idempotency


async def test_same_idempotency_key_and_body_returns_the_same_order_and_appends_nothing(service: Service) -> None:
    key = f"key-{uuid.uuid4()}"
    body = order_body()
    first = await service.client.post("/orders", json=body, headers={"Idempotency-Key": key})
    events_after_first = await service.count()
    # The same JSON value with its keys in another order is the same body.
    reordered = dict(reversed(list(body.items())))
    again = await service.client.post("/orders", json=reordered, headers={"Idempotency-Key": key})

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await service.count() == events_after_first
    assert await service.count("type = 'order.placed'") == 1

    other_key = await service.client.post("/orders", json=body, headers={"Idempotency-Key": f"other-{key}"})
    assert other_key.status_code == 202 and other_key.json()["order_id"] != first.json()["order_id"]


async def test_same_idempotency_key_with_another_body_is_422(service: Service) -> None:
    key = f"key-{uuid.uuid4()}"
    first = await service.client.post("/orders", json=order_body(customer_id="c1"), headers={"Idempotency-Key": key})
    assert first.status_code == 202
    before = await service.count()

    other = await service.client.post(
        "/orders", json=order_body(customer_id="c1", payment_token="tok_other"), headers={"Idempotency-Key": key}
    )

    assert other.status_code == 422
    assert other.json()["field"] == "Idempotency-Key" and other.json()["code"] == "idempotency_key_reused"
    assert await service.count() == before


async def test_an_idempotency_key_is_scoped_to_its_customer(service: Service) -> None:
    key = f"key-{uuid.uuid4()}"
    body = order_body(customer_id=f"c-{uuid.uuid4().hex[:6]}")
    first = await service.client.post("/orders", json=body, headers={"Idempotency-Key": key})
    again = await service.client.post("/orders", json=body, headers={"Idempotency-Key": key})
    other_customer = order_body(customer_id=f"d-{uuid.uuid4().hex[:6]}")
    theirs = await service.client.post("/orders", json=other_customer, headers={"Idempotency-Key": key})

    assert first.status_code == again.status_code == theirs.status_code == 202
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert theirs.json()["order_id"] != first.json()["order_id"] and "Idempotent-Replayed" not in theirs.headers


@pytest.mark.parametrize("key", ["", "has space", "x" * 201])
async def test_malformed_idempotency_key_is_422(service: Service, key: str) -> None:
    response = await service.client.post("/orders", json=order_body(), headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert "Idempotency-Key" in [str(p) for e in response.json()["detail"] for p in e["loc"]]
    assert await service.count() == 0


async def test_concurrent_requests_with_one_idempotency_key_place_one_order(service: Service) -> None:
    key = f"key-{uuid.uuid4()}"
    body = order_body()

    responses = await asyncio.gather(
        *(service.client.post("/orders", json=body, headers={"Idempotency-Key": key}) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [202] * 10
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert await service.count("type = 'order.placed'") == 1
    assert await service.count("type = 'saga.started'") == 1
    assert await service.count("type = 'saga.step_requested'") == 1


# --------------------------------------------------------------------------- reading


async def test_unknown_ids_are_404(service: Service) -> None:
    unknown = str(uuid.uuid4())
    for url in (f"/orders/{unknown}", f"/orders/{unknown}/events", f"/sagas/{unknown}"):
        response = await service.client.get(url)
        assert response.status_code == 404, url
    cancel = await service.client.post(f"/orders/{unknown}/cancel")
    assert cancel.status_code == 404 and cancel.json()["code"] == "order_not_found"
    # A saga stream is not an order.
    order_id = await place(service.client)
    assert (await service.client.get(f"/orders/{saga.saga_stream_id(order_id)}")).status_code == 404


async def test_a_declined_payment_rejects_the_order_and_time_travel_replays_the_log(
    service: Service, stack: LocalStack
) -> None:
    order_id = await place(service.client)
    payment_id = derived_id(order_id, "payment")
    reply_id = await publish_fact(
        stack,
        PaymentDeclined(order_id=order_id, payment_id=payment_id, amount=TOTAL, reason="card_declined"),
        stream_id=payment_id,
        source=PAYMENT_SOURCE,
    )

    now = await reaches(service.client, f"/orders/{order_id}", status="REJECTED")
    assert now["version"] == 2 and now["reason"] == "payment_declined:card_declined"
    as_placed = (await service.client.get(f"/orders/{order_id}", params={"as_of_version": 1})).json()
    assert as_placed["status"] == "PENDING" and as_placed["version"] == 1 and "reason" not in as_placed
    assert (await service.client.get(f"/orders/{order_id}", params={"as_of_version": 2})).json() == now
    beyond = await service.client.get(f"/orders/{order_id}", params={"as_of_version": 3})
    assert beyond.status_code == 404 and beyond.json()["code"] == "version_not_found"
    for bad in ("0", "-1", "x"):
        response = await service.client.get(f"/orders/{order_id}", params={"as_of_version": bad})
        assert response.status_code == 422

    events = (await service.client.get(f"/orders/{order_id}/events")).json()
    assert [e["type"] for e in events] == ["order.placed", "order.rejected"]
    assert [e["version"] for e in events] == [1, 2]
    assert events[1]["correlation_id"] == order_id and events[1]["causation_id"] == reply_id

    saga_view = await reaches(service.client, f"/sagas/{order_id}", completed=True)
    assert saga_view["mode"] == "COMPENSATE" and saga_view["awaiting"] == [] and saga_view["deadline"] is None
    rows = await fetch(service.dsn, "SELECT deadline FROM saga_deadlines WHERE order_id = $1", order_id)
    assert rows[0]["deadline"] is None

    # A redelivered reply (same id) and a stray one about an unknown order change nothing.
    version = saga_view["version"]
    stranger = str(uuid.uuid4())
    await publish_fact(
        stack,
        PaymentAuthorized(
            order_id=stranger, payment_id=derived_id(stranger, "payment"), amount=Money(amount_cents=1, currency="EUR")
        ),
        stream_id=derived_id(stranger, "payment"),
        source=PAYMENT_SOURCE,
    )
    cancel = await service.client.post(f"/orders/{order_id}/cancel")
    assert cancel.status_code == 409 and cancel.json()["code"] == "order_not_cancellable"
    assert (await service.client.get(f"/sagas/{order_id}")).json()["version"] == version


async def test_an_authorized_payment_makes_the_saga_schedule_the_shipment(service: Service, stack: LocalStack) -> None:
    order_id = await place(service.client)
    payment_id = derived_id(order_id, "payment")
    reply_id = await publish_fact(
        stack,
        PaymentAuthorized(order_id=order_id, payment_id=payment_id, amount=TOTAL),
        stream_id=payment_id,
        source=PAYMENT_SOURCE,
    )

    [schedule] = await messages_about(stack, SHIPPING_COMMANDS, order_id, 1)
    assert schedule["type"] == "shipment.schedule" and schedule["subject"] == derived_id(order_id, "shipment")
    assert schedule["correlationid"] == order_id and schedule["causationid"] == reply_id
    assert schedule["data"]["address"] == ADDRESS and schedule["data"]["order_id"] == order_id
    view = await reaches(service.client, f"/sagas/{order_id}", step="scheduling_shipment")
    assert view["payment_status"] == "AUTHORIZED"


# --------------------------------------------------------------------------- cancel


async def test_cancel_while_pending_is_202_and_compensates_defensively(service: Service, stack: LocalStack) -> None:
    order_id = await place(service.client)
    request_id = f"cancel-{uuid.uuid4()}"

    response = await service.client.post(f"/orders/{order_id}/cancel", headers={"X-Request-ID": request_id})

    assert response.status_code == 202, response.text
    assert response.json() == {"order_id": order_id, "status": "PENDING", "version": 1, "saga_step": "compensating"}
    again = await service.client.post(f"/orders/{order_id}/cancel")
    assert again.status_code == 202
    # The authorize may still be in flight: a void is queued behind it, caused by the request.
    messages = await messages_about(stack, PAYMENT_COMMANDS, order_id, 2)
    assert [m["type"] for m in messages] == ["payment.authorize", "payment.void"]
    assert messages[1]["causationid"] == request_id
    assert messages[1]["data"]["reason"] == "cancelled_by_customer"
    # The order stays PENDING until the money is known to be safe.
    assert (await service.client.get(f"/orders/{order_id}")).json()["status"] == "PENDING"


# --------------------------------------------------------------------------- deadlines


async def test_an_unanswered_authorize_times_out_even_across_a_restart(stack: LocalStack) -> None:
    async with scratch_database(stack, "order") as dsn:
        async with order_service(stack, dsn, saga_step_timeout_s=1.5) as first:
            order_id = await place(first)
        # The deadline is data: a new process on the same database fires it.
        async with order_service(stack, dsn) as second:
            order = await reaches(second, f"/orders/{order_id}", timeout_s=20, status="REJECTED")
            assert order["reason"] == "payment_timeout"
            view = (await second.get(f"/sagas/{order_id}")).json()
            assert view["timeouts"] >= 1 and view["completed"] is True and view["deadline"] is None
            timed_out = [e for e in view["events"] if e["type"] == SagaTimedOut.TYPE]
            deadline_set = [e for e in view["events"] if e["type"] == SagaDeadlineSet.TYPE]
            assert timed_out[0]["causation_id"] == deadline_set[0]["event_id"]
        messages = await messages_about(stack, PAYMENT_COMMANDS, order_id, 2)
        assert [m["type"] for m in messages] == ["payment.authorize", "payment.void"]

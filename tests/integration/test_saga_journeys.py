"""Every fulfilment journey end to end, in-process: the order, payment and shipping apps run
together (each on its own scratch database) over the session's real Kafka, and the tests only
use their REST APIs, as a client would: place, cancel, dispatch, deliver, then read the final
order, payment and shipment.

Participant timeouts are simulated by not running that participant (its commands wait on
Kafka, unanswered). Everything is awaited by bounded polling, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from infra.stack import LocalStack
from services.order.app import create_app as create_order_app
from services.payment.app import create_app as create_payment_app
from services.payment.settings import PaymentSettings
from services.shipping.app import create_app as create_shipping_app
from services.shipping.settings import ShippingSettings
from shared.ids import derived_id
from tests.integration.kafka_support import wait_for
from tests.integration.order_support import ADDRESS, fetch, order_body, order_service, order_settings, place, reaches
from tests.integration.service_support import running, scratch_database

pytestmark = pytest.mark.integration

#: Bound for one journey step (consumer group joins on a cold start take a few seconds).
STEP_S = 45.0


@asynccontextmanager
async def payment_service(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with scratch_database(stack, "payment") as dsn:
        settings = PaymentSettings(
            database_url=dsn,
            kafka_bootstrap_servers=stack.kafka_bootstrap,
            relay_poll_interval_s=0.1,
            db_pool_max_size=10,
        )
        async with running(create_payment_app(settings)) as client:
            yield client


@asynccontextmanager
async def shipping_service(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with scratch_database(stack, "shipping") as dsn:
        settings = ShippingSettings(
            database_url=dsn,
            kafka_bootstrap_servers=stack.kafka_bootstrap,
            relay_poll_interval_s=0.1,
            db_pool_max_size=10,
        )
        async with running(create_shipping_app(settings)) as client:
            yield client


@dataclass
class System:
    """The three write services, as a client sees them."""

    order: httpx.AsyncClient
    payment: httpx.AsyncClient | None
    shipping: httpx.AsyncClient | None
    order_dsn: str

    async def place(self, **overrides: Any) -> str:
        return await place(self.order, order_body(**overrides))

    async def order_reaches(self, order_id: str, **expected: Any) -> dict[str, Any]:
        return await reaches(self.order, f"/orders/{order_id}", timeout_s=STEP_S, **expected)

    async def payment_of(self, order_id: str, **expected: Any) -> dict[str, Any]:
        assert self.payment is not None
        return await reaches(self.payment, f"/payments/{derived_id(order_id, 'payment')}", timeout_s=STEP_S, **expected)

    async def shipment_of(self, order_id: str, **expected: Any) -> dict[str, Any]:
        assert self.shipping is not None
        return await reaches(
            self.shipping, f"/shipments/{derived_id(order_id, 'shipment')}", timeout_s=STEP_S, **expected
        )

    async def shipping_action(self, order_id: str, action: str) -> httpx.Response:
        assert self.shipping is not None
        return await self.shipping.post(f"/shipments/{derived_id(order_id, 'shipment')}/{action}")

    async def order_event_types(self, order_id: str) -> list[str]:
        return [e["type"] for e in (await self.order.get(f"/orders/{order_id}/events")).json()]

    async def saga(self, order_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.order.get(f"/sagas/{order_id}")).json()
        return body

    async def saga_settles(self, order_id: str) -> dict[str, Any]:
        """The saga has finished: completed and awaiting nothing (no deadline left)."""
        return await reaches(
            self.order, f"/sagas/{order_id}", timeout_s=STEP_S, completed=True, awaiting=[], deadline=None
        )


@asynccontextmanager
async def system(
    stack: LocalStack, *, payment: bool = True, shipping: bool = True, **order_settings: Any
) -> AsyncIterator[System]:
    async with AsyncExitStack() as stack_:
        order_dsn = await stack_.enter_async_context(scratch_database(stack, "order"))
        payment_client = await stack_.enter_async_context(payment_service(stack)) if payment else None
        shipping_client = await stack_.enter_async_context(shipping_service(stack)) if shipping else None
        order_client = await stack_.enter_async_context(order_service(stack, order_dsn, **order_settings))
        yield System(order_client, payment_client, shipping_client, order_dsn)


def assert_one_flow(events: list[dict[str, Any]], order_id: str) -> None:
    """Every fact of the order carries the order id as correlation and a causation id."""
    assert all(e["correlation_id"] == order_id for e in events), events
    assert all(e["causation_id"] for e in events), events


# --------------------------------------------------------------------------- journeys


async def test_happy_path_through_delivered(stack: LocalStack) -> None:
    async with system(stack) as s:
        order_id = await s.place()

        confirmed = await s.order_reaches(order_id, status="CONFIRMED")
        assert confirmed["payment_id"] == derived_id(order_id, "payment")
        assert confirmed["shipment_id"] == derived_id(order_id, "shipment")
        payment = await s.payment_of(order_id, status="CAPTURED")
        assert payment["amount_cents"] == confirmed["total_cents"] == 4950 and payment["currency"] == "EUR"
        shipment = await s.shipment_of(order_id, status="SCHEDULED")
        assert shipment["address"] == ADDRESS

        assert (await s.shipping_action(order_id, "dispatch")).status_code == 200
        await s.order_reaches(order_id, status="SHIPPED")
        assert (await s.shipping_action(order_id, "deliver")).status_code == 200
        delivered = await s.order_reaches(order_id, status="DELIVERED")

        assert "reason" not in delivered and delivered["version"] == 4
        assert await s.order_event_types(order_id) == [
            "order.placed",
            "order.confirmed",
            "order.shipped",
            "order.delivered",
        ]
        assert_one_flow((await s.order.get(f"/orders/{order_id}/events")).json(), order_id)
        view = await s.saga_settles(order_id)
        assert view["step"] == "completed" and view["timeouts"] == 0 and view["anomalies"] == []
        assert [h for h in view["history"] if "." in h and not h.startswith("order:")] == [
            "payment.authorize",
            "payment.authorized",
            "shipment.schedule",
            "shipment.scheduled",
            "payment.capture",
            "payment.captured",
            "shipment.dispatched",
            "shipment.delivered",
        ]
        await s.payment_of(order_id, status="CAPTURED")  # still: exactly one captured payment
        await s.shipment_of(order_id, status="DELIVERED")


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"payment_token": "tok_decline"}, "payment_declined:card_declined"),
        (
            {"items": [{"sku": "yacht", "quantity": 1, "unit_price_cents": 1_000_001}]},
            "payment_declined:amount_over_limit",
        ),
    ],
    ids=["card_declined", "amount_over_limit"],
)
async def test_a_declined_payment_rejects_the_order(stack: LocalStack, overrides: dict[str, Any], reason: str) -> None:
    async with system(stack) as s:
        order_id = await s.place(**overrides)

        rejected = await s.order_reaches(order_id, status="REJECTED")

        assert rejected["reason"] == reason
        payment = await s.payment_of(order_id, status="DECLINED")
        assert payment["reason"] == reason.split(":")[1]
        assert await s.order_event_types(order_id) == ["order.placed", "order.rejected"]
        await s.saga_settles(order_id)
        assert s.shipping is not None
        assert (await s.shipping.get("/shipments", params={"order_id": order_id})).json() == []


async def test_a_shipping_failure_voids_the_payment_and_cancels_the_order(stack: LocalStack) -> None:
    async with system(stack) as s:
        order_id = await s.place(shipping_address={**ADDRESS, "country": "AQ"})

        cancelled = await s.order_reaches(order_id, status="CANCELLED")

        assert cancelled["reason"] == "shipping_failed:destination_not_served"
        await s.payment_of(order_id, status="VOIDED")
        shipment = await s.shipment_of(order_id, status="FAILED")
        assert shipment["reason"] == "destination_not_served"
        assert await s.order_event_types(order_id) == ["order.placed", "order.cancelled"]
        view = await s.saga_settles(order_id)
        assert "payment.capture" not in view["history"]


async def test_cancel_before_capture_voids_the_authorization(stack: LocalStack) -> None:
    # Shipping starts late, so the saga is provably between authorize and capture when the
    # customer cancels: the schedule is in flight, so a cancel is queued behind it.
    async with system(stack, shipping=False) as s:
        order_id = await s.place()
        await s.payment_of(order_id, status="AUTHORIZED")
        await reaches(s.order, f"/sagas/{order_id}", timeout_s=STEP_S, step="scheduling_shipment")

        response = await s.order.post(f"/orders/{order_id}/cancel")
        assert response.status_code == 202 and response.json()["status"] == "PENDING"

        async with shipping_service(stack) as shipping:
            s.shipping = shipping
            cancelled = await s.order_reaches(order_id, status="CANCELLED")
            assert cancelled["reason"] == "cancelled_by_customer"
            payment = await s.payment_of(order_id, status="VOIDED")
            assert payment["reason"] == "cancelled_by_customer"
            await s.shipment_of(order_id, status="CANCELLED")
            view = await s.saga_settles(order_id)
            assert "payment.capture" not in view["history"] and "payment.refund" not in view["history"]
        assert await s.order_event_types(order_id) == ["order.placed", "order.cancelled"]


async def test_cancel_after_capture_refunds_the_payment(stack: LocalStack) -> None:
    async with system(stack) as s:
        order_id = await s.place()
        await s.order_reaches(order_id, status="CONFIRMED")

        response = await s.order.post(f"/orders/{order_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "CONFIRMED" and response.json()["saga_step"] == "compensating"

        cancelled = await s.order_reaches(order_id, status="CANCELLED")
        assert cancelled["reason"] == "cancelled_by_customer"
        payment = await s.payment_of(order_id, status="REFUNDED")
        assert payment["amount_cents"] == 4950
        await s.shipment_of(order_id, status="CANCELLED")
        assert await s.order_event_types(order_id) == ["order.placed", "order.confirmed", "order.cancelled"]
        await s.saga_settles(order_id)
        # Final now: cancelling again is refused, and the warehouse can no longer dispatch.
        assert (await s.order.post(f"/orders/{order_id}/cancel")).status_code == 409
        assert (await s.shipping_action(order_id, "dispatch")).status_code == 409


async def test_cancel_after_shipping_is_409_and_changes_nothing(stack: LocalStack) -> None:
    async with system(stack) as s:
        order_id = await s.place()
        await s.order_reaches(order_id, status="CONFIRMED")
        assert (await s.shipping_action(order_id, "dispatch")).status_code == 200
        shipped = await s.order_reaches(order_id, status="SHIPPED")
        saga_before = await s.saga(order_id)

        response = await s.order.post(f"/orders/{order_id}/cancel")

        assert response.status_code == 409 and response.json()["code"] == "order_not_cancellable"
        assert (await s.order.get(f"/orders/{order_id}")).json() == shipped
        assert (await s.saga(order_id))["version"] == saga_before["version"]
        await s.payment_of(order_id, status="CAPTURED")
        assert (await s.shipping_action(order_id, "deliver")).status_code == 200
        await s.order_reaches(order_id, status="DELIVERED")


async def test_payment_timeout_rejects_the_order(stack: LocalStack) -> None:
    async with system(stack, payment=False, saga_step_timeout_s=2.0) as s:
        order_id = await s.place()

        rejected = await s.order_reaches(order_id, status="REJECTED")

        assert rejected["reason"] == "payment_timeout"
        view = await s.saga_settles(order_id)
        assert view["timeouts"] == 1 and "timed_out:payment" in view["history"]
        assert "payment.void#defensive" in view["history"]  # queued behind the unanswered authorize
        assert s.shipping is not None
        assert (await s.shipping.get("/shipments", params={"order_id": order_id})).json() == []


async def test_shipping_timeout_voids_the_payment_and_cancels_the_order(stack: LocalStack) -> None:
    async with system(stack, shipping=False, saga_step_timeout_s=2.0) as s:
        order_id = await s.place()

        cancelled = await s.order_reaches(order_id, status="CANCELLED")

        assert cancelled["reason"] == "shipping_timeout"
        await s.payment_of(order_id, status="VOIDED")
        view = await s.saga_settles(order_id)
        assert "timed_out:shipping" in view["history"] and "shipment.cancel#defensive" in view["history"]
        assert await s.order_event_types(order_id) == ["order.placed", "order.cancelled"]


# --------------------------------------------------------------------------- scale-out


async def test_two_order_replicas_on_one_database_drive_each_saga_once(stack: LocalStack) -> None:
    """Replies are split across the replicas' consumers and deadlines across their schedulers;
    every saga still takes each step exactly once and every order reaches its outcome."""
    async with AsyncExitStack() as stack_:
        dsn = await stack_.enter_async_context(scratch_database(stack, "order"))
        await stack_.enter_async_context(payment_service(stack))
        apps = [create_order_app(order_settings(stack, dsn)) for _ in range(2)]
        replicas = [await stack_.enter_async_context(running(app)) for app in apps]
        shipping = await stack_.enter_async_context(shipping_service(stack))
        s = System(replicas[0], None, shipping, dsn)

        order_ids = await asyncio.gather(*(place(replicas[i % 2], order_body()) for i in range(12)))
        declined = await place(replicas[1], order_body(payment_token="tok_decline"))

        for i, order_id in enumerate(order_ids):
            await reaches(replicas[(i + 1) % 2], f"/orders/{order_id}", timeout_s=STEP_S, status="CONFIRMED")
        await reaches(replicas[0], f"/orders/{declined}", timeout_s=STEP_S, status="REJECTED")
        for order_id in order_ids[:3]:
            assert (await s.shipping_action(order_id, "dispatch")).status_code == 200
            await reaches(replicas[1], f"/orders/{order_id}", timeout_s=STEP_S, status="SHIPPED")

        rows = await fetch(
            dsn,
            """SELECT stream_id, data->>'command_type' AS command, count(*) AS n
               FROM events WHERE type = 'saga.step_requested' GROUP BY 1, 2""",
        )
        assert rows and all(r["n"] == 1 for r in rows), [dict(r) for r in rows if r["n"] != 1]
        per_order = await fetch(
            dsn,
            "SELECT stream_id, array_agg(type ORDER BY version) AS types FROM events "
            "WHERE stream_id = ANY($1::text[]) GROUP BY 1",
            [*order_ids, declined],
        )
        types = {r["stream_id"]: r["types"] for r in per_order}
        for i, order_id in enumerate(order_ids):
            expected = ["order.placed", "order.confirmed"] + (["order.shipped"] if i < 3 else [])
            assert types[order_id] == expected
        assert types[declined] == ["order.placed", "order.rejected"]
        # Each reply was applied once (the inbox and the saga both deduplicate).
        replies = await fetch(
            dsn,
            "SELECT data->>'reply_id' AS id, count(*) AS n FROM events WHERE type = 'saga.reply_received' GROUP BY 1",
        )
        assert all(r["n"] == 1 for r in replies)

        # Both replicas are real consumers: the group splits the reply partitions between them
        # (a member joining mid-test triggers a rebalance, hence the bounded wait).
        def assigned(app: FastAPI) -> int:
            consumer = app.state.runtime.consumers[0]._consumer
            return 0 if consumer is None else len(consumer.assignment())

        await wait_for(lambda: all(assigned(app) for app in apps), timeout_s=STEP_S)
        consumer = apps[0].state.runtime.consumers[0]._consumer
        partitions = sum(len(consumer.partitions_for_topic(t) or ()) for t in ("payment.events", "shipping.events"))
        assert sum(assigned(app) for app in apps) == partitions


async def test_two_order_replicas_fire_each_deadline_once(stack: LocalStack) -> None:
    async with scratch_database(stack, "order") as dsn, shipping_service(stack):
        async with (
            order_service(stack, dsn, saga_step_timeout_s=1.5) as a,
            order_service(stack, dsn, saga_step_timeout_s=1.5) as b,
        ):
            order_ids = await asyncio.gather(*(place((a, b)[i % 2], order_body()) for i in range(8)))

            for order_id in order_ids:
                rejected = await reaches(b, f"/orders/{order_id}", timeout_s=STEP_S, status="REJECTED")
                assert rejected["reason"] == "payment_timeout"
                view = await reaches(a, f"/sagas/{order_id}", timeout_s=STEP_S, completed=True, deadline=None)
                assert view["timeouts"] == 1

        rows = await fetch(dsn, "SELECT stream_id, count(*) AS n FROM events WHERE type = 'saga.timed_out' GROUP BY 1")
        assert len(rows) == len(order_ids) and all(r["n"] == 1 for r in rows)

"""Every user journey of the order-fulfillment saga (README), observed from outside.

Each journey checks all three write sides (order, payment, shipping), the saga's own view and
the query service's read model, so a journey passes only when every service agrees.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from client import SystemClient, eventually, expect, new_customer, order_body, schema_version, total_of

if TYPE_CHECKING:
    from conftest import PauseService, SystemUnderTest


def types_of(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


async def test_happy_path_to_delivered(client: SystemClient) -> None:
    customer = new_customer("happy")
    body = order_body(customer)
    resp = await client.place(body)
    placed = expect(resp, 202)
    order_id = placed["order_id"]
    assert placed == {"order_id": order_id, "status": "PENDING", "version": 1, "total_cents": total_of(body)}
    assert resp.headers["Location"].endswith(f"/orders/{order_id}")

    confirmed = await client.wait_order(order_id, {"CONFIRMED"})
    assert confirmed["version"] == 2 and "reason" not in confirmed
    payment = await client.wait_payment(order_id, "CAPTURED")
    assert (payment["amount_cents"], payment["currency"]) == (total_of(body), "EUR")
    assert payment["payment_id"] == confirmed["payment_id"]
    shipment = await client.wait_shipment(order_id, "SCHEDULED")
    assert shipment["shipment_id"] == confirmed["shipment_id"]
    assert shipment["address"] == body["shipping_address"]

    dispatched = expect(await client.dispatch(shipment["shipment_id"]), 200)
    assert dispatched["status"] == "DISPATCHED"
    await client.wait_order(order_id, {"SHIPPED"})
    delivered_shipment = expect(await client.deliver(shipment["shipment_id"]), 200)
    assert delivered_shipment["status"] == "DELIVERED"
    order = await client.wait_order(order_id, {"DELIVERED"})

    assert order["customer_id"] == customer and order["items"] == body["items"]
    assert order["total_cents"] == total_of(body) and order["version"] == 4
    events = expect(await client.order_events(order_id), 200)
    assert types_of(events) == ["order.placed", "order.confirmed", "order.shipped", "order.delivered"]
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert {e["correlation_id"] for e in events} == {order_id}
    assert all(e["data"]["order_id"] == order_id for e in events)
    pay_events = expect(await client.payment_events(payment["payment_id"]), 200)
    assert types_of(pay_events) == ["payment.authorized", "payment.captured"]
    money = {"amount_cents": total_of(body), "currency": "EUR"}
    assert [(e["schema_version"], e["data"]["amount"]) for e in pay_events] == [
        (schema_version(e["type"]), money) for e in pay_events
    ], "payment facts are shown in their current schema, the amount as one Money value"
    assert all("amount_cents" not in e["data"] for e in pay_events)
    assert pay_events[0]["data"]["customer_id"] == customer, "the fact that starts a payment names its customer"
    ship_events = expect(await client.shipment_events(shipment["shipment_id"]), 200)
    assert types_of(ship_events) == ["shipment.scheduled", "shipment.dispatched", "shipment.delivered"]
    assert ship_events[0]["data"]["customer_id"] == customer

    saga = expect(await client.saga(order_id), 200)
    assert saga["order_status"] == "DELIVERED" and saga["completed"] is True and saga["awaiting"] == []
    assert saga["payment_status"] == "CAPTURED" and saga["shipment_status"] == "DELIVERED"
    assert "tok_visa" not in str(saga), "the payment token leaked out of the saga view"

    view = await client.wait_view(order_id, lambda v: v["status"] == "DELIVERED")
    assert view["payment_status"] == "CAPTURED" and view["shipment_status"] == "DELIVERED"
    assert (view["customer_id"], view["total_cents"], view["currency"]) == (customer, total_of(body), "EUR")
    assert view["items"] == body["items"] and view["version"] == 4
    assert (view["payment_id"], view["shipment_id"]) == (payment["payment_id"], shipment["shipment_id"])


async def test_card_declined_rejects_the_order(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("decline"), payment_token="tok_decline"))
    order_id = placed["order_id"]
    order = await client.wait_order(order_id, {"REJECTED"})
    assert order["reason"] == "payment_declined:card_declined"
    payment = await client.wait_payment(order_id, "DECLINED")
    assert payment["reason"] == "card_declined"
    assert await client.shipments_of(order_id) == [], "a declined order must never be shipped"
    assert types_of(expect(await client.order_events(order_id), 200)) == ["order.placed", "order.rejected"]
    view = await client.wait_view(order_id, lambda v: v["status"] == "REJECTED")
    assert view["payment_status"] == "DECLINED" and view["shipment_status"] is None
    assert view["reason"] == "payment_declined:card_declined"


@pytest.mark.parametrize(
    ("unit_price_cents", "outcome"),
    [(1_000_001, "REJECTED"), (1_000_000, "CONFIRMED")],
    ids=["above-limit-declined", "at-limit-accepted"],
)
async def test_amount_limit(client: SystemClient, unit_price_cents: int, outcome: str) -> None:
    body = order_body(
        new_customer("limit"), items=[{"sku": "SKU-CAR", "quantity": 1, "unit_price_cents": unit_price_cents}]
    )
    placed = await client.place_ok(body)
    order = await client.wait_order(placed["order_id"], {outcome})
    if outcome == "REJECTED":
        assert order["reason"] == "payment_declined:amount_over_limit"
        payment = await client.wait_payment(placed["order_id"], "DECLINED")
        assert payment["reason"] == "amount_over_limit" and payment["amount_cents"] == unit_price_cents
    else:
        payment = await client.wait_payment(placed["order_id"], "CAPTURED")
        assert payment["amount_cents"] == 1_000_000


async def test_shipping_failure_voids_the_payment(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("aq"), country="AQ"))
    order_id = placed["order_id"]
    order = await client.wait_order(order_id, {"CANCELLED"})
    assert order["reason"] == "shipping_failed:destination_not_served"
    shipment = await client.wait_shipment(order_id, "FAILED")
    assert shipment["reason"] == "destination_not_served"
    payment = await client.wait_payment(order_id, "VOIDED")
    pay_types = types_of(expect(await client.payment_events(payment["payment_id"]), 200))
    assert pay_types == ["payment.authorized", "payment.voided"], "compensation: the authorization is voided"
    saga = expect(await client.saga(order_id), 200)
    assert saga["completed"] is True and saga["reason"] == "shipping_failed:destination_not_served"
    view = await client.wait_view(order_id, lambda v: v["status"] == "CANCELLED" and v["payment_status"] == "VOIDED")
    assert view["shipment_status"] == "FAILED"


async def test_cancel_before_capture_voids(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("cancel-early")))
    order_id = placed["order_id"]
    accepted = expect(await client.cancel(order_id), 202)  # at once: the saga cannot have captured yet
    assert accepted["order_id"] == order_id and accepted["status"] == "PENDING"
    order = await client.wait_order(order_id, {"CANCELLED"})
    assert order["reason"] == "cancelled_by_customer"
    payment = await client.wait_payment(order_id, "VOIDED")
    pay_types = types_of(expect(await client.payment_events(payment["payment_id"]), 200))
    assert "payment.captured" not in pay_types and pay_types[-1] == "payment.voided"
    saga = expect(await client.saga(order_id), 200)
    assert "payment.capture" not in saga["history"], saga["history"]
    # A shipment is either never scheduled or cancelled: nothing active is left behind.
    shipments = await eventually(lambda: _settled_shipments(client, order_id), 30, what="no active shipment")
    assert all(s["status"] == "CANCELLED" for s in shipments), shipments
    await client.wait_view(order_id, lambda v: v["status"] == "CANCELLED" and v["payment_status"] == "VOIDED")


async def _settled_shipments(client: SystemClient, order_id: str) -> list[dict[str, object]] | None:
    shipments = await client.shipments_of(order_id)
    if any(s["status"] != "CANCELLED" for s in shipments):
        return None
    return shipments


async def test_cancel_after_capture_refunds(client: SystemClient) -> None:
    body = order_body(new_customer("cancel-late"))
    placed, confirmed = await client.place_and_confirm(body)
    order_id = placed["order_id"]
    accepted = expect(await client.cancel(order_id), 202)
    assert accepted["status"] == "CONFIRMED"
    order = await client.wait_order(order_id, {"CANCELLED"})
    assert order["reason"] == "cancelled_by_customer"
    payment = await client.wait_payment(order_id, "REFUNDED")
    assert payment["amount_cents"] == total_of(body)
    pay_types = types_of(expect(await client.payment_events(payment["payment_id"]), 200))
    assert pay_types == ["payment.authorized", "payment.captured", "payment.refunded"]
    shipment = await client.wait_shipment(order_id, "CANCELLED")
    assert shipment["shipment_id"] == confirmed["shipment_id"]
    view = await client.wait_view(order_id, lambda v: v["status"] == "CANCELLED" and v["payment_status"] == "REFUNDED")
    assert view["shipment_status"] == "CANCELLED" and view["reason"] == "cancelled_by_customer"


async def test_cancel_after_shipping_is_409(client: SystemClient) -> None:
    placed, confirmed = await client.place_and_confirm(order_body(new_customer("cancel-shipped")))
    order_id = placed["order_id"]
    expect(await client.dispatch(confirmed["shipment_id"]), 200)
    await client.wait_order(order_id, {"SHIPPED"})
    resp = await client.cancel(order_id)
    assert resp.status_code == 409, resp.text
    assert (await client.order_ok(order_id))["status"] == "SHIPPED"
    assert (await client.wait_payment(order_id, "CAPTURED"))["status"] == "CAPTURED"
    expect(await client.deliver(confirmed["shipment_id"]), 200)
    await client.wait_order(order_id, {"DELIVERED"})
    assert (await client.cancel(order_id)).status_code == 409, "a delivered order cannot be cancelled"


async def _timeout_bound(client: SystemClient, sut: SystemUnderTest, order_id: str) -> float:
    """How long to wait for a step timeout: our configured one, or what the saga's deadline says."""
    if sut.step_timeout_s is not None:
        return sut.step_timeout_s + 20.0
    saga = expect(await client.saga(order_id), 200)
    if saga.get("deadline"):
        left = (datetime.fromisoformat(saga["deadline"]) - datetime.now(UTC)).total_seconds()
        return max(left, 0.0) + 20.0
    return 60.0


async def test_shipping_timeout_compensates(
    client: SystemClient, sut: SystemUnderTest, pause_service: PauseService
) -> None:
    """Shipping does not answer `shipment.schedule`: the saga voids the payment and cancels."""
    async with pause_service("shipping"):
        placed = await client.place_ok(order_body(new_customer("ship-timeout")))
        order_id = placed["order_id"]
        bound = await _timeout_bound(client, sut, order_id)
        order = await client.wait_order(order_id, {"CANCELLED"}, timeout=bound)
        assert order["reason"] == "shipping_timeout"
        payment = await client.wait_payment(order_id, "VOIDED")
        saga = expect(await client.saga(order_id), 200)
        assert saga["timeouts"] >= 1 and saga["reason"] == "shipping_timeout"
    # Shipping is back: the late schedule is answered and the saga cancels that shipment.
    shipment = await client.wait_shipment(order_id, "CANCELLED", timeout=60)
    assert shipment["shipment_id"] == saga["shipment_id"]
    assert (await client.order_ok(order_id))["status"] == "CANCELLED"
    pay_types = types_of(expect(await client.payment_events(payment["payment_id"]), 200))
    assert "payment.captured" not in pay_types
    await client.wait_view(order_id, lambda v: v["status"] == "CANCELLED" and v["shipment_status"] == "CANCELLED")


async def test_payment_timeout_rejects(client: SystemClient, sut: SystemUnderTest, pause_service: PauseService) -> None:
    """Payment does not answer `payment.authorize`: REJECTED, and a late authorization is voided."""
    async with pause_service("payment"):
        placed = await client.place_ok(order_body(new_customer("pay-timeout")))
        order_id = placed["order_id"]
        bound = await _timeout_bound(client, sut, order_id)
        order = await client.wait_order(order_id, {"REJECTED"}, timeout=bound)
        assert order["reason"] == "payment_timeout"
    payment = await client.wait_payment(order_id, "VOIDED", timeout=60)
    assert payment["amount_cents"] == placed["total_cents"]
    assert await client.shipments_of(order_id) == []
    assert (await client.order_ok(order_id))["status"] == "REJECTED"
    await client.wait_view(order_id, lambda v: v["status"] == "REJECTED" and v["payment_status"] == "VOIDED")


RACE_OUTCOMES = {("CANCELLED", "REFUNDED", "CANCELLED"), ("SHIPPED", "CAPTURED", "DISPATCHED")}


async def _race_outcome(client: SystemClient, order_id: str) -> tuple[str, str, str]:
    """(order, payment, shipment) statuses once they form one of the legal outcomes of the race."""
    last: list[tuple[str, str, str]] = []

    async def settled() -> tuple[str, str, str] | None:
        order = await client.order_ok(order_id)
        payments = await client.payments_of(order_id)
        shipments = await client.shipments_of(order_id)
        assert len(payments) == 1 and len(shipments) == 1, (payments, shipments)
        state = (order["status"], payments[0]["status"], shipments[0]["status"])
        last[:] = [state]
        saga = expect(await client.saga(order_id), 200)
        return state if state in RACE_OUTCOMES and not saga["awaiting"] else None

    try:
        return await eventually(settled, 60, what=f"order {order_id} settled")
    except AssertionError as exc:
        raise AssertionError(f"order {order_id} never reached a legal outcome; last {last}: {exc}") from exc


async def test_cancel_racing_dispatch_keeps_the_invariants(client: SystemClient) -> None:
    """Cancel and dispatch sent at the same moment: whoever wins, the saga's invariants hold -
    a cancelled order has its money back and no active shipment, a shipped one is paid once."""
    bodies = [order_body(new_customer("race")) for _ in range(6)]
    confirmed = [await client.place_and_confirm(b) for b in bodies]
    outcomes = []
    for placed, order in confirmed:
        cancel, dispatch = await asyncio.gather(
            client.cancel(placed["order_id"]), client.dispatch(order["shipment_id"])
        )
        assert cancel.status_code in (202, 409) and dispatch.status_code in (200, 409), (cancel.text, dispatch.text)
        final = await _race_outcome(client, placed["order_id"])
        outcomes.append((cancel.status_code, dispatch.status_code, final))
        if final[0] == "CANCELLED":
            assert dispatch.status_code == 409, f"dispatched, yet cancelled: {outcomes[-1]}"
        else:
            assert dispatch.status_code == 200, outcomes[-1]
            payment = (await client.payments_of(placed["order_id"]))[0]
            assert payment["amount_cents"] == placed["total_cents"]
    print(f"race outcomes (cancel, dispatch, final): {outcomes}")

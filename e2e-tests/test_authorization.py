"""The authorization matrix (docs/API.md, "Authorization"), end to end on all four services.

Roles × endpoints: a customer on its own and on another customer's resources, staff, admin,
no token, and every kind of bad token. Refused writes append nothing. Also: Idempotency-Key
scoping per customer, the customer-filtered SSE stream, the open /health routes and the
bearer security scheme in every OpenAPI document.

Two customers, A and B, each with one confirmed order, are made once for the module.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from client import SystemClient, bearer, expect, new_customer, order_body
from streams import KafkaTap, sse

SERVICES = ("order", "payment", "shipping", "query")
OPEN_PATHS = ("/health", "/health/live", "/health/ready")


@dataclass(frozen=True)
class Party:
    """A customer with one confirmed order: its token, order, payment and shipment ids."""

    customer: str
    token: str
    order_id: str
    payment_id: str
    shipment_id: str


@dataclass(frozen=True)
class World:
    a: Party
    b: Party
    staff: str
    admin: str


async def _party(client: SystemClient, tag: str) -> Party:
    customer = new_customer(tag)
    token = client.token("customer", customer)
    placed = expect(await client.place(order_body(customer), token=token), 202)
    order_id = placed["order_id"]
    await client.wait_order(order_id, {"CONFIRMED"})
    await client.wait_view(order_id, lambda v: v["status"] == "CONFIRMED")
    [payment] = await client.payments_of(order_id)
    [shipment] = await client.shipments_of(order_id)
    return Party(customer, token, order_id, payment["payment_id"], shipment["shipment_id"])


@pytest.fixture(scope="module")
async def world(client: SystemClient) -> World:
    a, b = await asyncio.gather(_party(client, "authz-a"), _party(client, "authz-b"))
    return World(a, b, client.token("staff"), client.token("admin"))


async def _call(
    client: SystemClient, service: str, method: str, path: str, token: str | None, **kw: Any
) -> httpx.Response:
    url = client.endpoints.service_urls()[service] + path
    return await client.http.request(method, url, headers={**bearer(token), **kw.pop("headers", {})}, **kw)


def _reads(p: Party) -> list[tuple[str, str, dict[str, str]]]:
    """Every read of one party's resources: (service, path, query)."""
    return [
        ("order", f"/orders/{p.order_id}", {}),
        ("order", f"/orders/{p.order_id}", {"as_of_version": "1"}),
        ("order", f"/orders/{p.order_id}/events", {}),
        ("order", f"/sagas/{p.order_id}", {}),
        ("payment", f"/payments/{p.payment_id}", {}),
        ("payment", f"/payments/{p.payment_id}/events", {}),
        ("shipping", f"/shipments/{p.shipment_id}", {}),
        ("shipping", f"/shipments/{p.shipment_id}/events", {}),
        ("query", f"/orders/{p.order_id}", {}),
        ("query", f"/orders/{p.order_id}", {"min_version": "1", "wait_s": "0.5"}),
        ("query", f"/orders/{p.order_id}/timeline", {}),
    ]


# --------------------------------------------------------------------------- reads


async def test_a_customer_reads_its_own_resources_on_every_service(client: SystemClient, world: World) -> None:
    for service, path, params in _reads(world.a):
        resp = await _call(client, service, "GET", path, world.a.token, params=params)
        assert resp.status_code == 200, f"{service} {path}: {resp.status_code} {resp.text[:200]}"


async def test_another_customers_resources_are_not_found(client: SystemClient, world: World) -> None:
    """The answer for an id that does not exist (404; a `min_version` wait: 504 at version 0): a
    customer cannot learn which ids exist."""
    for service, path, params in _reads(world.b):
        resp = await _call(client, service, "GET", path, world.a.token, params=params)
        if "min_version" in params:
            assert (resp.status_code, resp.json()["current_version"]) == (504, 0), resp.text
        else:
            assert resp.status_code == 404, f"{service} {path}: {resp.status_code} {resp.text[:200]}"
            assert resp.json()["code"].endswith("_not_found"), resp.text
        unknown = path.replace(world.b.order_id, str(uuid.uuid4()))
        unknown = unknown.replace(world.b.payment_id, str(uuid.uuid4())).replace(world.b.shipment_id, str(uuid.uuid4()))
        nothing = await _call(client, service, "GET", unknown, world.a.token, params=params)
        assert (nothing.status_code, nothing.json()["code"]) == (resp.status_code, resp.json()["code"]), "an oracle"


@pytest.mark.parametrize("role", ["staff", "admin"])
async def test_staff_and_admin_read_every_customers_resources(client: SystemClient, world: World, role: str) -> None:
    token = world.staff if role == "staff" else world.admin
    for party in (world.a, world.b):
        for service, path, params in _reads(party):
            resp = await _call(client, service, "GET", path, token, params=params)
            assert resp.status_code == 200, f"{role} {service} {path}: {resp.status_code} {resp.text[:200]}"


async def test_lists_are_scoped_to_the_customer(client: SystemClient, world: World) -> None:
    a, b = world.a, world.b
    for service, path, key in (("payment", "/payments", "payment_id"), ("shipping", "/shipments", "shipment_id")):
        own = expect(await _call(client, service, "GET", path, a.token, params={"order_id": a.order_id}), 200)
        assert [x[key] for x in own] == [getattr(a, key)]
        other = expect(await _call(client, service, "GET", path, a.token, params={"order_id": b.order_id}), 200)
        assert other == [], f"{service}: a customer listed another customer's {path}"
        staff = expect(await _call(client, service, "GET", path, world.staff, params={"order_id": b.order_id}), 200)
        assert [x[key] for x in staff] == [getattr(b, key)]
    # The query list: always the caller's own; naming another customer is refused.
    mine = expect(await _call(client, "query", "GET", "/orders", a.token), 200)
    assert [o["order_id"] for o in mine["items"]] == [a.order_id]
    named = expect(await _call(client, "query", "GET", "/orders", a.token, params={"customer_id": a.customer}), 200)
    assert named["items"] == mine["items"]
    refused = await _call(client, "query", "GET", "/orders", a.token, params={"customer_id": b.customer})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
    theirs = expect(
        await _call(client, "query", "GET", "/orders", world.staff, params={"customer_id": b.customer}), 200
    )
    assert [o["order_id"] for o in theirs["items"]] == [b.order_id]


# --------------------------------------------------------------------------- writes


async def test_placing_is_a_customers_act_for_itself_only(client: SystemClient, world: World, tap: KafkaTap) -> None:
    victim = new_customer("authz-victim")
    refused: list[tuple[str, httpx.Response]] = [
        ("another customer", await client.place(order_body(victim), token=world.a.token)),
        ("staff", await client.place(order_body(victim), token=world.staff)),
        ("admin", await client.place(order_body(victim), token=world.admin)),
    ]
    for who, resp in refused:
        assert resp.status_code == 403, f"{who}: {resp.status_code} {resp.text[:200]}"
        assert "Location" not in resp.headers
    assert refused[0][1].json() == {
        "code": "customer_mismatch",
        "message": refused[0][1].json()["message"],
        "field": "customer_id",
    }
    await _nothing_placed_for(client, tap, victim)


async def test_a_customer_cancels_only_its_own_orders_and_staff_cancel_any(client: SystemClient, world: World) -> None:
    mine, theirs = await asyncio.gather(_fresh_order(client, "authz-cancel-a"), _fresh_order(client, "authz-cancel-b"))
    refused = await _call(client, "order", "POST", f"/orders/{theirs[1]}/cancel", mine[0])
    assert refused.status_code == 404, refused.text
    assert (await client.order_ok(theirs[1]))["version"] == theirs[2], "a refused cancel appended"
    own = await _call(client, "order", "POST", f"/orders/{mine[1]}/cancel", mine[0])
    assert own.status_code == 202, own.text
    by_staff = await _call(client, "order", "POST", f"/orders/{theirs[1]}/cancel", world.staff)
    assert by_staff.status_code == 202, by_staff.text
    for order_id in (mine[1], theirs[1]):
        assert (await client.wait_order(order_id, {"CANCELLED"}))["reason"] == "cancelled_by_customer"


async def test_only_staff_and_admin_dispatch_and_deliver(client: SystemClient, world: World) -> None:
    customer, order_id, _ = await _fresh_order(client, "authz-ship")
    [shipment] = await client.shipments_of(order_id)
    url = f"/shipments/{shipment['shipment_id']}"
    for action in ("dispatch", "deliver"):
        resp = await _call(client, "shipping", "POST", f"{url}/{action}", customer)
        assert resp.status_code == 403 and resp.json()["code"] == "forbidden", resp.text
    assert expect(await _call(client, "shipping", "GET", url, world.staff), 200)["version"] == 1
    assert (
        expect(await _call(client, "shipping", "POST", f"{url}/dispatch", world.staff), 200)["status"] == "DISPATCHED"
    )
    assert expect(await _call(client, "shipping", "POST", f"{url}/deliver", world.admin), 200)["status"] == "DELIVERED"


async def test_stats_are_staffs_and_rebuilds_admins(client: SystemClient, world: World) -> None:
    assert (await _call(client, "query", "GET", "/stats", world.a.token)).status_code == 403
    for token in (world.staff, world.admin):
        assert (await _call(client, "query", "GET", "/stats", token)).status_code == 200
    for token in (world.a.token, world.staff):
        for method, path in (("POST", "/admin/rebuild"), ("GET", "/admin/generations")):
            resp = await _call(client, "query", method, path, token)
            assert resp.status_code == 403 and resp.json()["code"] == "forbidden", f"{method} {path}: {resp.text}"
    # Admin rebuilds (the rebuild itself: test_views.py); its listing is open to admin.
    assert (await _call(client, "query", "GET", "/admin/generations", world.admin)).status_code == 200


# --------------------------------------------------------------------------- idempotency


async def test_an_idempotency_key_is_scoped_to_its_customer(client: SystemClient, world: World) -> None:
    key = f"authz-shared-{uuid.uuid4()}"
    c1, c2 = new_customer("authz-idem-1"), new_customer("authz-idem-2")
    first = expect(await client.place(order_body(c1), idempotency_key=key), 202)
    second = await client.place(order_body(c2), idempotency_key=key)
    assert second.status_code == 202 and "Idempotent-Replayed" not in second.headers, second.text
    assert second.json()["order_id"] != first["order_id"]
    replay = await client.place(order_body(c1), idempotency_key=key)
    assert expect(replay, 202) == first and replay.headers["Idempotent-Replayed"] == "true"
    for customer, order_id in ((c1, first["order_id"]), (c2, second.json()["order_id"])):
        assert (await client.order_ok(order_id))["customer_id"] == customer


# --------------------------------------------------------------------------- no token, bad tokens


def _every_endpoint(w: World) -> list[tuple[str, str, str]]:
    a = w.a
    return [
        ("order", "POST", "/orders"),
        ("order", "GET", f"/orders/{a.order_id}"),
        ("order", "GET", f"/orders/{a.order_id}/events"),
        ("order", "POST", f"/orders/{a.order_id}/cancel"),
        ("order", "GET", f"/sagas/{a.order_id}"),
        ("payment", "GET", f"/payments/{a.payment_id}"),
        ("payment", "GET", f"/payments?order_id={a.order_id}"),
        ("payment", "GET", f"/payments/{a.payment_id}/events"),
        ("shipping", "GET", f"/shipments/{a.shipment_id}"),
        ("shipping", "GET", f"/shipments?order_id={a.order_id}"),
        ("shipping", "GET", f"/shipments/{a.shipment_id}/events"),
        ("shipping", "POST", f"/shipments/{a.shipment_id}/dispatch"),
        ("shipping", "POST", f"/shipments/{a.shipment_id}/deliver"),
        ("query", "GET", f"/orders/{a.order_id}"),
        ("query", "GET", "/orders"),
        ("query", "GET", f"/orders/{a.order_id}/timeline"),
        ("query", "GET", "/stats"),
        ("query", "GET", "/stream"),
        ("query", "POST", "/admin/rebuild"),
        ("query", "GET", "/admin/generations"),
    ]


async def test_every_endpoint_needs_a_token(client: SystemClient, world: World, tap: KafkaTap) -> None:
    customer = new_customer("authz-anon")
    for service, method, path in _every_endpoint(world):
        body = order_body(customer) if path == "/orders" and method == "POST" else None
        for headers in ({"Authorization": ""}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}):
            resp = await _call(client, service, method, path, None, json=body, headers=headers)
            assert resp.status_code == 401, f"{method} {service}{path} {headers}: {resp.status_code}"
            expected = "token_missing" if headers["Authorization"] == "" else "token_invalid"
            assert resp.json()["code"] == expected, resp.text
            assert resp.headers["WWW-Authenticate"].startswith("Bearer "), resp.headers
    await _nothing_placed_for(client, tap, customer)
    assert (await client.order_ok(world.a.order_id))["status"] == "CONFIRMED", "an anonymous cancel was obeyed"
    assert (await client.shipments_of(world.a.order_id))[0]["status"] == "SCHEDULED", "an anonymous dispatch"


@pytest.mark.parametrize(
    "kind",
    [
        "malformed",
        "expired",
        "wrong_signature",
        "unknown_kid",
        "wrong_audience",
        "wrong_issuer",
        "alg_none",
        "hs256_with_public_key",
        "no_role",
    ],
)
async def test_bad_tokens_are_401_everywhere_and_append_nothing(
    client: SystemClient, world: World, tap: KafkaTap, bad_tokens: dict[str, str], kind: str
) -> None:
    token = bad_tokens[kind]
    customer = new_customer(f"authz-{kind}")
    for service, method, path in _every_endpoint(world):
        body = order_body(customer) if path == "/orders" and method == "POST" else None
        resp = await _call(client, service, method, path, token, json=body)
        assert resp.status_code == 401, f"{kind}: {method} {service}{path}: {resp.status_code} {resp.text[:200]}"
        code = "token_expired" if kind == "expired" else "token_invalid"
        assert (resp.json()["code"], bool(resp.json()["message"])) == (code, True), resp.text
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="events-first", error="invalid_token"')
    await _nothing_placed_for(client, tap, customer)
    assert (await client.order_ok(world.a.order_id))["status"] == "CONFIRMED"
    assert (await client.shipments_of(world.a.order_id))[0]["status"] == "SCHEDULED"


# --------------------------------------------------------------------------- open routes, OpenAPI


async def test_health_is_open_metrics_open_on_loopback_and_openapi_shows_bearer(client: SystemClient) -> None:
    for service in SERVICES:
        for path in OPEN_PATHS:
            resp = await _call(client, service, "GET", path, "")
            assert resp.status_code in (200, 503) and resp.status_code != 401, f"{service}{path}"
        # this test runs on the services' host: /metrics is open to loopback clients
        assert (await _call(client, service, "GET", "/metrics", "")).status_code == 200
        schema = expect(await _call(client, service, "GET", "/openapi.json", ""), 200)
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer", service
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                secured = operation.get("security") == [{"bearer": []}]
                assert secured != (path in OPEN_PATHS), f"{service} {method.upper()} {path}: security {secured}"


# --------------------------------------------------------------------------- SSE


async def test_the_stream_shows_a_customer_its_own_orders_only(client: SystemClient, world: World) -> None:
    a, b = world.a, world.b
    refused = await _call(client, "query", "GET", "/stream", a.token, params={"order_id": b.order_id})
    assert refused.status_code == 404 and refused.json()["code"] == "order_not_found", refused.text
    async with (
        sse(client.endpoints, a.token) as mine,
        sse(client.endpoints, a.token, order_id=a.order_id, last_event_id="0") as one,
        sse(client.endpoints, world.staff) as everyone,
    ):
        # B's order first, then A's: once A's stream has A's fact, it has read past B's.
        b_order = await client.place_ok(order_body(b.customer), token=b.token)
        await client.wait_view(b_order["order_id"], lambda v: v["status"] in ("CONFIRMED", "REJECTED"))
        a_order = await client.place_ok(order_body(a.customer), token=a.token)
        await client.wait_view(a_order["order_id"], lambda v: v["status"] in ("CONFIRMED", "REJECTED"))
        timeout = 30.0
        seen_all = await everyone.collect(_has_order(a_order["order_id"], "order.placed"), timeout)
        seen_mine = await mine.collect(_has_order(a_order["order_id"], "order.placed"), timeout)
        history = await one.collect(_has_order(a.order_id, "order.confirmed"), timeout)
    assert _orders_in(seen_all) >= {a_order["order_id"], b_order["order_id"]}
    assert _orders_in(seen_mine) == {a_order["order_id"]}, "a customer's stream showed another's order"
    assert _orders_in(history) == {a.order_id}
    b_seq = max(int(e.id or 0) for e in seen_all if e.json()["correlationid"] == b_order["order_id"])
    assert max(int(e.id or 0) for e in seen_mine) > b_seq, "the customer's stream had not read past B's facts"


def _has_order(order_id: str, fact_type: str) -> Any:
    return lambda events: any(e.json()["correlationid"] == order_id and e.json()["type"] == fact_type for e in events)


def _orders_in(events: list[Any]) -> set[str]:
    return {str(e.json()["correlationid"]) for e in events}


# --------------------------------------------------------------------------- helpers


async def _fresh_order(client: SystemClient, tag: str) -> tuple[str, str, int]:
    """A new confirmed order: its customer's token, its id and its write-side version."""
    customer = new_customer(tag)
    token = client.token("customer", customer)
    order_id = expect(await client.place(order_body(customer), token=token), 202)["order_id"]
    order = await client.wait_order(order_id, {"CONFIRMED"})
    return token, order_id, int(order["version"])


async def _nothing_placed_for(client: SystemClient, tap: KafkaTap, customer: str) -> None:
    """No order of `customer` reached Kafka or the views. A valid order placed afterwards is
    the barrier: once it is seen everywhere, so would be anything appended before it."""
    sentinel = await client.place_ok(order_body(new_customer("authz-sentinel")))
    await tap.wait_types(sentinel["order_id"], {"order.placed"})
    await client.wait_view(sentinel["order_id"])
    placed = [m for m in tap.messages if m.type == "order.placed" and m.value["data"].get("customer_id") == customer]
    assert placed == [], f"a refused request of {customer} was appended"
    page = expect(await client.views(customer_id=customer), 200)
    assert page["items"] == []

"""The read API: order summaries, lists, timelines and stats (docs/API.md has the conventions).

Every request reads the `current` view generation (`current_views`: one lookup, then the
query), so a rebuild's switch is seen by the next request of every replica at once. The
bodies are this service's own REST shapes, not the message contract: they are rendered here
from the read models.

Authorization (docs/API.md): staff and admins see every order; a customer sees its own only.
Another customer's order or timeline answers 404, as for an unknown order (no existence
oracle); a customer's list is always its own (`customer_id` defaults to the token's subject,
another id → 403, since the caller named it); /stats is staff's.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.query import generations, store
from services.query.context import context_of, pool_of
from services.query.metrics import MIN_VERSION_WAIT
from services.query.notify import Signal
from services.query.projection import OrderReadModel, Received, causal_order
from shared.auth import Caller, Forbidden, Role, require_role
from shared.contract import OrderStatus, PaymentStatus, ShipmentStatus
from shared.rest import ErrorBody, error_response, error_responses, revealed_views

router = APIRouter(tags=["views"])


class Item(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class OrderSummary(BaseModel):
    order_id: str
    customer_id: str | None
    status: OrderStatus | None
    reason: str | None
    payment_status: PaymentStatus | None
    shipment_status: ShipmentStatus | None
    payment_id: str | None
    shipment_id: str | None
    total_cents: int | None
    currency: str | None
    items: list[Item] | None
    version: int
    updated_at: datetime | None

    @classmethod
    def of(cls, m: OrderReadModel) -> OrderSummary:
        return cls(
            order_id=m.order_id,
            customer_id=m.customer_id,
            status=m.status,
            reason=m.reason,
            payment_status=m.payment_status,
            shipment_status=m.shipment_status,
            payment_id=m.payment_id,
            shipment_id=m.shipment_id,
            total_cents=m.total_cents,
            currency=m.currency,
            items=None
            if m.items is None
            else [Item(sku=i.sku, quantity=i.quantity, unit_price_cents=i.unit_price_cents) for i in m.items],
            version=m.version,
            updated_at=m.updated_at,
        )


class OrderPage(BaseModel):
    items: list[OrderSummary]
    next_cursor: str | None


class TimelineEntry(BaseModel):
    """One fact; `data` is shown in the contract's current version of its message."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    sequence: int
    causationid: str
    correlationid: str
    data: dict[str, Any]

    @classmethod
    def of(cls, f: Received) -> TimelineEntry:
        return cls(
            id=f.id,
            type=f.type,
            source=f.source,
            subject=f.subject,
            time=f.time,
            sequence=f.sequence,
            causationid=f.causation_id,
            correlationid=f.correlation_id,
            data=msgspec.to_builtins(f.data),
        )


class Timeline(BaseModel):
    order_id: str
    order_rule: str
    events: list[TimelineEntry]


class Revenue(BaseModel):
    captured_cents: int
    refunded_cents: int
    revenue_cents: int


class Stats(BaseModel):
    generation: int
    orders_total: int
    orders_by_status: dict[str, int]
    payments_by_status: dict[str, int]
    shipments_by_status: dict[str, int]
    revenue_by_currency: dict[str, Revenue]


class Behind(ErrorBody):
    """`view_behind`: the one error shape plus the versions."""

    order_id: str
    wanted_version: int
    current_version: int
    waited_s: float


TIMELINE_RULE = (
    "occurred-at time (ties: subject, stream version, id), except that a fact never precedes "
    "an earlier version of its own stream nor the fact named by its causationid"
)


@asynccontextmanager
async def current_views(request: Request) -> AsyncIterator[store.Views]:
    """The views every read goes to: the current generation's, on a pooled connection."""
    async with pool_of(request).acquire() as conn:
        yield store.Views(conn, await generations.current_generation(conn))


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


def _order_not_found(message: str) -> JSONResponse:
    return error_response(404, "order_not_found", message)


# ---------------------------------------------------------------- cursors


class BadCursor(ValueError):
    """A `cursor` query parameter that this service did not issue."""


def encode_cursor(placed_at: datetime, order_id: str) -> str:
    """An opaque keyset cursor: base64url of `[placed_at, order_id]` of the last row served."""
    return base64.urlsafe_b64encode(orjson.dumps([placed_at.isoformat(), order_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        placed_at, order_id = orjson.loads(raw)
        when = datetime.fromisoformat(placed_at)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadCursor("cursor is not one this service issued") from exc
    if when.tzinfo is None or not isinstance(order_id, str) or "\x00" in order_id:
        raise BadCursor("cursor is not one this service issued")
    return when, order_id


# ---------------------------------------------------------------- routes


@router.get(
    "/orders/{order_id}",
    response_model=OrderSummary,
    summary="An order's summary; with min_version, wait (bounded) until the view has applied it",
    responses={
        **error_responses(404),
        504: {"model": Behind, "description": "min_version not reached within the wait"},
    },
)
async def get_order(
    request: Request,
    principal: Caller,
    order_id: str,
    min_version: Annotated[
        int | None, Query(ge=1, description="wait until the view has applied this order version")
    ] = None,
    wait_s: Annotated[
        float | None, Query(ge=0, description="how long to wait for min_version (default MIN_VERSION_TIMEOUT_S)")
    ] = None,
) -> Any:
    """404 `order_not_found` until a fact of the order's own stream has been applied (and for
    a customer, unless it is that customer's order)."""
    ctx = context_of(request)
    if min_version is None:
        async with current_views(request) as views:
            model = await views.order(order_id)
        if model is None or not model.known or not principal.may_access(model.customer_id):
            return _order_not_found(f"order {order_id!r} is not known")
        return OrderSummary.of(model)
    limit = ctx.settings.min_version_timeout_s if wait_s is None else wait_s
    if limit > ctx.settings.min_version_max_timeout_s:
        raise _invalid("wait_s", f"at most {ctx.settings.min_version_max_timeout_s} seconds")
    started = time.monotonic()
    deadline = started + limit
    notifications = ctx.notifications
    while True:
        waiter = notifications.order_waiter(order_id)  # before reading, so a commit in between is not missed
        try:
            async with current_views(request) as views:
                model = await views.order(order_id)
            if model is not None and not principal.may_access(model.customer_id):
                model = None  # another customer's order waits like an unknown one: no existence oracle
            current = model.version if model is not None else 0
            if model is not None and current >= min_version:
                MIN_VERSION_WAIT.labels(outcome="reached").observe(time.monotonic() - started)
                return OrderSummary.of(model)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A NOTIFY naming this order (or any order: a switch, a reconnect) wakes us; the cap
            # re-checks anyway (a silently lost listener).
            await Signal.wait(waiter, min(remaining, 1.0 if notifications.listening else 0.25))
        finally:
            notifications.forget(order_id, waiter)
    waited = round(time.monotonic() - started, 3)
    MIN_VERSION_WAIT.labels(outcome="timeout").observe(waited)
    return error_response(
        504,
        "view_behind",
        f"the view of order {order_id} has applied version {current}, not yet {min_version}; retry later",
        headers={"Retry-After": "1"},
        order_id=order_id,
        wanted_version=min_version,
        current_version=current,
        waited_s=waited,
    )


@router.get(
    "/orders",
    response_model=OrderPage,
    summary="Orders newest first, optionally by customer and status; keyset pagination by opaque cursor",
    description="A customer's token lists that customer's orders only (`customer_id` may be left out; "
    "another customer's id → 403).",
    responses=error_responses(403),
)
async def list_orders(
    request: Request,
    principal: Caller,
    customer_id: str | None = None,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Any:
    if principal.role is Role.CUSTOMER:
        if customer_id is not None and customer_id != principal.subject:
            raise Forbidden("a customer lists its own orders only", field="customer_id")
        customer_id = principal.subject
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except BadCursor as exc:
            raise _invalid("cursor", str(exc)) from exc
    async with current_views(request) as views:
        rows = await views.orders(
            customer_id=customer_id, status=status.value if status else None, limit=limit + 1, after=after
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit and page[-1].placed_at is not None:
        next_cursor = encode_cursor(page[-1].placed_at, page[-1].order_id)
    return OrderPage(items=[OrderSummary.of(m) for m in page], next_cursor=next_cursor)


@router.get(
    "/orders/{order_id}/timeline",
    response_model=Timeline,
    summary="Every fact of every service about the order, in causal order",
    responses=error_responses(404),
)
async def get_timeline(request: Request, order_id: str, principal: Caller) -> Any:
    """404 `order_not_found` until a fact about the order has been applied (for a customer:
    until its order.placed has, and only for its own order)."""
    async with current_views(request) as views:
        if principal.role is Role.CUSTOMER:
            model = await views.order(order_id)
            if model is None or not principal.may_access(model.customer_id):
                return _order_not_found(f"no facts about order {order_id}")
        facts = await views.timeline(order_id)
    if not facts:
        return _order_not_found(f"no facts about order {order_id}")
    entries = await revealed_views(request, [TimelineEntry.of(f) for f in causal_order(facts)])
    return Timeline(order_id=order_id, order_rule=TIMELINE_RULE, events=entries)


@router.get(
    "/stats",
    response_model=Stats,
    summary="Counts by status; revenue by currency = captured minus refunded money (staff, admin)",
    dependencies=[Depends(require_role(Role.STAFF))],
    responses=error_responses(403),
)
async def get_stats(request: Request) -> Any:
    async with current_views(request) as views:
        totals = await views.totals()
    return {
        "generation": views.generation,
        "orders_total": sum(totals.orders_by_status.values()),
        "orders_by_status": {s: totals.orders_by_status.get(s, 0) for s in OrderStatus},
        "payments_by_status": {s: totals.payments_by_status.get(s, 0) for s in PaymentStatus},
        "shipments_by_status": {s: totals.shipments_by_status.get(s, 0) for s in ShipmentStatus},
        "revenue_by_currency": {
            currency: {"captured_cents": c, "refunded_cents": r, "revenue_cents": c - r}
            for currency, (c, r) in sorted(totals.revenue.items())
        },
    }

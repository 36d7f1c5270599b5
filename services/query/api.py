"""The read API of SPEC §5 "query (8004)": order summaries, lists, timelines and stats.

Every request reads the `current` view generation (one lookup, then the query), so a
rebuild's switch is seen by the next request of every replica at once.
"""
from __future__ import annotations

import time
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.query import store
from services.query.context import context_of, pool_of
from services.query.metrics import MIN_VERSION_WAIT
from services.query.projections import (
    ORDER_STATUSES,
    PAYMENT_STATUSES,
    SHIPMENT_STATUSES,
    BadCursor,
    causal_order,
    decode_cursor,
    encode_cursor,
)

router = APIRouter(tags=["views"])

OrderStatus = Enum("OrderStatus", {s: s for s in ORDER_STATUSES}, type=str)  # type: ignore[misc]


class Item(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class OrderSummary(BaseModel):
    order_id: str
    customer_id: str | None
    status: str | None
    reason: str | None
    payment_status: str | None
    shipment_status: str | None
    payment_id: str | None
    shipment_id: str | None
    total_cents: int | None
    currency: str | None
    items: list[Item] | None
    version: int
    updated_at: datetime | None


class OrderPage(BaseModel):
    items: list[OrderSummary]
    next_cursor: str | None


class TimelineEntry(BaseModel):
    id: str
    type: str
    source: str
    subject: str
    time: datetime
    sequence: int
    causationid: str
    correlationid: str
    data: dict[str, Any]


class Timeline(BaseModel):
    order_id: str
    order_rule: str
    events: list[TimelineEntry]


class Money(BaseModel):
    captured_cents: int
    refunded_cents: int
    revenue_cents: int


class Stats(BaseModel):
    generation: int
    orders_total: int
    orders_by_status: dict[str, int]
    payments_by_status: dict[str, int]
    shipments_by_status: dict[str, int]
    revenue_by_currency: dict[str, Money]


class Behind(BaseModel):
    code: str
    message: str
    order_id: str
    wanted_version: int
    current_version: int
    waited_s: float


TIMELINE_RULE = (
    "occurred-at time (ties: subject, stream version, id), except that a fact never precedes "
    "an earlier version of its own stream nor the fact named by its causationid"
)


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


def _unknown(order_id: str) -> JSONResponse:
    return JSONResponse({"code": "not_found", "message": f"order {order_id!r} is not known"}, status_code=404)


@router.get(
    "/orders/{order_id}",
    response_model=OrderSummary,
    summary="An order's summary; with min_version, wait (bounded) until the view has applied it",
    responses={404: {"description": "no fact of this order's stream applied yet"},
               504: {"model": Behind, "description": "min_version not reached within the wait"}},
)
async def get_order(
    request: Request,
    order_id: str,
    min_version: Annotated[int | None, Query(ge=1, description="wait until the view has applied this order version")] = None,
    wait_s: Annotated[float | None, Query(ge=0, description="how long to wait for min_version (default MIN_VERSION_TIMEOUT_S)")] = None,
) -> Any:
    ctx = context_of(request)
    pool = pool_of(request)
    if min_version is None:
        async with pool.acquire() as conn:
            view = await store.get_order(conn, await store.current_generation(conn), order_id)
        if view is None or not view.known:
            return _unknown(order_id)
        return view.summary()
    limit = ctx.settings.min_version_timeout_s if wait_s is None else wait_s
    if limit > ctx.settings.min_version_max_timeout_s:
        raise _invalid("wait_s", f"at most {ctx.settings.min_version_max_timeout_s} seconds")
    started = time.monotonic()
    deadline = started + limit
    signal = ctx.notifications.views
    while True:
        waiter = signal.waiter()  # before reading, so a commit in between is not missed
        async with pool.acquire() as conn:
            view = await store.get_order(conn, await store.current_generation(conn), order_id)
        current = view.version if view is not None else 0
        if view is not None and current >= min_version:
            MIN_VERSION_WAIT.labels(outcome="reached").observe(time.monotonic() - started)
            return view.summary()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # NOTIFY wakes us on every commit; the cap re-checks anyway (a silently lost listener).
        await signal.wait(waiter, min(remaining, 1.0 if ctx.notifications.listening else 0.25))
    waited = round(time.monotonic() - started, 3)
    MIN_VERSION_WAIT.labels(outcome="timeout").observe(waited)
    body = Behind(
        code="view_behind",
        message=f"the view of order {order_id} has applied version {current}, not yet {min_version}; retry later",
        order_id=order_id,
        wanted_version=min_version,
        current_version=current,
        waited_s=waited,
    )
    return JSONResponse(body.model_dump(), status_code=504, headers={"Retry-After": "1"})


@router.get(
    "/orders",
    response_model=OrderPage,
    summary="Orders newest first, optionally by customer and status; keyset pagination by opaque cursor",
)
async def list_orders(
    request: Request,
    customer_id: str | None = None,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Any:
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except BadCursor as exc:
            raise _invalid("cursor", str(exc)) from exc
    async with pool_of(request).acquire() as conn:
        rows = await store.list_orders(
            conn,
            await store.current_generation(conn),
            customer_id=customer_id,
            status=status.value if status is not None else None,
            limit=limit + 1,
            after=after,
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit and page[-1].placed_at is not None:
        next_cursor = encode_cursor(page[-1].placed_at, page[-1].order_id)
    return {"items": [v.summary() for v in page], "next_cursor": next_cursor}


@router.get(
    "/orders/{order_id}/timeline",
    response_model=Timeline,
    summary="Every fact of every service about the order, in causal order",
    responses={404: {"description": "no fact about this order applied yet"}},
)
async def get_timeline(request: Request, order_id: str) -> Any:
    async with pool_of(request).acquire() as conn:
        facts = await store.timeline(conn, await store.current_generation(conn), order_id)
    if not facts:
        return JSONResponse({"code": "not_found", "message": f"no facts about order {order_id}"}, status_code=404)
    return {"order_id": order_id, "order_rule": TIMELINE_RULE, "events": [f.timeline_entry() for f in causal_order(facts)]}


@router.get(
    "/stats",
    response_model=Stats,
    summary="Counts by status; revenue by currency = captured minus refunded money",
)
async def get_stats(request: Request) -> Any:
    async with pool_of(request).acquire() as conn:
        generation = await store.current_generation(conn)
        s = await store.stats(conn, generation)
    return {
        "generation": generation,
        "orders_total": sum(s.orders_by_status.values()),
        "orders_by_status": {k: s.orders_by_status.get(k, 0) for k in ORDER_STATUSES},
        "payments_by_status": {k: s.payments_by_status.get(k, 0) for k in PAYMENT_STATUSES},
        "shipments_by_status": {k: s.shipments_by_status.get(k, 0) for k in SHIPMENT_STATUSES},
        "revenue_by_currency": {
            currency: {"captured_cents": c, "refunded_cents": r, "revenue_cents": c - r}
            for currency, (c, r) in sorted(s.revenue.items())
        },
    }

"""GET /stream: Server-Sent Events of facts as the views apply them.

The SSE `id` is `fact_feed.seq`, a number assigned in commit order (see views.sql) that
survives rebuilds, so `Last-Event-ID` (header, or `?last_event_id=` for the first connect)
resumes exactly after the last fact the client saw: missed facts are replayed from the
table, then the stream goes live. Without it the stream starts at the current end.
The feed is causal (see store.py and views.sql): a fact never comes before the fact its
`causationid` names when that is a fact the views consume; one sent without its cause past
FEED_CAUSAL_WAIT_MS carries the CloudEvents extension attribute `"causalgap": "true"`.
Idle streams get a `: keep-alive` comment every SSE_KEEPALIVE_S. A stream ends after
SSE_MAX_STREAM_S (an EventSource reconnects and resumes by itself); that bounds how long a
graceful shutdown of the server waits for open streams.

A customer's token streams only that customer's orders: with `order_id`, one of its own (another
customer's, or one whose order.placed the views have not applied yet → 404); without it, the
facts of every order the current views know as its own. A fact of an order whose placement
the views had not yet applied when the fact was sent is not shown on that unfiltered stream
(the order's own stream, and the timeline, show everything).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from services.query import generations, store
from services.query.context import context_of, pool_of
from services.query.metrics import SSE_CLIENTS
from shared.auth import Caller, Role
from shared.rest import error_response, error_responses

router = APIRouter(tags=["stream"])

RETRY_MS = 2000
MAX_ID = 2**63 - 1  # fact_feed.seq is a BIGINT


def format_event(item: store.FeedItem) -> str:
    return f"id: {item.seq}\ndata: {item.document}\n\n"


@router.get(
    "/stream",
    summary="Server-Sent Events of facts as they arrive; resume with Last-Event-ID",
    description=(
        "Each event's `data` is a fact as a CloudEvents document, its `id` the feed position. A fact"
        " never comes before the fact its `causationid` names (when that is a fact on an event topic);"
        ' one sent without its cause after FEED_CAUSAL_WAIT_MS carries `"causalgap": "true"`.'
    ),
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"},
        **error_responses(404),
    },
)
async def stream(
    request: Request,
    principal: Caller,
    order_id: str | None = None,
    last_event_id: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="resume after this id (same as the header)")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    resume_from = last_event_id
    header = (last_event_id_header or "").strip()
    if header:
        if not (header.isascii() and header.isdigit() and int(header) <= MAX_ID):
            raise RequestValidationError(
                [{"loc": ("header", "Last-Event-ID"), "msg": "must be an id this stream sent", "type": "value_error"}]
            )
        resume_from = int(header)
    customer = principal.subject if principal.role is Role.CUSTOMER else None
    if customer is not None and order_id is not None:
        async with pool_of(request).acquire() as conn:
            views = store.Views(conn, await generations.current_generation(conn))
            model = await views.order(order_id)
        if model is None or model.customer_id != customer:
            return error_response(404, "order_not_found", f"order {order_id!r} is not known")
        customer = None  # the order is the customer's: its whole stream

    return StreamingResponse(
        _events(request, order_id, resume_from, customer),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, order_id: str | None, resume_from: int | None, customer: str | None
) -> AsyncIterator[str]:
    ctx = context_of(request)
    settings = ctx.settings
    pool = pool_of(request)
    signal = ctx.notifications.views
    if resume_from is None:
        async with pool.acquire() as conn:
            resume_from = await store.feed_head(conn)
    last = resume_from
    SSE_CLIENTS.inc()  # counted once its starting point is fixed (tests rely on that order)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        started = last_write = time.monotonic()
        while time.monotonic() - started < settings.sse_max_stream_s:
            waiter = signal.waiter()  # before reading, so a commit in between is not missed
            async with pool.acquire() as conn:
                scope = None
                if customer is not None:  # the generation of each read: a rebuild may switch it
                    scope = store.CustomerScope(store.schema_of(await generations.current_generation(conn)), customer)
                items = await store.feed_after(conn, last, order_id, settings.sse_batch, customer=scope)
            if items:
                yield "".join(format_event(i) for i in items)
                last = items[-1].seq
                last_write = time.monotonic()
                if len(items) == settings.sse_batch:
                    continue
            idle = time.monotonic() - last_write
            if idle >= settings.sse_keepalive_s:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
                idle = 0.0
            await signal.wait(waiter, min(settings.sse_keepalive_s - idle, settings.sse_poll_s))
    finally:
        SSE_CLIENTS.dec()

"""REST API of the order service: place, read, time-travel, cancel, inspect the saga.

Choices made here:
* Request bodies are strict (services/order/views.py); domain rules (e.g. an order total
  beyond BIGINT) are 422 `{code, message, field}`.
* Authorization (docs/API.md): only a customer places, and only for itself (a body naming
  another customer → 403); staff and admins read and cancel every order; a customer's reads
  and cancel of another customer's order answer 404, as for an order that does not exist.
* `Idempotency-Key` (1-200 printable characters) is scoped to the customer and kept forever;
  "same body" means the same JSON value (key order and spacing do not matter). A replay
  answers 202 with the stored answer and the header `Idempotent-Replayed: true`.
* `?as_of_version=N`: N < 1 → 422; N beyond the order's current version → 404
  `version_not_found` (the order has no such past yet).
* Causation id of what a request appends: `X-Request-ID` if sent, else the Idempotency-Key,
  else a fresh id; the correlation id is always the order id.
* Cancel answers 202 with the order as it is *now* (still PENDING/CONFIRMED): the order becomes
  CANCELLED once the saga's compensations are confirmed. Repeating an accepted cancel is 202.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from services.order import handlers, queries
from services.order.idempotency import IdempotencyKey, Placed, body_fingerprint
from services.order.placements import PlacementQueue
from services.order.settings import OrderSettings
from services.order.views import CancelAcceptedView, OrderAccepted, OrderView, PlaceOrderRequest, SagaView
from shared.auth import Caller, Forbidden, Principal, Role, require_role
from shared.contract import AuthorizePayment, OrderPlaced
from shared.errors import NotFound
from shared.ids import new_id
from shared.rest import ErrorBody, EventView, error_responses, request_causation_id, revealed_view, revealed_views
from shared.runtime import Runtime, runtime_of

router = APIRouter()

OrderId = Path(description="the order id (a UUID assigned by POST /orders)")
RequestId = Header(
    default=None,
    alias="X-Request-ID",
    description="becomes the causation id of what the request appends (a new id if absent)",
)
IdempotencyKeyHeader = Header(
    default=None,
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    pattern=r"^[\x21-\x7e]+$",
    description="retry-safe placement: the same key with the same body returns the same order and "
    "appends nothing; with a different body → 422",
)


def _placements(request: Request) -> PlacementQueue:
    """The service's group commit of placements (services/order/placements.py), made on first use."""
    queue: PlacementQueue | None = getattr(request.app.state, "placements", None)
    if queue is None:
        runtime, settings = runtime_of(request), _settings(request)
        queue = request.app.state.placements = PlacementQueue(lambda batch: _place_many(runtime, settings, batch))
    return queue


async def _place_many(
    runtime: Runtime,
    settings: OrderSettings,
    batch: Sequence[handlers.Placement],
    *,
    idempotency: IdempotencyKey | None = None,
) -> list[Placed]:
    return await handlers.place_orders(
        runtime.store,
        batch,
        step_timeout_s=settings.saga_step_timeout_s,
        keystore=runtime.keystore,
        idempotency=idempotency,
    )


def _settings(request: Request) -> OrderSettings:
    settings = runtime_of(request).settings
    assert isinstance(settings, OrderSettings)
    return settings


@router.post(
    "/orders",
    tags=["orders"],
    status_code=202,
    response_model=OrderAccepted,
    responses={
        403: {"model": ErrorBody, "description": "not a customer token, or `customer_id` is not the token's subject"},
        422: {
            "description": "invalid input, nothing appended: `detail[].loc` names the field (schema), or "
            "`{code, message, field}` for a domain rule or an Idempotency-Key reused with another body",
        },
    },
    summary=f"Place an order: appends {OrderPlaced.TYPE} and starts the fulfilment saga",
    description=f"202 + `Location: /orders/{{id}}`. The saga then sends `{AuthorizePayment.TYPE}`, and the "
    "order moves to CONFIRMED, SHIPPED, DELIVERED or REJECTED/CANCELLED.",
)
async def place_order(
    body: PlaceOrderRequest,
    request: Request,
    principal: Annotated[Principal, Depends(require_role(Role.CUSTOMER))],
    response: Response,
    idempotency_key: str | None = IdempotencyKeyHeader,
    x_request_id: str | None = RequestId,
) -> OrderAccepted:
    if body.customer_id != principal.subject:
        raise Forbidden(
            "a customer places orders for itself only: customer_id must be the token's subject",
            code="customer_mismatch",
            field="customer_id",
        )
    key = None
    if idempotency_key is not None:
        key = IdempotencyKey(principal.subject, idempotency_key, body_fingerprint(body.model_dump(mode="json")))
    causation_id = request_causation_id(x_request_id) if x_request_id else (idempotency_key or new_id())
    placement = handlers.placement(body.to_command(new_id()), causation_id)
    if key is not None:  # the key's row goes in the placement's transaction: alone
        [placed] = await _place_many(runtime_of(request), _settings(request), [placement], idempotency=key)
    else:
        placed = await _placements(request).place(placement)
    response.headers["Location"] = f"/orders/{placed.order_id}"
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return OrderAccepted.model_validate(placed.to_dict())


@router.get(
    "/orders/{order_id}",
    tags=["orders"],
    response_model=OrderView,
    response_model_exclude_none=True,
    responses=error_responses(404),
    summary="An order's write-side state, now or as of a past version",
)
async def get_order(
    request: Request,
    principal: Caller,
    order_id: str = OrderId,
    as_of_version: int | None = Query(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="replay the log up to this fact (1 = as placed); beyond the current version → 404",
    ),
) -> OrderView:
    return await revealed_view(
        request, OrderView.of(await queries.get_order(runtime_of(request).store, order_id, as_of_version, principal))
    )


@router.get(
    "/orders/{order_id}/events",
    tags=["orders"],
    response_model=list[EventView],
    responses=error_responses(404),
    summary="The order's facts in stream order, with their envelopes",
)
async def get_order_events(request: Request, principal: Caller, order_id: str = OrderId) -> list[EventView]:
    return await revealed_views(
        request, [EventView.of(e) for e in await queries.order_events(runtime_of(request).store, order_id, principal)]
    )


@router.post(
    "/orders/{order_id}/cancel",
    tags=["orders"],
    status_code=202,
    response_model=CancelAcceptedView,
    responses=error_responses(404, 409),
    summary="Ask to cancel: 202 while PENDING or CONFIRMED, 409 once SHIPPED or final",
    description="The saga cancels the shipment and voids or refunds the payment; the order turns "
    "CANCELLED (`cancelled_by_customer`) once those are confirmed. 409 too if the goods left "
    "the warehouse before the order learnt it.",
)
async def cancel_order(
    request: Request,
    principal: Caller,
    response: Response,
    order_id: str = OrderId,
    x_request_id: str | None = RequestId,
) -> CancelAcceptedView:
    await queries.order_events(runtime_of(request).store, order_id, principal)  # 404 if not theirs
    accepted = await handlers.cancel_order(
        runtime_of(request).store,
        order_id,
        causation_id=request_causation_id(x_request_id),
        attempts=_settings(request).conflict_attempts,
    )
    response.headers["Location"] = f"/orders/{order_id}"
    status = accepted.order.status
    if status is None:  # pragma: no cover - handlers checked the order exists
        raise NotFound("order_not_found", f"order {order_id} does not exist")
    return CancelAcceptedView.model_validate(
        {
            "order_id": order_id,
            "status": str(status),
            "version": accepted.order.version,
            "saga_step": accepted.saga.step,
        }
    )


@router.get(
    "/sagas/{order_id}",
    tags=["sagas"],
    response_model=SagaView,
    responses=error_responses(404),
    summary="The order's fulfilment saga: state, trail of steps and its facts",
)
async def get_saga(request: Request, principal: Caller, order_id: str = OrderId) -> SagaView:
    state, events = await queries.get_saga(runtime_of(request).store, order_id, principal)
    return await revealed_view(request, SagaView.of(state, events))

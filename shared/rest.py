"""REST shapes and helpers every service's HTTP layer shares: event listings, error bodies, causation,
and the read endpoints of an aggregate (`add_reads`).

Every error any service answers has one shape (`ErrorBody`): a stable snake_case `code`, a
human `message`, for invalid input the first bad `field` (dotted, e.g. `items.0.quantity`)
and the validator's full `detail` list, plus fields particular to a code (e.g. `view_behind`
names the versions). docs/API.md lists the codes.
"""

from __future__ import annotations

import inspect
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shared.auth import Caller, Principal
from shared.contract import PaymentAuthorized
from shared.errors import NotFound
from shared.eventstore import Recorded
from shared.ids import new_id
from shared.keystore import revealed
from shared.personal import holds_personal

if TYPE_CHECKING:
    from shared.aggregate import Aggregate, StreamState

S = TypeVar("S", bound="StreamState")
V = TypeVar("V", bound=BaseModel)
S_contra = TypeVar("S_contra", contravariant=True)


async def revealed_views(request: Request, views: list[V]) -> list[V]:
    """Views as a read edge shows them: every sealed personal value opened with its customer's
    key, or `[erased]` once the key is destroyed (shared/personal.py). One key-store query for
    all of them, none when they hold no sealed value."""
    from shared.runtime import runtime_of  # shared.runtime imports this module

    documents = [view.model_dump(mode="json") for view in views]
    if not holds_personal(documents):
        return views
    opened = await revealed(runtime_of(request).keystore, documents)
    return [type(view).model_validate(document) for view, document in zip(views, opened, strict=True)]


async def revealed_view(request: Request, view: V) -> V:
    """One view as a read edge shows it (`revealed_views`)."""
    return (await revealed_views(request, [view]))[0]


def request_causation_id(header: str | None) -> str:
    """The causation id of an HTTP command: the caller's X-Request-ID if sane, else a new one."""
    if header and 0 < len(header) <= 128 and header.isprintable():
        return header
    return new_id()


# ---------------------------------------------------------------------- REST shapes


class EventView(BaseModel):
    """One fact with its envelope, as `GET /<things>/{id}/events` lists them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "0b5e3d1c-7a0e-4a52-9f1e-3f7c1e2d4b6a",
                    "type": PaymentAuthorized.TYPE,
                    "stream_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
                    "version": 1,
                    "schema_version": 2,
                    "occurred_at": "2025-01-01T12:00:00.123456+00:00",
                    "correlation_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
                    "causation_id": "c2f1d3e4-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                    "data": {
                        "payment_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
                        "order_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
                        "amount": {"amount_cents": 4200, "currency": "EUR"},
                    },
                }
            ]
        }
    )

    event_id: uuid.UUID
    type: str = Field(description="`<group>.<name>`, past tense")
    stream_id: str = Field(description="the aggregate id")
    version: int = Field(description="position in the stream: 1, 2, 3 …")
    schema_version: int = Field(description="the contract version `data` is shown in (older facts are upcast)")
    occurred_at: datetime
    correlation_id: str = Field(description="the order id of the whole flow")
    causation_id: str = Field(description="id of the message (or HTTP request) that caused it")
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Recorded) -> EventView:
        return cls(
            event_id=event.uuid,
            type=event.type,
            stream_id=event.subject,
            version=event.sequence,
            schema_version=event.data.VERSION,
            occurred_at=event.time,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=msgspec.to_builtins(event.data),
        )


class ErrorBody(BaseModel):
    """Every error answer of every service (refusals: see shared/errors.py)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"code": "illegal_shipment_transition", "message": "cannot deliver a shipment that is SCHEDULED"},
                {
                    "code": "invalid_input",
                    "message": "Input should be greater than or equal to 1",
                    "field": "items.0.quantity",
                    "detail": [{"loc": ["body", "items", 0, "quantity"], "msg": "...", "type": "greater_than_equal"}],
                },
            ]
        },
    )

    code: str
    message: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = None


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    detail: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one way any service answers an error."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the refusals an endpoint can answer with."""
    described = {
        401: "no valid bearer token (`token_missing`, `token_invalid`, `token_expired`)",
        403: "the token's role or customer may not do this",
        404: "no such aggregate",
        409: "illegal transition, or lost a write race too many times",
        422: "invalid input",
        503: "a dependency is unavailable for a moment; retry after `Retry-After`",
    }
    return {s: {"model": ErrorBody, "description": described.get(s, "refused")} for s in statuses}


# ---------------------------------------------------------------------- read endpoints


class StateView(Protocol[S_contra]):
    """A response model made from an aggregate's folded state (e.g. `PaymentView`, with `of(state)`)."""

    def of(self, state: S_contra, /) -> BaseModel: ...


def add_reads(api: APIRouter, aggregate: Aggregate[Any, S], view: StateView[S], *, id_param: Any) -> None:
    """Add the read endpoints of an aggregate to `api`, named after `aggregate.name` (e.g. payment):

        GET /payments/{payment_id}         the current state as `view` (404 if there is none)
        GET /payments?order_id=            the order's payments, oldest first (`indexed_by_order` only)
        GET /payments/{payment_id}/events  its facts in stream order, as `EventView`

    `id_param` is the `Path(...)` of the id (its description). Every read folds the stream again.
    A customer sees only the aggregates whose state names it as `customer_id` (another
    customer's is 404, like one that does not exist, and left out of lists); staff see all.
    """
    from shared.runtime import runtime_of  # shared.runtime imports this module

    name = aggregate.name
    things, id_name = f"{name}s", f"{name}_id"
    by_id = inspect.Signature(
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter("principal", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Caller),
            inspect.Parameter(id_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=id_param, annotation=str),
        ]
    )

    def visible(principal: Principal, state: S) -> bool:
        # Payment and shipment states carry `customer_id` (None before the field existed).
        return principal.may_access(getattr(state, "customer_id", None))

    async def load_visible(request: Request, principal: Principal, stream_id: str) -> tuple[list[Recorded], S]:
        history, state = await aggregate.load(runtime_of(request).store, stream_id)
        if not visible(principal, state):
            raise NotFound(f"{name}_not_found", f"{name} {stream_id} does not exist")
        return history, state

    # No docstrings below: FastAPI would show them as the operations' descriptions.
    async def get_one(request: Request, principal: Principal, **path: str) -> BaseModel:
        _, state = await load_visible(request, principal, path[id_name])
        return await revealed_view(request, view.of(state))

    async def get_events(request: Request, principal: Principal, **path: str) -> list[EventView]:
        history, _ = await load_visible(request, principal, path[id_name])
        return await revealed_views(request, [EventView.of(e) for e in history])

    async def list_of_order(
        request: Request,
        principal: Caller,
        order_id: str = Query(min_length=1, description=f"the order whose {things} to list"),
    ) -> list[BaseModel]:
        states = await aggregate.of_order(runtime_of(request).store, order_id)
        return await revealed_views(request, [view.of(s) for s in states if visible(principal, s)])

    # FastAPI reads an endpoint's parameters from its signature: these two take the path's `<name>_id`.
    get_one.__signature__ = get_events.__signature__ = by_id  # type: ignore[attr-defined]

    api.get(
        f"/{things}/{{{id_name}}}",
        name=f"get_{name}",
        response_model=view,
        response_model_exclude_none=True,
        responses=error_responses(404),
        summary=f"A {name}'s current state",
    )(get_one)
    if aggregate.indexed_by_order:
        api.get(
            f"/{things}",
            name=f"list_{things}",
            response_model=list[view],  # type: ignore[valid-type]
            response_model_exclude_none=True,
            summary=f"The {things} of an order (oldest first; empty if none)",
        )(list_of_order)
    api.get(
        f"/{things}/{{{id_name}}}/events",
        name=f"get_{name}_events",
        response_model=list[EventView],
        responses=error_responses(404),
        summary=f"A {name}'s facts in stream order, with their envelopes",
    )(get_events)

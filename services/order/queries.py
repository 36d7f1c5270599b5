"""The order service's reads: an order (now or as of a past version), its facts, its saga.

Everything is folded from the log on every read (the write side's own view; the query service
keeps the read models).
"""

from __future__ import annotations

from services.order import domain, saga
from services.order.domain import OrderState
from services.order.saga import SagaState
from shared.aggregate import facts_of
from shared.auth import Principal
from shared.contract import OrderPlaced
from shared.errors import NotFound
from shared.eventstore import EventStore, Recorded


def _not_found(order_id: str) -> NotFound:
    return NotFound("order_not_found", f"order {order_id} does not exist")


async def order_events(store: EventStore, order_id: str, principal: Principal) -> list[Recorded]:
    """The order's facts; NotFound unless the stream is an order (starts with its placement)
    that `principal` may see (another customer's order is "not found" too: no existence oracle)."""
    history = await store.read(order_id)
    if not history or not isinstance(history[0].data, OrderPlaced):
        raise _not_found(order_id)
    if not principal.may_access(history[0].data.customer_id):
        raise _not_found(order_id)
    return history


async def get_order(store: EventStore, order_id: str, as_of_version: int | None, principal: Principal) -> OrderState:
    """The order's write-side state, or as it was right after its fact `as_of_version`."""
    history = await order_events(store, order_id, principal)
    if as_of_version is not None and as_of_version > len(history):
        raise NotFound(
            "version_not_found", f"order {order_id} is at version {len(history)}; it has no version {as_of_version}"
        )
    return domain.fold(facts_of(history), until_version=as_of_version)


async def get_saga(store: EventStore, order_id: str, principal: Principal) -> tuple[SagaState, list[Recorded]]:
    """The saga's state and its facts (none of which holds the payment token)."""
    history = await store.read(saga.saga_stream_id(order_id))
    if not history:
        raise NotFound("saga_not_found", f"no saga for order {order_id}")
    started = history[0].data
    customer_id = getattr(started, "customer_id", None) or None
    if not principal.may_access(customer_id):
        raise NotFound("saga_not_found", f"no saga for order {order_id}")
    return saga.fold(facts_of(history)), history

"""The Order aggregate: what the customer asked for and where its fulfilment stands.

Pure: `decide(command, state) -> list[OrderFact]`, `evolve(state, fact) -> state`,
`fold(facts) -> state`. The facts are the contract's (shared/contract/order.py). Stream id =
order_id. The order only changes status when the saga tells it to (confirm/ship/deliver/
reject/cancel); it never talks to other services itself.

Idempotency (redelivery) semantics: a command whose effect is already recorded returns []
instead of raising, so a retried saga step or a redelivered message has no second effect:
  * PlaceOrder on an existing order with the same content → [] (different content → 409).
  * ConfirmOrder on a CONFIRMED order with the same payment/shipment ids → [].
  * ShipOrder on SHIPPED / DeliverOrder on DELIVERED with the same shipment id → [].
  * RejectOrder on REJECTED / CancelOrder on CANCELLED with the same reason → [].
Anything else outside the allowed transitions raises IllegalTransition (409).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from services.domain_kit import require_country, require_currency, require_int, require_text
from shared.contract import (
    MAX_CENTS,
    Address,
    Fact,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderStatus,
)
from shared.errors import IllegalTransition, InvalidCommand, NotFound

#: Statuses from which no further transition exists.
FINAL_STATUSES = frozenset({OrderStatus.DELIVERED, OrderStatus.REJECTED, OrderStatus.CANCELLED})
#: A customer may cancel (202) only in these statuses, 409 otherwise.
CANCELLABLE_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.CONFIRMED})

#: Upper bound on one line's quantity: keeps totals well inside BIGINT and catches typos.
MAX_QUANTITY = 1_000_000


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """POST /orders. The payment token is checked here and handed to the saga's start, in
    memory only: no fact records it (and no repr shows it)."""

    order_id: str
    customer_id: str
    items: Sequence[OrderLine]
    currency: str
    shipping_address: Address
    payment_token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConfirmOrder:
    """Saga: payment captured and shipment scheduled."""

    order_id: str
    payment_id: str
    shipment_id: str


@dataclass(frozen=True, slots=True)
class ShipOrder:
    """Saga: the shipment was dispatched."""

    order_id: str
    shipment_id: str


@dataclass(frozen=True, slots=True)
class DeliverOrder:
    """Saga: the shipment was delivered."""

    order_id: str
    shipment_id: str


@dataclass(frozen=True, slots=True)
class RejectOrder:
    """Saga: the order could not start (no money was ever authorized)."""

    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Saga: every compensation of a started order is confirmed."""

    order_id: str
    reason: str


#: The commands the saga gives the order.
SagaOrderCommand: TypeAlias = ConfirmOrder | ShipOrder | DeliverOrder | RejectOrder | CancelOrder
OrderCommand: TypeAlias = PlaceOrder | SagaOrderCommand


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class OrderState:
    """The order as its facts say; version 0 means it does not exist."""

    order_id: str = ""
    version: int = 0
    status: OrderStatus | None = None
    customer_id: str = ""
    items: tuple[OrderLine, ...] = ()
    currency: str = ""
    total_cents: int = 0
    shipping_address: Address | None = None
    payment_id: str | None = None
    shipment_id: str | None = None
    reason: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0


def can_cancel(state: OrderState) -> bool:
    """POST /orders/{id}/cancel is accepted only while PENDING or CONFIRMED."""
    return state.status in CANCELLABLE_STATUSES


def total_of(items: Iterable[OrderLine]) -> int:
    return sum(line.line_total_cents for line in items)


# --------------------------------------------------------------------------- decide


def _validate_place(command: PlaceOrder) -> int:
    """Check the domain rules (a command built in-process is not validated by the contract
    codec); return the order total in cents."""
    require_text(command.order_id, "order_id")
    require_text(command.customer_id, "customer_id")
    if isinstance(command.items, (str, bytes)) or not isinstance(command.items, Sequence) or not command.items:
        raise InvalidCommand("items", "an order needs at least one item")
    for i, line in enumerate(command.items):
        name = f"items[{i}]"
        if not isinstance(line, OrderLine):
            raise InvalidCommand(name, f"{name} must be an order line")
        require_text(line.sku, f"{name}.sku")
        require_int(line.quantity, f"{name}.quantity", minimum=1, maximum=MAX_QUANTITY)
        require_int(line.unit_price_cents, f"{name}.unit_price_cents", minimum=0)
    require_currency(command.currency, "currency")
    address = command.shipping_address
    if not isinstance(address, Address):
        raise InvalidCommand("shipping_address", "shipping_address must be an address")
    for part in ("name", "line1", "city", "postal_code"):
        require_text(getattr(address, part), f"shipping_address.{part}")
    require_country(address.country, "shipping_address.country")
    require_text(command.payment_token, "payment_token")
    total = total_of(command.items)
    if total > MAX_CENTS:
        raise InvalidCommand("items", "order total is too large")
    return total


def _same_order(command: PlaceOrder, state: OrderState) -> bool:
    return (
        command.customer_id == state.customer_id
        and tuple(command.items) == state.items
        and command.currency == state.currency
        and command.shipping_address == state.shipping_address
    )


def _illegal(action: str, state: OrderState) -> IllegalTransition:
    return IllegalTransition(
        "order_not_cancellable" if action == "cancel" else "illegal_order_transition",
        f"cannot {action} an order that is {state.status}",
    )


def decide(command: OrderCommand, state: OrderState) -> list[OrderFact]:
    """Turn a command into the facts it causes, or refuse it with a DomainError."""
    if isinstance(command, PlaceOrder):
        total = _validate_place(command)
        if state.exists:
            if _same_order(command, state):
                return []
            raise IllegalTransition("order_already_exists", f"order {command.order_id} exists with other content")
        return [
            OrderPlaced(
                order_id=command.order_id,
                customer_id=command.customer_id,
                items=tuple(command.items),
                currency=command.currency,
                total_cents=total,
                shipping_address=command.shipping_address,
            )
        ]

    if not state.exists:
        raise NotFound("order_not_found", f"order {command.order_id} does not exist")

    if isinstance(command, ConfirmOrder):
        require_text(command.payment_id, "payment_id")
        require_text(command.shipment_id, "shipment_id")
        if state.status is OrderStatus.PENDING:
            return [
                OrderConfirmed(order_id=state.order_id, payment_id=command.payment_id, shipment_id=command.shipment_id)
            ]
        if (
            state.status is OrderStatus.CONFIRMED
            and state.payment_id == command.payment_id
            and state.shipment_id == command.shipment_id
        ):
            return []
        raise _illegal("confirm", state)

    if isinstance(command, ShipOrder):
        if state.status is OrderStatus.CONFIRMED and command.shipment_id == state.shipment_id:
            return [OrderShipped(order_id=state.order_id, shipment_id=command.shipment_id)]
        if state.status is OrderStatus.SHIPPED and command.shipment_id == state.shipment_id:
            return []
        raise _illegal("ship", state)

    if isinstance(command, DeliverOrder):
        if state.status is OrderStatus.SHIPPED and command.shipment_id == state.shipment_id:
            return [OrderDelivered(order_id=state.order_id, shipment_id=command.shipment_id)]
        if state.status is OrderStatus.DELIVERED and command.shipment_id == state.shipment_id:
            return []
        raise _illegal("deliver", state)

    if isinstance(command, RejectOrder):
        require_text(command.reason, "reason")
        if state.status is OrderStatus.PENDING:
            return [OrderRejected(order_id=state.order_id, reason=command.reason)]
        if state.status is OrderStatus.REJECTED and state.reason == command.reason:
            return []
        raise _illegal("reject", state)

    if isinstance(command, CancelOrder):
        require_text(command.reason, "reason")
        if state.status in CANCELLABLE_STATUSES:
            return [OrderCancelled(order_id=state.order_id, reason=command.reason)]
        if state.status is OrderStatus.CANCELLED and state.reason == command.reason:
            return []
        raise _illegal("cancel", state)

    raise InvalidCommand("command", f"unknown order command {type(command).__name__}")


# --------------------------------------------------------------------------- evolve / fold


def evolve(state: OrderState, fact: Fact) -> OrderState:
    """Apply one fact. Facts of other kinds only advance the version (the stream position)."""
    version = state.version + 1
    match fact:
        case OrderPlaced():
            return OrderState(
                order_id=fact.order_id,
                version=version,
                status=OrderStatus.PENDING,
                customer_id=fact.customer_id,
                items=tuple(fact.items),
                currency=fact.currency,
                total_cents=fact.total_cents,
                shipping_address=fact.shipping_address,
            )
        case OrderConfirmed():
            return replace(
                state,
                version=version,
                status=OrderStatus.CONFIRMED,
                payment_id=fact.payment_id,
                shipment_id=fact.shipment_id,
            )
        case OrderShipped():
            return replace(state, version=version, status=OrderStatus.SHIPPED)
        case OrderDelivered():
            return replace(state, version=version, status=OrderStatus.DELIVERED)
        case OrderRejected():
            return replace(state, version=version, status=OrderStatus.REJECTED, reason=fact.reason)
        case OrderCancelled():
            return replace(state, version=version, status=OrderStatus.CANCELLED, reason=fact.reason)
        case _:
            return replace(state, version=version)


def fold(facts: Iterable[Fact], until_version: int | None = None) -> OrderState:
    """Rebuild the state from the log; `until_version` gives the state as of that fact."""
    state = OrderState()
    for fact in facts:
        if until_version is not None and state.version >= until_version:
            break
        state = evolve(state, fact)
    return state

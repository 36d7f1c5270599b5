"""The Order aggregate: what the customer asked for and where its fulfilment stands.

Pure: `decide(command, state) -> list[NewEvent]`, `evolve(state, event) -> state`,
`fold(events) -> state`. Stream id = order_id. The order only changes status when the saga
tells it to (confirm/ship/deliver/reject/cancel); it never talks to other services itself.

Idempotency (redelivery) semantics: a command whose effect is already recorded returns []
instead of raising, so a retried saga step or a redelivered message has no second effect:
  * PlaceOrder on an existing order with the same content → [] (different content → 409).
  * ConfirmOrder on a CONFIRMED order with the same payment/shipment ids → [].
  * ShipOrder on SHIPPED / DeliverOrder on DELIVERED with the same shipment id → [].
  * RejectOrder on REJECTED / CancelOrder on CANCELLED with the same reason → [].
Anything else outside the allowed transitions raises IllegalTransition (409).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence, TypeAlias

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.domain_kit import (
    Address,
    MAX_CENTS,
    EventLike,
    field_of,
    require_country,
    require_currency,
    require_int,
    require_mapping,
    require_text,
)
from shared.messages import NewEvent


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


#: Statuses from which no further transition exists.
FINAL_STATUSES = frozenset({OrderStatus.DELIVERED, OrderStatus.REJECTED, OrderStatus.CANCELLED})
#: SPEC §5: cancel is accepted (202) only in these statuses, 409 otherwise.
CANCELLABLE_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.CONFIRMED})

#: Upper bound on one line's quantity: keeps totals well inside BIGINT and catches typos.
MAX_QUANTITY = 1_000_000


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price_cents: int

    @property
    def line_total_cents(self) -> int:
        return self.quantity * self.unit_price_cents

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity, "unit_price_cents": self.unit_price_cents}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: str = "items[0]") -> OrderLine:
        """Build from JSON; a missing key is an InvalidCommand naming `field.key`."""
        data = require_mapping(data, field)
        prefix = field + "."
        return cls(
            sku=field_of(data, "sku", prefix),
            quantity=field_of(data, "quantity", prefix),
            unit_price_cents=field_of(data, "unit_price_cents", prefix),
        )


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """POST /orders. `payment_token` is validated here but never recorded in order events."""

    order_id: str
    customer_id: str
    items: Sequence[OrderLine]
    currency: str
    shipping_address: Address
    payment_token: str

    @classmethod
    def from_body(cls, order_id: str, body: Mapping[str, Any]) -> PlaceOrder:
        """Map a raw JSON request body to the command; missing/mistyped parts name the field."""
        body = require_mapping(body, "body")
        raw_items = field_of(body, "items")
        if not isinstance(raw_items, list):
            raise InvalidCommand("items", "items must be a list")
        return cls(
            order_id=order_id,
            customer_id=field_of(body, "customer_id"),
            items=tuple(OrderLine.from_dict(item, f"items[{i}]") for i, item in enumerate(raw_items)),
            currency=field_of(body, "currency"),
            shipping_address=Address.from_dict(field_of(body, "shipping_address"), "shipping_address"),
            payment_token=field_of(body, "payment_token"),
        )


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


OrderCommand: TypeAlias = PlaceOrder | ConfirmOrder | ShipOrder | DeliverOrder | RejectOrder | CancelOrder


# --------------------------------------------------------------------------- events (facts)

ORDER_PLACED = "order.placed"
ORDER_CONFIRMED = "order.confirmed"
ORDER_SHIPPED = "order.shipped"
ORDER_DELIVERED = "order.delivered"
ORDER_REJECTED = "order.rejected"
ORDER_CANCELLED = "order.cancelled"

ORDER_EVENT_TYPES = frozenset(
    {ORDER_PLACED, ORDER_CONFIRMED, ORDER_SHIPPED, ORDER_DELIVERED, ORDER_REJECTED, ORDER_CANCELLED}
)


def order_placed(command: PlaceOrder, total_cents: int) -> NewEvent:
    return NewEvent(
        ORDER_PLACED,
        {
            "order_id": command.order_id,
            "customer_id": command.customer_id,
            "items": [line.to_dict() for line in command.items],
            "currency": command.currency,
            "total_cents": total_cents,
            "shipping_address": command.shipping_address.to_dict(),
        },
    )


def order_confirmed(order_id: str, payment_id: str, shipment_id: str) -> NewEvent:
    return NewEvent(ORDER_CONFIRMED, {"order_id": order_id, "payment_id": payment_id, "shipment_id": shipment_id})


def order_shipped(order_id: str, shipment_id: str) -> NewEvent:
    return NewEvent(ORDER_SHIPPED, {"order_id": order_id, "shipment_id": shipment_id})


def order_delivered(order_id: str, shipment_id: str) -> NewEvent:
    return NewEvent(ORDER_DELIVERED, {"order_id": order_id, "shipment_id": shipment_id})


def order_rejected(order_id: str, reason: str) -> NewEvent:
    return NewEvent(ORDER_REJECTED, {"order_id": order_id, "reason": reason})


def order_cancelled(order_id: str, reason: str) -> NewEvent:
    return NewEvent(ORDER_CANCELLED, {"order_id": order_id, "reason": reason})


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

    def to_dict(self) -> dict[str, Any]:
        """The write-side view of GET /orders/{id} (SPEC §5); `reason` only when there is one."""
        view: dict[str, Any] = {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "status": None if self.status is None else str(self.status),
            "items": [line.to_dict() for line in self.items],
            "currency": self.currency,
            "total_cents": self.total_cents,
            "shipping_address": None if self.shipping_address is None else self.shipping_address.to_dict(),
            "version": self.version,
        }
        if self.payment_id is not None:
            view["payment_id"] = self.payment_id
        if self.shipment_id is not None:
            view["shipment_id"] = self.shipment_id
        if self.reason is not None:
            view["reason"] = self.reason
        return view


def can_cancel(state: OrderState) -> bool:
    """SPEC §5: POST /orders/{id}/cancel is accepted only while PENDING or CONFIRMED."""
    return state.status in CANCELLABLE_STATUSES


def total_of(items: Iterable[OrderLine]) -> int:
    return sum(line.line_total_cents for line in items)


# --------------------------------------------------------------------------- decide


def _validate_place(command: PlaceOrder) -> int:
    """Check the domain rules beyond the schema; return the order total in cents."""
    require_text(command.order_id, "order_id")
    require_text(command.customer_id, "customer_id")
    if isinstance(command.items, (str, bytes)) or not isinstance(command.items, Sequence) or not command.items:
        raise InvalidCommand("items", "an order needs at least one item")
    for i, line in enumerate(command.items):
        field = f"items[{i}]"
        if not isinstance(line, OrderLine):
            raise InvalidCommand(field, f"{field} must be an order line")
        require_text(line.sku, f"{field}.sku")
        require_int(line.quantity, f"{field}.quantity", minimum=1, maximum=MAX_QUANTITY)
        require_int(line.unit_price_cents, f"{field}.unit_price_cents", minimum=0)
    require_currency(command.currency, "currency")
    address = command.shipping_address
    if not isinstance(address, Address):
        raise InvalidCommand("shipping_address", "shipping_address must be an address")
    for name in ("name", "line1", "city", "postal_code"):
        require_text(getattr(address, name), f"shipping_address.{name}")
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


def decide(command: OrderCommand, state: OrderState) -> list[NewEvent]:
    """Turn a command into the facts it causes, or refuse it with a DomainError."""
    if isinstance(command, PlaceOrder):
        total = _validate_place(command)
        if state.exists:
            if _same_order(command, state):
                return []
            raise IllegalTransition("order_already_exists", f"order {command.order_id} exists with other content")
        return [order_placed(command, total)]

    if not state.exists:
        raise NotFound("order_not_found", f"order {command.order_id} does not exist")

    if isinstance(command, ConfirmOrder):
        require_text(command.payment_id, "payment_id")
        require_text(command.shipment_id, "shipment_id")
        if state.status is OrderStatus.PENDING:
            return [order_confirmed(state.order_id, command.payment_id, command.shipment_id)]
        if (
            state.status is OrderStatus.CONFIRMED
            and state.payment_id == command.payment_id
            and state.shipment_id == command.shipment_id
        ):
            return []
        raise _illegal("confirm", state)

    if isinstance(command, ShipOrder):
        if state.status is OrderStatus.CONFIRMED and command.shipment_id == state.shipment_id:
            return [order_shipped(state.order_id, command.shipment_id)]
        if state.status is OrderStatus.SHIPPED and command.shipment_id == state.shipment_id:
            return []
        raise _illegal("ship", state)

    if isinstance(command, DeliverOrder):
        if state.status is OrderStatus.SHIPPED and command.shipment_id == state.shipment_id:
            return [order_delivered(state.order_id, command.shipment_id)]
        if state.status is OrderStatus.DELIVERED and command.shipment_id == state.shipment_id:
            return []
        raise _illegal("deliver", state)

    if isinstance(command, RejectOrder):
        require_text(command.reason, "reason")
        if state.status is OrderStatus.PENDING:
            return [order_rejected(state.order_id, command.reason)]
        if state.status is OrderStatus.REJECTED and state.reason == command.reason:
            return []
        raise _illegal("reject", state)

    if isinstance(command, CancelOrder):
        require_text(command.reason, "reason")
        if state.status in CANCELLABLE_STATUSES:
            return [order_cancelled(state.order_id, command.reason)]
        if state.status is OrderStatus.CANCELLED and state.reason == command.reason:
            return []
        raise _illegal("cancel", state)

    raise InvalidCommand("command", f"unknown order command {type(command).__name__}")


# --------------------------------------------------------------------------- evolve / fold


def evolve(state: OrderState, event: EventLike) -> OrderState:
    """Apply one fact. Unknown types only advance the version (the stream position)."""
    data = event.data
    version = state.version + 1
    if event.type == ORDER_PLACED:
        return OrderState(
            order_id=data["order_id"],
            version=version,
            status=OrderStatus.PENDING,
            customer_id=data["customer_id"],
            items=tuple(OrderLine(i["sku"], i["quantity"], i["unit_price_cents"]) for i in data["items"]),
            currency=data["currency"],
            total_cents=data["total_cents"],
            shipping_address=Address.from_dict(data["shipping_address"], "shipping_address"),
        )
    if event.type == ORDER_CONFIRMED:
        return replace(
            state,
            version=version,
            status=OrderStatus.CONFIRMED,
            payment_id=data["payment_id"],
            shipment_id=data["shipment_id"],
        )
    if event.type == ORDER_SHIPPED:
        return replace(state, version=version, status=OrderStatus.SHIPPED)
    if event.type == ORDER_DELIVERED:
        return replace(state, version=version, status=OrderStatus.DELIVERED)
    if event.type == ORDER_REJECTED:
        return replace(state, version=version, status=OrderStatus.REJECTED, reason=data["reason"])
    if event.type == ORDER_CANCELLED:
        return replace(state, version=version, status=OrderStatus.CANCELLED, reason=data["reason"])
    return replace(state, version=version)


def fold(events: Iterable[EventLike], until_version: int | None = None) -> OrderState:
    """Rebuild the state from the log; `until_version` gives the state as of that event."""
    state = OrderState()
    for event in events:
        if until_version is not None and state.version >= until_version:
            break
        state = evolve(state, event)
    return state

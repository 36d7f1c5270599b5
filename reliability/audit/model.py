"""The write side as its event logs tell it, and the state one audit run shares between checks.

Orders, sagas, payments and shipments are folded here from their facts, independently of the
services' own code: an audit that reused the code it checks would agree with its bugs. The
facts are the contract's typed, current-version messages (older versions were upcast when
they were read), so no check looks at a schema version or a raw field.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from reliability.audit.config import AuditConfig
from reliability.audit.report import AuditReport, Violation
from reliability.audit.snapshot import Snapshot
from shared.contract import (
    Message,
    Money,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderStatus,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentStatus,
    PaymentVoided,
    SagaDeadlineSet,
    SagaFact,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentStatus,
)
from shared.eventstore import Recorded

#: The order service keeps each order's saga in the stream `saga-<order id>`.
SAGA_PREFIX = "saga-"

ORDER_STATUS: Mapping[type[Message], str] = {
    OrderPlaced: OrderStatus.PENDING,
    OrderConfirmed: OrderStatus.CONFIRMED,
    OrderShipped: OrderStatus.SHIPPED,
    OrderDelivered: OrderStatus.DELIVERED,
    OrderRejected: OrderStatus.REJECTED,
    OrderCancelled: OrderStatus.CANCELLED,
}
PAYMENT_STATUS: Mapping[type[Message], str] = {
    PaymentAuthorized: PaymentStatus.AUTHORIZED,
    PaymentDeclined: PaymentStatus.DECLINED,
    PaymentCaptured: PaymentStatus.CAPTURED,
    PaymentVoided: PaymentStatus.VOIDED,
    PaymentRefunded: PaymentStatus.REFUNDED,
}
SHIPMENT_STATUS: Mapping[type[Message], str] = {
    ShipmentScheduled: ShipmentStatus.SCHEDULED,
    ShipmentFailed: ShipmentStatus.FAILED,
    ShipmentDispatched: ShipmentStatus.DISPATCHED,
    ShipmentDelivered: ShipmentStatus.DELIVERED,
    ShipmentCancelled: ShipmentStatus.CANCELLED,
}
FULFILLED: tuple[str, ...] = (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED)
ENDED_BADLY: tuple[str, ...] = (OrderStatus.REJECTED, OrderStatus.CANCELLED)
EXPECTED_SHIPMENT: Mapping[str, str] = {
    OrderStatus.CONFIRMED: ShipmentStatus.SCHEDULED,
    OrderStatus.SHIPPED: ShipmentStatus.DISPATCHED,
    OrderStatus.DELIVERED: ShipmentStatus.DELIVERED,
}
ACTIVE_SHIPMENT: tuple[str, ...] = (ShipmentStatus.SCHEDULED, ShipmentStatus.DISPATCHED)
FINAL_ORDER_FACTS = (OrderDelivered, OrderRejected, OrderCancelled)


@dataclass
class OrderModel:
    order_id: str
    facts: list[Recorded]
    status: str | None = None
    total_cents: int | None = None
    currency: str | None = None
    reason: str | None = None
    placed_at: datetime | None = None
    payment_id: str | None = None
    shipment_id: str | None = None

    @property
    def version(self) -> int:
        return len(self.facts)


@dataclass
class AggregateModel:
    """A payment or a shipment (a shipment has no amount)."""

    stream_id: str
    order_id: str | None
    facts: list[Recorded]
    status: str | None = None
    counts: Counter[str] = field(default_factory=Counter)  # fact type → how many in the stream

    def amounts(self) -> list[tuple[str, Money]]:
        """(fact type, amount) of every payment fact in the stream, in order."""
        return [(e.type, e.data.amount) for e in self.facts if isinstance(e.data, PaymentFact)]


@dataclass
class SagaModel:
    order_id: str
    facts: list[Recorded]
    deadline: datetime | None = None


def streams(facts: Iterable[Recorded]) -> dict[str, list[Recorded]]:
    """Facts by stream, each stream in version order."""
    out: dict[str, list[Recorded]] = defaultdict(list)
    for e in facts:
        out[e.subject].append(e)
    for stream in out.values():
        stream.sort(key=lambda e: e.sequence)
    return out


def order_model(order_id: str, facts: list[Recorded]) -> OrderModel:
    m = OrderModel(order_id, facts)
    for e in facts:
        status = ORDER_STATUS.get(type(e.data))
        if status is None:
            continue
        m.status = str(status)
        match e.data:
            case OrderPlaced(total_cents=total, currency=currency):
                m.total_cents, m.currency, m.placed_at = total, currency, e.time
            case OrderConfirmed(payment_id=payment_id, shipment_id=shipment_id):
                m.payment_id, m.shipment_id = payment_id, shipment_id
            case OrderRejected(reason=reason) | OrderCancelled(reason=reason):
                m.reason = reason
    return m


def aggregate_model(stream_id: str, facts: list[Recorded], statuses: Mapping[type[Message], str]) -> AggregateModel:
    m = AggregateModel(stream_id, None, facts)
    for e in facts:
        m.counts[e.type] += 1
        if m.order_id is None:
            m.order_id = e.data.order_id
        status = statuses.get(type(e.data))
        if status is not None:
            m.status = str(status)
    return m


def saga_model(order_id: str, facts: list[Recorded]) -> SagaModel:
    m = SagaModel(order_id, facts)
    for e in facts:
        if isinstance(e.data, SagaDeadlineSet):
            deadline = e.data.deadline
            m.deadline = deadline.replace(tzinfo=UTC) if deadline is not None and deadline.tzinfo is None else deadline
    return m


class WriteSide:
    """The three logs folded: orders and sagas (order log), payments, shipments."""

    def __init__(self, logs: Mapping[str, list[Recorded]]) -> None:
        self.orders: dict[str, OrderModel] = {}
        self.sagas: dict[str, SagaModel] = {}
        for stream_id, facts in streams(logs.get("order", [])).items():
            if stream_id.startswith(SAGA_PREFIX) or isinstance(facts[0].data, SagaFact):
                order_id = stream_id.removeprefix(SAGA_PREFIX)
                self.sagas[order_id] = saga_model(order_id, facts)
            elif any(isinstance(e.data, OrderFact) for e in facts):
                self.orders[stream_id] = order_model(stream_id, facts)
        self.payments = {
            sid: aggregate_model(sid, facts, PAYMENT_STATUS) for sid, facts in streams(logs.get("payment", [])).items()
        }
        self.shipments = {
            sid: aggregate_model(sid, facts, SHIPMENT_STATUS)
            for sid, facts in streams(logs.get("shipping", [])).items()
        }
        self.payments_of: dict[str, list[AggregateModel]] = defaultdict(list)
        for p in self.payments.values():
            self.payments_of[p.order_id or ""].append(p)
        self.shipments_of: dict[str, list[AggregateModel]] = defaultdict(list)
        for sh in self.shipments.values():
            self.shipments_of[sh.order_id or ""].append(sh)

    def order_of_stream(self, log: str, stream_id: str) -> str | None:
        if log == "order":
            return stream_id.removeprefix(SAGA_PREFIX)
        agg = (self.payments if log == "payment" else self.shipments).get(stream_id)
        return agg.order_id if agg else None

    def active_since(self, cutoff: datetime) -> set[str]:
        """Orders with any fact (order, saga, payment, shipment) newer than `cutoff`."""
        fresh: set[str] = set()
        for oid, m in self.orders.items():
            if m.facts and m.facts[-1].time > cutoff:
                fresh.add(oid)
        for oid, saga in self.sagas.items():
            if saga.facts and saga.facts[-1].time > cutoff:
                fresh.add(oid)
        for agg in [*self.payments.values(), *self.shipments.values()]:
            if agg.order_id and agg.facts and agg.facts[-1].time > cutoff:
                fresh.add(agg.order_id)
        return fresh


@dataclass
class Audit:
    """One run: the snapshot, the folded write side and the report the checks add to."""

    snapshot: Snapshot
    config: AuditConfig
    side: WriteSide
    expected_orders: set[str]
    report: AuditReport = field(default_factory=AuditReport)
    #: Orders active within the grace period: lag-sensitive checks skip them.
    fresh: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, snapshot: Snapshot, config: AuditConfig, expected_orders: Iterable[str]) -> Audit:
        audit = cls(snapshot, config, WriteSide(snapshot.logs), set(expected_orders))
        if config.grace_s > 0:
            audit.fresh = audit.side.active_since(audit.cutoff)
        return audit

    @property
    def now(self) -> datetime:
        return self.snapshot.taken_at

    @property
    def cutoff(self) -> datetime:
        """Facts after this moment are within the grace period."""
        return self.now - timedelta(seconds=self.config.grace_s)

    def add(self, check: str, order_id: str | None, message: str) -> None:
        self.report.violations.append(Violation(check, order_id, message))

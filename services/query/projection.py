"""The pure projection: facts in, view changes out. No I/O, so every rule here is unit-tested.

Facts arrive as contract envelopes whose data is already validated and upcast to the current
version of its message (the kernel's consumer runner decodes them), so the projection only
ever sees the current shapes, whatever version a producer wrote.

Order independence. Facts about one order arrive on three topics (and a rebuild interleaves
partitions differently from live consumption), so the per-order read model is a
*join-semilattice*: every fact becomes a partial model (`patch`), and `merge` is commutative,
associative and idempotent. Whatever order, grouping or duplication the facts arrive in, the
fold gives the same model. The rules, field by field:

- details of the order's placement (customer, items, totals, placed time): first non-null wins
  (there is exactly one placement per order, so "first" never has to choose);
- order `status`/`reason`: set by the order-stream fact with the highest stream version;
  `version` is the highest order-stream version applied;
- `payment_status` / `shipment_status`: the payment's / shipment's fact with the highest
  version of *their own* stream (`payment_version`, `shipment_version`);
- `captured_cents` / `refunded_cents`: the amount of the payment's capture / refund (a payment
  is captured at most once and refunded at most once), so a repeat cannot double-count;
- `updated_at`: the latest occurred-at time of any fact applied (not the wall clock, so a
  rebuild produces identical rows).

`services/query/store.py` applies the same rules in SQL (`ON CONFLICT DO UPDATE`), and an
integration test checks that SQL and this module agree.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import msgspec

from shared.contract import (
    Envelope,
    Fact,
    Message,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderLine,
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
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    ShipmentStatus,
)

#: A fact as the query side receives and keeps it: the contract envelope.
Received = Envelope[Fact]


# gc=False: a read model never refers to itself, and replay builds millions of them.
# Not frozen: `merge_into` updates in place (treated as immutable everywhere else).
class OrderReadModel(msgspec.Struct, kw_only=True, gc=False):
    """The per-order read model, or a partial one (a patch). Field order = table column order."""

    order_id: str
    customer_id: str | None = None
    items: tuple[OrderLine, ...] | None = None
    total_cents: int | None = None
    currency: str | None = None
    placed_at: datetime | None = None
    status: OrderStatus | None = None
    reason: str | None = None
    status_version: int = 0
    version: int = 0
    payment_id: str | None = None
    payment_status: PaymentStatus | None = None
    payment_version: int = 0
    shipment_id: str | None = None
    shipment_status: ShipmentStatus | None = None
    shipment_version: int = 0
    payment_currency: str | None = None
    captured_cents: int | None = None
    refunded_cents: int | None = None
    updated_at: datetime | None = None

    @property
    def known(self) -> bool:
        """True once a fact of the order's own stream was applied (else the API says 404)."""
        return self.version > 0


COLUMNS: tuple[str, ...] = OrderReadModel.__struct_fields__


def _greatest(a: Any, b: Any) -> Any:
    """SQL GREATEST: NULLs are ignored."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge(a: OrderReadModel, b: OrderReadModel) -> OrderReadModel:
    """Join two partial models of one order. Commutative, associative, idempotent.

    On equal stream versions the left side is kept; two *different* facts never share a
    stream version (the write side's optimistic append guarantees it), so this never decides.
    """
    out = msgspec.structs.replace(a)
    merge_into(out, b)
    return out


def merge_into(a: OrderReadModel, b: OrderReadModel) -> None:
    """`a := merge(a, b)` in place: replay folds millions of patches, so no copies."""
    if a.order_id != b.order_id:
        raise ValueError(f"cannot merge models of {a.order_id!r} and {b.order_id!r}")
    # first non-null wins (a single fact sets these)
    if a.customer_id is None:
        a.customer_id = b.customer_id
    if a.items is None:
        a.items = b.items
    if a.total_cents is None:
        a.total_cents = b.total_cents
    if a.currency is None:
        a.currency = b.currency
    if a.placed_at is None:
        a.placed_at = b.placed_at
    if a.payment_id is None:
        a.payment_id = b.payment_id
    if a.shipment_id is None:
        a.shipment_id = b.shipment_id
    if a.payment_currency is None:
        a.payment_currency = b.payment_currency
    # the newest version of the owning stream wins
    if b.status_version > a.status_version:
        a.status, a.reason, a.status_version = b.status, b.reason, b.status_version
    if b.payment_version > a.payment_version:
        a.payment_status, a.payment_version = b.payment_status, b.payment_version
    if b.shipment_version > a.shipment_version:
        a.shipment_status, a.shipment_version = b.shipment_status, b.shipment_version
    # maxima (NULL-ignoring, like SQL GREATEST)
    if b.version > a.version:
        a.version = b.version
    a.captured_cents = _greatest(a.captured_cents, b.captured_cents)
    a.refunded_cents = _greatest(a.refunded_cents, b.refunded_cents)
    a.updated_at = _greatest(a.updated_at, b.updated_at)


def patch(received: Received) -> OrderReadModel:
    """What one fact says about its order, as a partial model."""
    fact = received.data
    match fact:
        case OrderPlaced():
            return OrderReadModel(
                order_id=fact.order_id,
                customer_id=fact.customer_id,
                items=fact.items,
                total_cents=fact.total_cents,
                currency=fact.currency,
                placed_at=received.time,
                status=OrderStatus.PENDING,
                status_version=received.sequence,
                version=received.sequence,
                updated_at=received.time,
            )
        case OrderConfirmed(payment_id=payment_id, shipment_id=shipment_id):
            return _order(received, OrderStatus.CONFIRMED, payment_id=payment_id, shipment_id=shipment_id)
        case OrderShipped(shipment_id=shipment_id):
            return _order(received, OrderStatus.SHIPPED, shipment_id=shipment_id)
        case OrderDelivered(shipment_id=shipment_id):
            return _order(received, OrderStatus.DELIVERED, shipment_id=shipment_id)
        case OrderRejected(reason=reason):
            return _order(received, OrderStatus.REJECTED, reason=reason)
        case OrderCancelled(reason=reason):
            return _order(received, OrderStatus.CANCELLED, reason=reason)
        case OrderFact():  # a fact of the order stream that moves no status
            return _order(received, None)
        case PaymentAuthorized():
            return _payment(received, fact, PaymentStatus.AUTHORIZED)
        case PaymentDeclined():
            return _payment(received, fact, PaymentStatus.DECLINED)
        case PaymentCaptured(amount=amount):
            return _payment(received, fact, PaymentStatus.CAPTURED, captured_cents=amount.amount_cents)
        case PaymentVoided():
            return _payment(received, fact, PaymentStatus.VOIDED)
        case PaymentRefunded(amount=amount):
            return _payment(received, fact, PaymentStatus.REFUNDED, refunded_cents=amount.amount_cents)
        case PaymentFact():
            return _payment(received, fact, None)
        case ShipmentScheduled():
            return _shipment(received, fact, ShipmentStatus.SCHEDULED)
        case ShipmentFailed():
            return _shipment(received, fact, ShipmentStatus.FAILED)
        case ShipmentDispatched():
            return _shipment(received, fact, ShipmentStatus.DISPATCHED)
        case ShipmentDelivered():
            return _shipment(received, fact, ShipmentStatus.DELIVERED)
        case ShipmentCancelled():
            return _shipment(received, fact, ShipmentStatus.CANCELLED)
        case ShipmentFact():
            return _shipment(received, fact, None)
        case _:  # a fact about the order from no stream the views follow: only its time counts
            return OrderReadModel(order_id=fact.order_id, updated_at=received.time)


def _order(
    received: Received,
    status: OrderStatus | None,
    *,
    reason: str | None = None,
    payment_id: str | None = None,
    shipment_id: str | None = None,
) -> OrderReadModel:
    return OrderReadModel(
        order_id=received.data.order_id,
        status=status,
        reason=reason,
        status_version=received.sequence if status is not None else 0,
        version=received.sequence,
        payment_id=payment_id,
        shipment_id=shipment_id,
        updated_at=received.time,
    )


def _payment(
    received: Received,
    fact: PaymentFact,
    status: PaymentStatus | None,
    *,
    captured_cents: int | None = None,
    refunded_cents: int | None = None,
) -> OrderReadModel:
    return OrderReadModel(
        order_id=fact.order_id,
        payment_id=fact.payment_id,
        payment_status=status,
        payment_version=received.sequence if status is not None else 0,
        payment_currency=fact.amount.currency,
        captured_cents=captured_cents,
        refunded_cents=refunded_cents,
        updated_at=received.time,
    )


def _shipment(received: Received, fact: ShipmentFact, status: ShipmentStatus | None) -> OrderReadModel:
    return OrderReadModel(
        order_id=fact.order_id,
        shipment_id=fact.shipment_id,
        shipment_status=status,
        shipment_version=received.sequence if status is not None else 0,
        updated_at=received.time,
    )


def fold(facts: Iterable[Received], models: Mapping[str, OrderReadModel] | None = None) -> dict[str, OrderReadModel]:
    """Apply facts to models (by order id); the result does not depend on the facts' order."""
    out = {k: msgspec.structs.replace(v) for k, v in (models or {}).items()}  # never mutate the caller's
    for received in facts:
        p = patch(received)
        current = out.get(p.order_id)
        if current is None:
            out[p.order_id] = p
        else:
            merge_into(current, p)
    return out


@dataclass(frozen=True)
class Batch:
    """What one poll changes: timeline rows to add and one merged patch per order."""

    facts: list[Received] = field(default_factory=list)
    orders: dict[str, OrderReadModel] = field(default_factory=dict)


def project(envelopes: Iterable[Envelope[Message]]) -> Batch:
    """Turn a batch of Kafka messages into view changes (a command on the topics is skipped)."""
    facts: list[Received] = []
    seen: set[str] = set()
    for env in envelopes:
        if isinstance(env.data, Fact) and env.id not in seen:
            seen.add(env.id)
            facts.append(cast(Received, env))
    return Batch(facts=facts, orders=fold(facts))


def causal_order(facts: Sequence[Received]) -> list[Received]:
    """Order an order's facts so that no fact comes before its cause.

    The rule: by occurred-at time (ties: subject, stream version, id), except that (1) a
    fact comes after the earlier versions of its own stream and (2) a fact comes after
    the fact named by its causation id when that fact is in the set. Facts caused by a
    command (whose id is not a fact) rely on time and rule (1). Deterministic: a
    topological sort that always emits the smallest available key.
    """

    def key(f: Received) -> tuple[datetime, str, int, str]:
        return (f.time, f.subject, f.sequence, f.id)

    unique = list({f.id: f for f in facts}.values())
    by_id = {f.id: f for f in unique}
    preds: dict[str, set[str]] = {f.id: set() for f in unique}
    by_stream: dict[str, list[Received]] = {}
    for f in unique:
        by_stream.setdefault(f.subject, []).append(f)
        cause = by_id.get(f.causation_id)
        if cause is not None and cause.id != f.id:
            preds[f.id].add(cause.id)
    for stream in by_stream.values():
        stream.sort(key=lambda f: (f.sequence, key(f)))
        for earlier, later in zip(stream, stream[1:]):
            if earlier.sequence < later.sequence:
                preds[later.id].add(earlier.id)
    succs: dict[str, list[str]] = {f.id: [] for f in unique}
    for fid, ps in preds.items():
        for p in ps:
            succs[p].append(fid)
    remaining = {fid: len(ps) for fid, ps in preds.items()}
    ready = [(key(f), f.id) for f in unique if remaining[f.id] == 0]
    heapq.heapify(ready)
    out: list[Received] = []
    emitted: set[str] = set()
    while len(out) < len(unique):
        if not ready:  # a cycle (corrupt causation data): release the earliest waiting fact
            f = min((by_id[i] for i in remaining if i not in emitted), key=key)
            heapq.heappush(ready, (key(f), f.id))
        _, fid = heapq.heappop(ready)
        if fid in emitted:
            continue
        emitted.add(fid)
        out.append(by_id[fid])
        for s in succs[fid]:
            remaining[s] -= 1
            if remaining[s] == 0:
                heapq.heappush(ready, (key(by_id[s]), s))
    return out

"""The pure projection: facts in, view changes out. No I/O, so every rule here is unit-tested.

Order independence. Facts about one order arrive on three topics (and a rebuild interleaves
partitions differently from live consumption), so the per-order view is a *join-semilattice*:
every fact becomes a partial view (`patch`), and `merge` is commutative, associative and
idempotent. Whatever order, grouping or duplication the facts arrive in, the fold gives the
same view. The rules, field by field:

- details of `order.placed` (customer, items, totals, placed time): first non-null wins (there
  is exactly one placed fact per order, so "first" never has to choose);
- order `status`/`reason`: set by the order-stream fact with the highest stream version;
  `version` is the highest order-stream version applied;
- `payment_status` / `shipment_status`: the payment's / shipment's fact with the highest
  version of *their own* stream (`payment_version`, `shipment_version`);
- `captured_cents` / `refunded_cents`: the amount of the payment's captured / refunded fact (a
  payment is captured at most once and refunded at most once), so a repeat cannot double-count;
- `updated_at`: the latest occurred-at time of any fact applied (not the wall clock, so a
  rebuild produces identical rows).

`services/query/store.py` applies the same rules in SQL (`ON CONFLICT DO UPDATE`), and an
integration test checks that SQL and this module agree.
"""
from __future__ import annotations

import base64
import binascii
import heapq
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import orjson

from shared.messages import CLOUDEVENTS_SPEC_VERSION, JSON_CONTENT_TYPE, Envelope

ORDER_STATUS_BY_TYPE: Mapping[str, str] = {
    "order.placed": "PENDING",
    "order.confirmed": "CONFIRMED",
    "order.shipped": "SHIPPED",
    "order.delivered": "DELIVERED",
    "order.rejected": "REJECTED",
    "order.cancelled": "CANCELLED",
}
PAYMENT_STATUS_BY_TYPE: Mapping[str, str] = {
    "payment.authorized": "AUTHORIZED",
    "payment.declined": "DECLINED",
    "payment.captured": "CAPTURED",
    "payment.voided": "VOIDED",
    "payment.refunded": "REFUNDED",
}
SHIPMENT_STATUS_BY_TYPE: Mapping[str, str] = {
    "shipment.scheduled": "SCHEDULED",
    "shipment.failed": "FAILED",
    "shipment.dispatched": "DISPATCHED",
    "shipment.delivered": "DELIVERED",
    "shipment.cancelled": "CANCELLED",
}
ORDER_STATUSES: tuple[str, ...] = tuple(ORDER_STATUS_BY_TYPE.values())
PAYMENT_STATUSES: tuple[str, ...] = tuple(PAYMENT_STATUS_BY_TYPE.values())
SHIPMENT_STATUSES: tuple[str, ...] = tuple(SHIPMENT_STATUS_BY_TYPE.values())


class ProjectionError(ValueError):
    """A fact the views cannot place (e.g. no order id at all): the consumer dead-letters it."""


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~2x to build, and replay builds millions
class Fact:
    """One fact as the query side keeps it: the CloudEvents attributes plus the order it is about."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    sequence: int
    order_id: str
    correlation_id: str
    causation_id: str
    schema_version: int
    data: Mapping[str, Any]

    @classmethod
    def from_envelope(cls, env: Envelope) -> Fact | None:
        """None for commands (sequence 0), which are not facts; ProjectionError if unplaceable."""
        if env.is_command:
            return None
        order_id = env.data.get("order_id") or env.correlation_id
        if not isinstance(order_id, str) or not order_id:
            raise ProjectionError(f"fact {env.id} ({env.type}) names no order_id")
        return cls(
            id=env.id,
            type=env.type,
            source=env.source,
            subject=env.subject,
            time=env.time,
            sequence=env.sequence,
            order_id=order_id,
            correlation_id=env.correlation_id,
            causation_id=env.causation_id,
            schema_version=env.schema_version,
            data=env.data if type(env.data) is dict else dict(env.data),  # serialised by orjson
        )

    def cloudevent(self) -> dict[str, Any]:
        """The fact as a CloudEvents 1.0 document (what `/stream` sends)."""
        return {
            "specversion": CLOUDEVENTS_SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat(),
            "datacontenttype": JSON_CONTENT_TYPE,
            "correlationid": self.correlation_id,
            "causationid": self.causation_id,
            "sequence": str(self.sequence),
            "schemaversion": str(self.schema_version),
            "data": dict(self.data),
        }

    def timeline_entry(self) -> dict[str, Any]:
        """The fact as `GET /orders/{id}/timeline` shows it."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": self.time.isoformat(),
            "sequence": self.sequence,
            "causationid": self.causation_id,
            "correlationid": self.correlation_id,
            "data": dict(self.data),
        }


@dataclass(slots=True)  # treated as immutable; not frozen for construction speed (see Fact)
class OrderView:
    """The per-order read model, or a partial one (a patch). Field order = table column order."""

    order_id: str
    customer_id: str | None = None
    items: list[dict[str, Any]] | None = None
    total_cents: int | None = None
    currency: str | None = None
    placed_at: datetime | None = None
    status: str | None = None
    reason: str | None = None
    status_version: int = 0
    version: int = 0
    payment_id: str | None = None
    payment_status: str | None = None
    payment_version: int = 0
    shipment_id: str | None = None
    shipment_status: str | None = None
    shipment_version: int = 0
    payment_currency: str | None = None
    captured_cents: int | None = None
    refunded_cents: int | None = None
    updated_at: datetime | None = None

    @property
    def known(self) -> bool:
        """True once a fact of the order's own stream was applied (else the API says 404)."""
        return self.version > 0

    def summary(self) -> dict[str, Any]:
        """The body of `GET /orders/{id}` (SPEC §5), plus `reason` for final statuses."""
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "status": self.status,
            "reason": self.reason,
            "payment_status": self.payment_status,
            "shipment_status": self.shipment_status,
            "payment_id": self.payment_id,
            "shipment_id": self.shipment_id,
            "total_cents": self.total_cents,
            "currency": self.currency,
            "items": self.items,
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(OrderView))


def _greatest(a: Any, b: Any) -> Any:
    """SQL GREATEST: NULLs are ignored."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge(a: OrderView, b: OrderView) -> OrderView:
    """Join two partial views of one order. Commutative, associative, idempotent.

    On equal stream versions the left side is kept; two *different* facts never share a
    stream version (the write side's optimistic append guarantees it), so this never decides.
    """
    out = replace(a)
    merge_into(out, b)
    return out


def merge_into(a: OrderView, b: OrderView) -> None:
    """`a := merge(a, b)` in place: replay folds millions of patches, so no copies."""
    if a.order_id != b.order_id:
        raise ValueError(f"cannot merge views of {a.order_id!r} and {b.order_id!r}")
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


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def patch(fact: Fact) -> OrderView:
    """What one fact says about its order, as a partial view."""
    d = fact.data
    group = fact.type.split(".", 1)[0]
    if group == "order":
        status = ORDER_STATUS_BY_TYPE.get(fact.type)
        placed = fact.type == "order.placed"
        items = d.get("items") if placed else None
        return OrderView(
            order_id=fact.order_id,
            customer_id=_str(d, "customer_id") if placed else None,
            items=list(items) if isinstance(items, list) else None,
            total_cents=_int(d, "total_cents") if placed else None,
            currency=_str(d, "currency") if placed else None,
            placed_at=fact.time if placed else None,
            status=status,
            reason=_str(d, "reason") if status is not None else None,
            status_version=fact.sequence if status is not None else 0,
            version=fact.sequence,
            payment_id=_str(d, "payment_id"),
            shipment_id=_str(d, "shipment_id"),
            updated_at=fact.time,
        )
    if group == "payment":
        status = PAYMENT_STATUS_BY_TYPE.get(fact.type)
        return OrderView(
            order_id=fact.order_id,
            payment_id=_str(d, "payment_id") or fact.subject,
            payment_status=status,
            payment_version=fact.sequence if status is not None else 0,
            payment_currency=_str(d, "currency"),
            captured_cents=_int(d, "amount_cents") if fact.type == "payment.captured" else None,
            refunded_cents=_int(d, "amount_cents") if fact.type == "payment.refunded" else None,
            updated_at=fact.time,
        )
    if group == "shipment":
        status = SHIPMENT_STATUS_BY_TYPE.get(fact.type)
        return OrderView(
            order_id=fact.order_id,
            shipment_id=_str(d, "shipment_id") or fact.subject,
            shipment_status=status,
            shipment_version=fact.sequence if status is not None else 0,
            updated_at=fact.time,
        )
    return OrderView(order_id=fact.order_id, updated_at=fact.time)


def fold(facts: Iterable[Fact], views: Mapping[str, OrderView] | None = None) -> dict[str, OrderView]:
    """Apply facts to views (by order id); the result does not depend on the facts' order."""
    out = {k: replace(v) for k, v in (views or {}).items()}  # never mutate the caller's views
    for fact in facts:
        p = patch(fact)
        current = out.get(fact.order_id)
        if current is None:
            out[fact.order_id] = p
        else:
            merge_into(current, p)
    return out


@dataclass(frozen=True)
class Batch:
    """What one partition batch changes: timeline rows to add and one merged patch per order."""

    facts: list[Fact] = field(default_factory=list)
    orders: dict[str, OrderView] = field(default_factory=dict)


def project(envelopes: Iterable[Envelope]) -> Batch:
    """Turn a batch of Kafka messages into view changes (commands on the topics are skipped)."""
    facts: list[Fact] = []
    seen: set[str] = set()
    for env in envelopes:
        fact = Fact.from_envelope(env)
        if fact is not None and fact.id not in seen:
            seen.add(fact.id)
            facts.append(fact)
    return Batch(facts=facts, orders=fold(facts))


def causal_order(facts: Sequence[Fact]) -> list[Fact]:
    """Order an order's facts so that no fact comes before its cause.

    The rule: by occurred-at time (ties: subject, stream version, id), except that (1) a
    fact comes after the earlier versions of its own stream and (2) a fact comes after
    the fact named by its `causationid` when that fact is in the set. Facts caused by a
    command (whose id is not a fact) rely on time and rule (1). Deterministic: a
    topological sort that always emits the smallest available key.
    """
    def key(f: Fact) -> tuple[datetime, str, int, str]:
        return (f.time, f.subject, f.sequence, f.id)

    unique = list({f.id: f for f in facts}.values())
    by_id = {f.id: f for f in unique}
    preds: dict[str, set[str]] = {f.id: set() for f in unique}
    by_stream: dict[str, list[Fact]] = {}
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
    out: list[Fact] = []
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

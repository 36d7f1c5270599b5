"""`make audit`: a consistency checker over every service's event log, the topics and the views.

It reads

* the `events` table of the order, payment and shipping databases (and their outbox backlog),
* every Kafka topic of SPEC §4 from its beginning (no consumer group: nothing is committed),
* the query service's order views (over its REST API, or straight from its database),

and checks, printing each violation with its order id and exiting non-zero if there is any:

**Invariants (SPEC §6)**, per order of the order log
  - `CONFIRMED`/`SHIPPED`/`DELIVERED`: exactly one payment, CAPTURED (not refunded) for the
    order's total in its currency, and exactly one shipment whose status matches
    (SCHEDULED / DISPATCHED / DELIVERED);
  - `REJECTED`/`CANCELLED`: no captured-and-unrefunded money, no authorization still held,
    no active (SCHEDULED/DISPATCHED) shipment, and a reason;
  - no order PENDING longer than the saga step timeout + slack, and no saga whose deadline
    passed more than the slack ago without the scheduler firing it.
**Duplicate effects** (`duplicate_*`): two payments or shipments for one order, two facts of
  one kind in a stream (two captures, two schedulings, two confirmations …), one reply applied
  twice by the saga (same reply id in two `saga.reply_received`), a saga started or completed
  twice, an order command issued twice.
**Log integrity**: stream versions 1..n without gaps; every payment/shipment belongs to a
  known order (`orphan_*`); orders the caller placed are in the log (`lost_order`).
**Topics**: each event topic holds exactly its log's routed facts — the set of event ids on the
  topic equals the set in the log (`unpublished` / `phantom_message`), the envelope matches the
  stored fact (`message_mismatch`), one key stays in one partition (`key_split`) and the *first
  occurrences* per key are in stream-version order (`out_of_order`). Each command topic holds
  exactly the commands the sagas recorded in `saga.step_requested` (`unpublished_command` /
  `phantom_command`), first occurrences in saga order (ids appended after the logs were read
  — looked up again once the topics are read — are newer than the snapshot, not phantoms). A
  real fact or command found in a
  `.dlq` topic is a violation (`dead_lettered_real_message`); other DLQ entries are counted.
**Views**: every order's query view matches its write side: status, version, total, currency,
  payment and shipment status and ids (`view_missing` / `view_mismatch` / `view_orphan`).

Duplicates on a topic. The relay re-publishes after a crash between publish and delete, and
participants re-answer a duplicate command with the recorded fact (same event id), so a fact
may legitimately appear more than once. The SPEC makes consumers idempotent by message id, so
what a consumer *observes* is the first occurrence of each id: the check is "set of ids on the
topic == set in the log, and first occurrences per key in stream-version order". Duplicates are
reported as a count per topic (`topic_duplicates`), not as violations.

Messages on a topic that are not CloudEvents of the owning service (garbage bytes, another
`source` — e.g. the poison messages `make chaos` injects) are counted as `foreign`, not
violations: a consumer must survive them, and that is the DLQ's business.

Lag. A live system is eventually consistent, so checks that depend on propagation (topics,
views, status agreement between aggregates, held authorizations) skip orders with activity in
the last `grace_s` seconds (counted as `fresh_orders`); `--settle-s N` re-runs the audit until
it passes or N seconds went by. Safety checks (money kept on a final order, duplicates) never
skip anything.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

ORDER_TOPIC = "order.events"
PAYMENT_TOPIC = "payment.events"
SHIPPING_TOPIC = "shipping.events"
PAYMENT_COMMANDS = "payment.commands"
SHIPPING_COMMANDS = "shipping.commands"
EVENT_TOPICS = (ORDER_TOPIC, PAYMENT_TOPIC, SHIPPING_TOPIC)
COMMAND_TOPICS = (PAYMENT_COMMANDS, SHIPPING_COMMANDS)
DLQ_SUFFIX = ".dlq"

#: Which log feeds which event topic: (service log, routed type prefix, CloudEvents source).
TOPIC_SOURCES: Mapping[str, tuple[str, str, str]] = {
    ORDER_TOPIC: ("order", "order.", "/services/order"),
    PAYMENT_TOPIC: ("payment", "payment.", "/services/payment"),
    SHIPPING_TOPIC: ("shipping", "shipment.", "/services/shipping"),
}
COMMAND_SOURCE = "/services/order"

ORDER_STATUS_BY_TYPE = {
    "order.placed": "PENDING",
    "order.confirmed": "CONFIRMED",
    "order.shipped": "SHIPPED",
    "order.delivered": "DELIVERED",
    "order.rejected": "REJECTED",
    "order.cancelled": "CANCELLED",
}
PAYMENT_STATUS_BY_TYPE = {
    "payment.authorized": "AUTHORIZED",
    "payment.declined": "DECLINED",
    "payment.captured": "CAPTURED",
    "payment.voided": "VOIDED",
    "payment.refunded": "REFUNDED",
}
SHIPMENT_STATUS_BY_TYPE = {
    "shipment.scheduled": "SCHEDULED",
    "shipment.failed": "FAILED",
    "shipment.dispatched": "DISPATCHED",
    "shipment.delivered": "DELIVERED",
    "shipment.cancelled": "CANCELLED",
}
FULFILLED = ("CONFIRMED", "SHIPPED", "DELIVERED")
ENDED_BADLY = ("REJECTED", "CANCELLED")
EXPECTED_SHIPMENT = {"CONFIRMED": "SCHEDULED", "SHIPPED": "DISPATCHED", "DELIVERED": "DELIVERED"}
ACTIVE_SHIPMENT = ("SCHEDULED", "DISPATCHED")
SAGA_PREFIX = "saga-"


# ====================================================================== configuration


def _env(*names: str, default: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


@dataclass(frozen=True)
class AuditConfig:
    """Where to look and how strict to be; defaults are `make up`'s addresses."""

    order_dsn: str
    payment_dsn: str
    shipping_dsn: str
    query_dsn: str
    kafka_bootstrap: str
    query_url: str
    saga_timeout_s: float = 30.0
    pending_slack_s: float = 30.0
    grace_s: float = 2.0
    check_topics: bool = True
    views: str = "http"  # http | db | off
    kafka_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, **overrides: Any) -> AuditConfig:
        """AUDIT_* variables first, then the stack's own (PG_PORT, KAFKA_PORT, QUERY_PORT …)."""
        pg_port = os.environ.get("PG_PORT", "5432")

        def dsn(db: str) -> str:
            return _env(f"AUDIT_{db.upper()}_DSN", default=f"postgresql://app:app@127.0.0.1:{pg_port}/{db}")

        config = cls(
            order_dsn=dsn("order"),
            payment_dsn=dsn("payment"),
            shipping_dsn=dsn("shipping"),
            query_dsn=dsn("query"),
            kafka_bootstrap=_env("AUDIT_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS",
                                 default=f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"),
            query_url=_env("AUDIT_QUERY_URL", default=f"http://127.0.0.1:{os.environ.get('QUERY_PORT', '8004')}"),
            saga_timeout_s=float(_env("AUDIT_SAGA_TIMEOUT_S", "SAGA_STEP_TIMEOUT_S", default="30")),
            pending_slack_s=float(_env("AUDIT_PENDING_SLACK_S", default="30")),
            grace_s=float(_env("AUDIT_GRACE_S", default="2")),
            views=_env("AUDIT_VIEWS", default="http"),
        )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


# ====================================================================== the snapshot


@dataclass(frozen=True)
class Event:
    """One row of a service's `events` table."""

    log: str  # order | payment | shipping
    event_id: str
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    occurred_at: datetime
    correlation_id: str = ""
    causation_id: str = ""


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None


@dataclass
class Snapshot:
    """Everything the checks look at; `collect()` reads it, unit tests fabricate it."""

    taken_at: datetime
    logs: dict[str, list[Event]]
    outbox_backlog: dict[str, int] = field(default_factory=dict)
    topics: dict[str, list[TopicRecord]] | None = None  # None: not checked
    views: dict[str, dict[str, Any]] | None = None  # order_id → view; None: not checked
    #: Ids of facts and commands appended after the logs were read (seen again once the topics
    #: were read): on a topic they are not phantoms, just newer than the snapshot.
    late_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Violation:
    check: str
    order_id: str | None
    message: str

    @property
    def is_duplicate_effect(self) -> bool:
        return self.check.startswith("duplicate_")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "order_id": self.order_id, "message": self.message}

    def __str__(self) -> str:
        return f"[{self.check}] order {self.order_id or '-'}: {self.message}"


@dataclass
class AuditReport:
    violations: list[Violation] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def duplicate_effects(self) -> list[Violation]:
        return [v for v in self.violations if v.is_duplicate_effect]

    def by_check(self) -> dict[str, int]:
        return dict(Counter(v.check for v in self.violations).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": [v.to_dict() for v in self.violations],
            "violations_by_check": self.by_check(),
            "duplicate_effects": len(self.duplicate_effects),
            "info": self.info,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def render(self, limit: int = 200) -> str:
        lines = []
        for v in self.violations[:limit]:
            lines.append(str(v))
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        i = self.info
        lines.append(
            f"audit: {len(self.violations)} violation(s) {self.by_check() or ''}; "
            f"orders {i.get('orders', 0)} {i.get('orders_by_status', {})}; "
            f"fresh (lag checks skipped) {i.get('fresh_orders', 0)}; "
            f"topic duplicates {i.get('topic_duplicates', {})}; foreign {i.get('foreign_messages', {})}; "
            f"dlq {i.get('dlq', {})}; {self.elapsed_s:.1f}s"
        )
        lines.append("AUDIT PASSED" if self.ok else "AUDIT FAILED")
        return "\n".join(lines)


# ====================================================================== models built from the logs


@dataclass
class OrderModel:
    order_id: str
    events: list[Event]
    status: str | None = None
    total_cents: int | None = None
    currency: str | None = None
    reason: str | None = None
    placed_at: datetime | None = None
    payment_id: str | None = None
    shipment_id: str | None = None

    @property
    def version(self) -> int:
        return len(self.events)


@dataclass
class AggregateModel:
    """A payment or a shipment, folded independently of the services' own code."""

    stream_id: str
    order_id: str | None
    events: list[Event]
    status: str | None = None
    amount_cents: int | None = None
    currency: str | None = None
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class SagaModel:
    order_id: str
    events: list[Event]
    deadline: datetime | None = None


def _streams(events: Iterable[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.stream_id].append(e)
    for evs in out.values():
        evs.sort(key=lambda e: e.version)
    return out


def _order_model(order_id: str, events: list[Event]) -> OrderModel:
    m = OrderModel(order_id, events)
    for e in events:
        status = ORDER_STATUS_BY_TYPE.get(e.type)
        if status is None:
            continue
        m.status = status
        if e.type == "order.placed":
            m.total_cents = e.data.get("total_cents")
            m.currency = e.data.get("currency")
            m.placed_at = e.occurred_at
        elif e.type == "order.confirmed":
            m.payment_id = e.data.get("payment_id")
            m.shipment_id = e.data.get("shipment_id")
        if e.type in ("order.rejected", "order.cancelled"):
            m.reason = e.data.get("reason")
    return m


def _aggregate_model(stream_id: str, events: list[Event], statuses: Mapping[str, str]) -> AggregateModel:
    m = AggregateModel(stream_id, None, events)
    for e in events:
        m.counts[e.type] += 1
        if m.order_id is None and isinstance(e.data.get("order_id"), str):
            m.order_id = e.data["order_id"]
        if e.type in statuses:
            m.status = statuses[e.type]
        if m.amount_cents is None and "amount_cents" in e.data:
            m.amount_cents = e.data.get("amount_cents")
            m.currency = e.data.get("currency")
    return m


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _saga_model(order_id: str, events: list[Event]) -> SagaModel:
    m = SagaModel(order_id, events)
    for e in events:
        if e.type == "saga.deadline_set":
            m.deadline = _parse_time(e.data.get("deadline"))
    return m


# ====================================================================== the checks


class _Checker:
    def __init__(self, snapshot: Snapshot, config: AuditConfig, expected_orders: Iterable[str]) -> None:
        self.s = snapshot
        self.config = config
        self.expected_orders = set(expected_orders)
        self.report = AuditReport()
        self.now = snapshot.taken_at
        self.grace = timedelta(seconds=config.grace_s)

        order_log = snapshot.logs.get("order", [])
        streams = _streams(order_log)
        self.orders: dict[str, OrderModel] = {}
        self.sagas: dict[str, SagaModel] = {}
        self.other_order_streams: dict[str, list[Event]] = {}
        for stream_id, evs in streams.items():
            if stream_id.startswith(SAGA_PREFIX) or evs[0].type.startswith("saga."):
                oid = stream_id[len(SAGA_PREFIX):] if stream_id.startswith(SAGA_PREFIX) else stream_id
                self.sagas[oid] = _saga_model(oid, evs)
            elif evs[0].type == "order.placed" or any(e.type in ORDER_STATUS_BY_TYPE for e in evs):
                self.orders[stream_id] = _order_model(stream_id, evs)
            else:
                self.other_order_streams[stream_id] = evs
        self.payments = {
            sid: _aggregate_model(sid, evs, PAYMENT_STATUS_BY_TYPE)
            for sid, evs in _streams(snapshot.logs.get("payment", [])).items()
        }
        self.shipments = {
            sid: _aggregate_model(sid, evs, SHIPMENT_STATUS_BY_TYPE)
            for sid, evs in _streams(snapshot.logs.get("shipping", [])).items()
        }
        self.payments_of: dict[str, list[AggregateModel]] = defaultdict(list)
        for p in self.payments.values():
            self.payments_of[p.order_id or ""].append(p)
        self.shipments_of: dict[str, list[AggregateModel]] = defaultdict(list)
        for sh in self.shipments.values():
            self.shipments_of[sh.order_id or ""].append(sh)
        self.fresh = self._fresh_orders()

    # ------------------------------------------------------------------ helpers

    def add(self, check: str, order_id: str | None, message: str) -> None:
        self.report.violations.append(Violation(check, order_id, message))

    def _fresh_orders(self) -> set[str]:
        """Orders with any fact (order, saga, payment, shipment) newer than the grace period."""
        if self.config.grace_s <= 0:
            return set()
        cutoff = self.now - self.grace
        fresh: set[str] = set()
        for oid, m in self.orders.items():
            if m.events and m.events[-1].occurred_at > cutoff:
                fresh.add(oid)
        for oid, saga in self.sagas.items():
            if saga.events and saga.events[-1].occurred_at > cutoff:
                fresh.add(oid)
        for agg in [*self.payments.values(), *self.shipments.values()]:
            if agg.order_id and agg.events and agg.events[-1].occurred_at > cutoff:
                fresh.add(agg.order_id)
        return fresh

    # ------------------------------------------------------------------ run

    def run(self) -> AuditReport:
        self.check_integrity()
        self.check_invariants()
        self.check_duplicates()
        if self.s.topics is not None:
            self.report.info["topic_duplicates"] = {}
            self.report.info["foreign_messages"] = {}
            self.check_event_topics()
            self.check_command_topics()
            self.check_dlqs()
        if self.s.views is not None:
            self.check_views()
        statuses = Counter(m.status or "?" for m in self.orders.values())
        self.report.info.update(
            orders=len(self.orders),
            orders_by_status=dict(sorted(statuses.items())),
            payments=len(self.payments),
            shipments=len(self.shipments),
            events={log: len(evs) for log, evs in self.s.logs.items()},
            outbox_backlog=dict(self.s.outbox_backlog),
            fresh_orders=len(self.fresh),
        )
        return self.report

    # ------------------------------------------------------------------ logs

    def check_integrity(self) -> None:
        for log, events in self.s.logs.items():
            for stream_id, evs in _streams(events).items():
                versions = [e.version for e in evs]
                if versions != list(range(1, len(versions) + 1)):
                    oid = self._order_of_stream(log, stream_id)
                    self.add("stream_gap", oid, f"{log} stream {stream_id} has versions {versions[:20]}")
        for oid in sorted(self.expected_orders - set(self.orders)):
            self.add("lost_order", oid, "placed (202) but not in the order log")
        for oid in sorted(set(self.sagas) - set(self.orders)):
            self.add("orphan_saga", oid, "a saga without an order stream")
        for oid, m in self.orders.items():
            if m.events[0].type != "order.placed":
                self.add("stream_gap", oid, f"order stream starts with {m.events[0].type}")
            if oid not in self.sagas:
                self.add("missing_saga", oid, "an order without a saga")
        for agg in self.payments.values():
            if agg.order_id not in self.orders:
                self.add("orphan_payment", agg.order_id, f"payment {agg.stream_id} of an order not in the order log")
        for agg in self.shipments.values():
            if agg.order_id not in self.orders:
                self.add("orphan_shipment", agg.order_id, f"shipment {agg.stream_id} of an order not in the order log")

    def _order_of_stream(self, log: str, stream_id: str) -> str | None:
        if log == "order":
            return stream_id[len(SAGA_PREFIX):] if stream_id.startswith(SAGA_PREFIX) else stream_id
        agg = (self.payments if log == "payment" else self.shipments).get(stream_id)
        return agg.order_id if agg else None

    def check_invariants(self) -> None:
        pending_limit = timedelta(seconds=self.config.saga_timeout_s + self.config.pending_slack_s)
        slack = timedelta(seconds=self.config.pending_slack_s)
        for oid, m in self.orders.items():
            payments = self.payments_of.get(oid, [])
            shipments = self.shipments_of.get(oid, [])
            fresh = oid in self.fresh
            if m.status in FULFILLED:
                captured = [p for p in payments if p.status == "CAPTURED"]
                if len(payments) != 1 or len(captured) != 1:
                    self.add("payment_not_captured", oid,
                             f"order is {m.status} but its payments are {[p.status for p in payments]}")
                else:
                    p = captured[0]
                    if p.amount_cents != m.total_cents or p.currency != m.currency:
                        self.add("payment_amount_mismatch", oid,
                                 f"captured {p.amount_cents} {p.currency}, order total {m.total_cents} {m.currency}")
                if len(shipments) != 1:
                    self.add("shipment_count", oid, f"order is {m.status} with {len(shipments)} shipments")
                elif not fresh and m.status is not None and shipments[0].status != EXPECTED_SHIPMENT[m.status]:
                    self.add("shipment_status_mismatch", oid,
                             f"order is {m.status} but shipment {shipments[0].stream_id} is {shipments[0].status}")
            elif m.status in ENDED_BADLY:
                if not m.reason:
                    self.add("missing_reason", oid, f"order {m.status} without a reason")
                for p in payments:
                    kept = p.counts["payment.captured"] - p.counts["payment.refunded"]
                    if kept > 0:
                        self.add("money_kept", oid, f"order {m.status} but payment {p.stream_id} is captured and not refunded")
                    elif p.status == "AUTHORIZED" and not fresh:
                        self.add("authorization_held", oid, f"order {m.status} but payment {p.stream_id} is still AUTHORIZED")
                for sh in shipments:
                    if sh.status in ACTIVE_SHIPMENT and not fresh:
                        self.add("active_shipment", oid, f"order {m.status} but shipment {sh.stream_id} is {sh.status}")
            elif m.status == "PENDING":
                if m.placed_at is not None and self.now - m.placed_at > pending_limit:
                    age = (self.now - m.placed_at).total_seconds()
                    self.add("stuck_pending", oid, f"PENDING for {age:.0f}s (saga timeout {self.config.saga_timeout_s}s + slack)")
            saga = self.sagas.get(oid)
            if saga is not None and saga.deadline is not None and self.now - saga.deadline > slack:
                late = (self.now - saga.deadline).total_seconds()
                self.add("saga_overdue", oid, f"saga deadline passed {late:.0f}s ago and was not fired")

    def check_duplicates(self) -> None:
        for oid, m in self.orders.items():
            counts = Counter(e.type for e in m.events)
            for event_type, n in counts.items():
                if n > 1:
                    self.add("duplicate_order_event", oid, f"{n} × {event_type}")
            terminal = [e.type for e in m.events if e.type in ("order.delivered", "order.rejected", "order.cancelled")]
            if len(terminal) > 1:
                self.add("duplicate_order_outcome", oid, f"several final facts: {terminal}")
            if len(self.payments_of.get(oid, [])) > 1:
                self.add("duplicate_payment", oid, f"{len(self.payments_of[oid])} payments")
            if len(self.shipments_of.get(oid, [])) > 1:
                self.add("duplicate_shipment", oid, f"{len(self.shipments_of[oid])} shipments")
        for aggs, kind in ((self.payments, "payment"), (self.shipments, "shipment")):
            for agg in aggs.values():
                for event_type, n in agg.counts.items():
                    if n > 1:
                        check = "duplicate_capture" if event_type == "payment.captured" else f"duplicate_{kind}_event"
                        self.add(check, agg.order_id, f"{kind} {agg.stream_id}: {n} × {event_type}")
        for oid, saga in self.sagas.items():
            replies = Counter(str(e.data.get("reply_id")) for e in saga.events if e.type == "saga.reply_received")
            for reply_id, n in replies.items():
                if n > 1:
                    self.add("duplicate_reply_applied", oid, f"reply {reply_id} applied {n} times")
            kinds = Counter(e.type for e in saga.events)
            for t in ("saga.started", "saga.completed"):
                if kinds[t] > 1:
                    self.add("duplicate_saga_event", oid, f"{kinds[t]} × {t}")
            issued = Counter(str(e.data.get("command")) for e in saga.events if e.type == "saga.order_command_issued")
            for command, n in issued.items():
                if n > 1:
                    self.add("duplicate_order_command", oid, f"order command {command!r} issued {n} times")

    # ------------------------------------------------------------------ topics

    def _decode(self, record: TopicRecord) -> dict[str, Any] | None:
        if record.value is None:
            return None
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not all(k in doc for k in ("id", "source", "type", "subject")):
            return None
        return doc

    def _topic_records(self, topic: str) -> list[TopicRecord]:
        assert self.s.topics is not None
        return sorted(self.s.topics.get(topic, []), key=lambda r: (r.partition, r.offset))

    def check_event_topics(self) -> None:
        duplicates: dict[str, int] = self.report.info["topic_duplicates"]
        foreign: dict[str, int] = self.report.info["foreign_messages"]
        cutoff = self.now - self.grace
        for topic, (log, prefix, source) in TOPIC_SOURCES.items():
            expected = {e.event_id: e for e in self.s.logs.get(log, []) if e.type.startswith(prefix)}
            seen: set[str] = set()
            first: dict[str, list[tuple[int, int, str]]] = defaultdict(list)  # key → (partition, offset, id)
            partitions_of_key: dict[str, set[int]] = defaultdict(set)
            dup = foreign_n = 0
            for r in self._topic_records(topic):
                doc = self._decode(r)
                if doc is None or doc.get("source") != source:
                    foreign_n += 1
                    continue
                event_id = str(doc["id"])
                key = r.key or str(doc.get("subject"))
                partitions_of_key[key].add(r.partition)
                if event_id in seen:
                    dup += 1
                    continue
                seen.add(event_id)
                stored = expected.get(event_id)
                if stored is None and event_id in self.s.late_ids:
                    continue  # appended after the logs were read
                if stored is None:
                    self.add("phantom_message", _order_id_of_doc(doc),
                             f"{topic} p{r.partition}@{r.offset}: {doc.get('type')} {event_id} is in no log")
                    continue
                if (doc.get("type") != stored.type or doc.get("subject") != stored.stream_id
                        or str(doc.get("sequence")) != str(stored.version) or key != stored.stream_id):
                    self.add("message_mismatch", _order_id(stored),
                             f"{topic} p{r.partition}@{r.offset}: {doc.get('type')}/{doc.get('subject')}/"
                             f"{doc.get('sequence')} key {key} ≠ stored {stored.type}/{stored.stream_id}/{stored.version}")
                first[key].append((r.partition, r.offset, event_id))
            for key, parts in partitions_of_key.items():
                if len(parts) > 1:
                    self.add("key_split", None, f"{topic}: key {key} is in partitions {sorted(parts)}")
            for key, occurrences in first.items():
                versions = [expected[i].version for _, _, i in sorted(occurrences) if i in expected]
                if versions != sorted(versions):
                    oid = _order_id(expected[occurrences[0][2]]) if occurrences[0][2] in expected else None
                    self.add("out_of_order", oid, f"{topic}: key {key} first occurrences in versions {versions[:20]}")
            for event_id, e in expected.items():
                if event_id not in seen:
                    oid = _order_id(e)
                    if e.occurred_at > cutoff or (oid is not None and oid in self.fresh):
                        continue
                    backlog = self.s.outbox_backlog.get(log, 0)
                    self.add("unpublished", oid,
                             f"{e.type} {e.stream_id} v{e.version} ({event_id}) is not on {topic}"
                             + (f" (outbox backlog {backlog})" if backlog else ""))
            duplicates[topic] = dup
            foreign[topic] = foreign_n

    def check_command_topics(self) -> None:
        duplicates: dict[str, int] = self.report.info["topic_duplicates"]
        foreign: dict[str, int] = self.report.info["foreign_messages"]
        cutoff = self.now - self.grace
        expected: dict[str, dict[str, tuple[Event, Mapping[str, Any]]]] = {t: {} for t in COMMAND_TOPICS}
        for saga in self.sagas.values():
            for e in saga.events:
                if e.type != "saga.step_requested":
                    continue
                command = e.data.get("command")
                if isinstance(command, Mapping) and command.get("topic") in expected:
                    expected[str(command["topic"])][str(command.get("command_id"))] = (e, command)
        for topic in COMMAND_TOPICS:
            wanted = expected[topic]
            seen: set[str] = set()
            first: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
            dup = foreign_n = 0
            for r in self._topic_records(topic):
                doc = self._decode(r)
                if doc is None or doc.get("source") != COMMAND_SOURCE:
                    foreign_n += 1
                    continue
                command_id = str(doc["id"])
                if command_id in seen:
                    dup += 1
                    continue
                seen.add(command_id)
                if command_id not in wanted and command_id in self.s.late_ids:
                    continue  # sent after the logs were read
                if command_id not in wanted:
                    self.add("phantom_command", _order_id_of_doc(doc),
                             f"{topic} p{r.partition}@{r.offset}: {doc.get('type')} {command_id} is in no saga")
                    continue
                first[r.key or str(doc.get("subject"))].append((r.partition, r.offset, command_id))
            for key, occurrences in first.items():
                versions = [wanted[i][0].version for _, _, i in sorted(occurrences)]
                if versions != sorted(versions):
                    self.add("out_of_order_command", _order_id(wanted[occurrences[0][2]][0]),
                             f"{topic}: key {key} first occurrences in saga versions {versions[:20]}")
            for command_id, (e, command) in wanted.items():
                if command_id not in seen:
                    oid = _order_id(e)
                    if e.occurred_at > cutoff or (oid is not None and oid in self.fresh):
                        continue
                    self.add("unpublished_command", oid, f"{command.get('type')} {command_id} is not on {topic}")
            duplicates[topic] = dup
            foreign[topic] = foreign_n

    def check_dlqs(self) -> None:
        assert self.s.topics is not None
        known: set[str] = {e.event_id for evs in self.s.logs.values() for e in evs}
        for saga in self.sagas.values():
            for e in saga.events:
                command = e.data.get("command")
                if e.type == "saga.step_requested" and isinstance(command, Mapping):
                    known.add(str(command.get("command_id")))
        counts: dict[str, int] = {}
        for topic in [*EVENT_TOPICS, *COMMAND_TOPICS]:
            dlq = topic + DLQ_SUFFIX
            records = self.s.topics.get(dlq, [])
            counts[dlq] = len(records)
            for r in records:
                original = _dlq_original(r)
                if original is not None and str(original.get("id")) in known:
                    self.add("dead_lettered_real_message", _order_id_of_doc(original),
                             f"{dlq}@{r.offset}: real {original.get('type')} {original.get('id')} was dead-lettered")
        self.report.info["dlq"] = counts

    # ------------------------------------------------------------------ views

    def check_views(self) -> None:
        assert self.s.views is not None
        views = self.s.views
        for oid, m in self.orders.items():
            if oid in self.fresh:
                continue
            view = views.get(oid)
            if view is None:
                self.add("view_missing", oid, f"order {m.status} v{m.version} has no query view")
                continue
            diffs: list[str] = []

            def cmp(name: str, write: Any, read: Any) -> None:
                if write != read:
                    diffs.append(f"{name}: write {write!r} ≠ view {read!r}")

            cmp("status", m.status, view.get("status"))
            cmp("version", m.version, view.get("version"))
            cmp("total_cents", m.total_cents, view.get("total_cents"))
            cmp("currency", m.currency, view.get("currency"))
            payments = self.payments_of.get(oid, [])
            shipments = self.shipments_of.get(oid, [])
            if len(payments) <= 1:
                p = payments[0] if payments else None
                cmp("payment_status", p.status if p else None, view.get("payment_status"))
                if p is not None and "payment_id" in view:
                    cmp("payment_id", p.stream_id, view.get("payment_id"))
            if len(shipments) <= 1:
                sh = shipments[0] if shipments else None
                cmp("shipment_status", sh.status if sh else None, view.get("shipment_status"))
                if sh is not None and "shipment_id" in view:
                    cmp("shipment_id", sh.stream_id, view.get("shipment_id"))
            if diffs:
                self.add("view_mismatch", oid, "; ".join(diffs))
        for oid in sorted(set(views) - set(self.orders)):
            self.add("view_orphan", oid, "a query view of an order that is not in the order log")


def _order_id(e: Event) -> str | None:
    if e.log == "order":
        return e.stream_id[len(SAGA_PREFIX):] if e.stream_id.startswith(SAGA_PREFIX) else e.stream_id
    oid = e.data.get("order_id")
    return oid if isinstance(oid, str) else (e.correlation_id or None)


def _order_id_of_doc(doc: Mapping[str, Any]) -> str | None:
    data = doc.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("order_id"), str):
        return str(data["order_id"])
    corr = doc.get("correlationid")
    return str(corr) if corr else None


def _dlq_original(record: TopicRecord) -> dict[str, Any] | None:
    """The CloudEvent a DLQ entry carries, if it carries one."""
    if record.value is None:
        return None
    try:
        entry = orjson.loads(record.value)
        raw = base64.b64decode(entry.get("value_base64") or b"")
        original = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return None
    return original if isinstance(original, dict) and "id" in original else None


def check(snapshot: Snapshot, config: AuditConfig, expected_orders: Iterable[str] = ()) -> AuditReport:
    """Run every check on a snapshot (pure: no I/O)."""
    started = time.monotonic()
    report = _Checker(snapshot, config, expected_orders).run()
    report.elapsed_s = time.monotonic() - started
    return report


# ====================================================================== collecting a snapshot


async def read_log(dsn: str, log: str) -> tuple[list[Event], int, int]:
    """Every event of one service database, its outbox backlog and the last position read."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                                  schema="pg_catalog")
        rows = await conn.fetch(
            """SELECT position, event_id::text AS event_id, stream_id, version, type, data, occurred_at,
                      correlation_id, causation_id
               FROM events ORDER BY position"""
        )
        backlog = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    last_position = int(rows[-1]["position"]) if rows else 0
    events = [
        Event(log, r["event_id"], r["stream_id"], r["version"], r["type"], r["data"], r["occurred_at"],
              r["correlation_id"], r["causation_id"])
        for r in rows
    ]
    return events, int(backlog), last_position


async def read_late_ids(dsn: str, after_position: int) -> set[str]:
    """Ids of the events (and of the commands saga events carry) appended after a position."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            """SELECT event_id::text AS event_id, data->'command'->>'command_id' AS command_id
               FROM events WHERE position > $1""",
            after_position,
        )
    finally:
        await conn.close()
    return {r["event_id"] for r in rows} | {r["command_id"] for r in rows if r["command_id"]}


async def read_topics(bootstrap: str, topics: Sequence[str], timeout_s: float = 60.0) -> dict[str, list[TopicRecord]]:
    """Every record of `topics` up to their current end, read without a consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    out: dict[str, list[TopicRecord]] = {t: [] for t in topics}
    partitions = await topic_partitions(bootstrap, topics)
    tps = [TopicPartition(topic, p) for topic, count in partitions.items() for p in range(count)]
    await consumer.start()
    try:
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading topics took longer than {timeout_s}s; left: {sorted(map(str, remaining))}")
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        key = r.key.decode(errors="replace") if r.key is not None else None
                        out[tp.topic].append(TopicRecord(tp.topic, tp.partition, r.offset, key, r.value))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def topic_partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    """Partition count of each existing topic among `topics` (missing ones are left out)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}


async def read_views_http(query_url: str, order_ids: Iterable[str], *, concurrency: int = 16) -> dict[str, dict[str, Any]]:
    """The query views: the paginated list, then GET /orders/{id} for any order it lacks."""
    import httpx

    views: dict[str, dict[str, Any]] = {}
    base = query_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30) as client:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            response = await client.get(f"{base}/orders", params=params)
            response.raise_for_status()
            page = response.json()
            for item in page.get("items", []):
                views[str(item["order_id"])] = item
            cursor = page.get("next_cursor")
            if not cursor:
                break
        missing = [oid for oid in order_ids if oid not in views]
        gate = asyncio.Semaphore(concurrency)

        async def one(oid: str) -> None:
            async with gate:
                r = await client.get(f"{base}/orders/{oid}")
                if r.status_code == 200:
                    views[oid] = r.json()
                elif r.status_code != 404:
                    r.raise_for_status()

        await asyncio.gather(*(one(oid) for oid in missing))
    return views


async def read_views_db(query_dsn: str) -> dict[str, dict[str, Any]]:
    """The current generation's `orders` table of the query database (bypasses the API)."""
    import asyncpg

    conn = await asyncpg.connect(query_dsn, timeout=10)
    try:
        generation = await conn.fetchval("SELECT generation FROM view_generations WHERE state = 'current'")
        rows = await conn.fetch(
            f"""SELECT order_id, status, version, total_cents, currency, payment_id, payment_status,
                       shipment_id, shipment_status
                FROM views_g{int(generation)}.orders WHERE version > 0"""
        )
    finally:
        await conn.close()
    return {r["order_id"]: dict(r) for r in rows}


async def collect(config: AuditConfig) -> Snapshot:
    """Read the logs first, then topics and views (which can only be ahead of the logs)."""
    logs: dict[str, list[Event]] = {}
    backlog: dict[str, int] = {}
    last: dict[str, int] = {}
    dsns = {"order": config.order_dsn, "payment": config.payment_dsn, "shipping": config.shipping_dsn}
    results = await asyncio.gather(*(read_log(dsn, log) for log, dsn in dsns.items()))
    for log, (events, pending, last_position) in zip(dsns, results):
        logs[log] = events
        backlog[log] = pending
        last[log] = last_position
    taken_at = datetime.now(timezone.utc)
    topics = None
    late: set[str] = set()
    if config.check_topics:
        names = [*EVENT_TOPICS, *COMMAND_TOPICS]
        topics = await read_topics(config.kafka_bootstrap, [*names, *(n + DLQ_SUFFIX for n in names)],
                                   timeout_s=config.kafka_timeout_s)
        # What reached a topic after the logs were read is newer, not phantom: note it.
        for ids in await asyncio.gather(*(read_late_ids(dsn, last[log]) for log, dsn in dsns.items())):
            late |= ids
    views = None
    if config.views == "http":
        order_ids = {e.stream_id for e in logs["order"] if e.type == "order.placed"}
        views = await read_views_http(config.query_url, order_ids)
    elif config.views == "db":
        views = await read_views_db(config.query_dsn)
    return Snapshot(taken_at=taken_at, logs=logs, outbox_backlog=backlog, topics=topics, views=views,
                    late_ids=late)


async def run_audit(config: AuditConfig, expected_orders: Iterable[str] = ()) -> AuditReport:
    started = time.monotonic()
    snapshot = await collect(config)
    report = check(snapshot, config, expected_orders)
    report.elapsed_s = time.monotonic() - started
    return report


async def audit_until_ok(config: AuditConfig, settle_s: float, expected_orders: Iterable[str] = (),
                         interval_s: float = 2.0) -> AuditReport:
    """Re-run the audit until it passes or `settle_s` went by; the last report."""
    expected = list(expected_orders)
    deadline = time.monotonic() + settle_s
    while True:
        report = await run_audit(config, expected)
        if report.ok or time.monotonic() >= deadline:
            return report
        await asyncio.sleep(interval_s)


# ====================================================================== CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m reliability audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--order-dsn", help="order database (env AUDIT_ORDER_DSN)")
    parser.add_argument("--payment-dsn", help="payment database (env AUDIT_PAYMENT_DSN)")
    parser.add_argument("--shipping-dsn", help="shipping database (env AUDIT_SHIPPING_DSN)")
    parser.add_argument("--query-dsn", help="query database, for --views db (env AUDIT_QUERY_DSN)")
    parser.add_argument("--kafka", dest="kafka_bootstrap", help="Kafka bootstrap (env AUDIT_KAFKA_BOOTSTRAP)")
    parser.add_argument("--query-url", help="query service base URL (env AUDIT_QUERY_URL)")
    parser.add_argument("--saga-timeout-s", type=float, help="SAGA_STEP_TIMEOUT_S of the order service (default 30)")
    parser.add_argument("--pending-slack-s", type=float, help="slack beyond the saga timeout (default 30)")
    parser.add_argument("--grace-s", type=float, help="skip lag-sensitive checks for orders active this recently (default 2)")
    parser.add_argument("--views", choices=("http", "db", "off"), help="where to read the query views (default http)")
    parser.add_argument("--no-topics", action="store_true", help="skip the Kafka topic checks")
    parser.add_argument("--settle-s", type=float, default=0.0, help="re-run until it passes or this many seconds went by")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--limit", type=int, default=200, help="violations printed (default 200)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    config = AuditConfig.from_env(
        order_dsn=args.order_dsn, payment_dsn=args.payment_dsn, shipping_dsn=args.shipping_dsn,
        query_dsn=args.query_dsn, kafka_bootstrap=args.kafka_bootstrap, query_url=args.query_url,
        saga_timeout_s=args.saga_timeout_s, pending_slack_s=args.pending_slack_s, grace_s=args.grace_s,
        views=args.views, check_topics=False if args.no_topics else None,
    )
    try:
        report = asyncio.run(audit_until_ok(config, args.settle_s))
    except Exception as exc:  # cannot read a log / topic / view: say which, exit 2
        print(f"audit could not run: {exc!r}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.render(args.limit))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The checks over the logs and the views, and `check()`: every check on a snapshot, pure (no I/O)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from reliability.audit.config import AuditConfig
from reliability.audit.model import (
    ACTIVE_SHIPMENT,
    ENDED_BADLY,
    EXPECTED_SHIPMENT,
    FINAL_ORDER_FACTS,
    FULFILLED,
    Audit,
    streams,
)
from reliability.audit.report import AuditReport
from reliability.audit.snapshot import Snapshot
from reliability.audit.topic_checks import check_command_topics, check_dlqs, check_event_topics
from shared.contract import (
    OrderPlaced,
    OrderStatus,
    PaymentCaptured,
    PaymentRefunded,
    PaymentStatus,
    SagaCompleted,
    SagaOrderCommandIssued,
    SagaReplyReceived,
    SagaStarted,
)


def check(snapshot: Snapshot, config: AuditConfig, expected_orders: Iterable[str] = ()) -> AuditReport:
    """Run every check on a snapshot; `expected_orders`: ids the caller saw placed (202)."""
    started = time.monotonic()
    audit = Audit.of(snapshot, config, expected_orders)
    check_integrity(audit)
    check_invariants(audit)
    check_duplicates(audit)
    if snapshot.topics is not None:
        audit.report.info["topic_duplicates"] = {}
        audit.report.info["foreign_messages"] = {}
        check_event_topics(audit)
        check_command_topics(audit)
        check_dlqs(audit)
    if snapshot.views is not None:
        check_views(audit)
    side = audit.side
    statuses = Counter(m.status or "?" for m in side.orders.values())
    audit.report.info.update(
        orders=len(side.orders),
        orders_by_status=dict(sorted(statuses.items())),
        payments=len(side.payments),
        shipments=len(side.shipments),
        events={log: len(facts) for log, facts in snapshot.logs.items()},
        outbox_backlog=dict(snapshot.outbox_backlog),
        fresh_orders=len(audit.fresh),
    )
    audit.report.elapsed_s = time.monotonic() - started
    return audit.report


def check_integrity(audit: Audit) -> None:
    """Stream versions 1..n, every placed order logged, nothing without its order or saga."""
    side = audit.side
    for log, facts in audit.snapshot.logs.items():
        for stream_id, stream in streams(facts).items():
            versions = [e.sequence for e in stream]
            if versions != list(range(1, len(versions) + 1)):
                audit.add(
                    "stream_gap",
                    side.order_of_stream(log, stream_id),
                    f"{log} stream {stream_id} has versions {versions[:20]}",
                )
    for oid in sorted(audit.expected_orders - set(side.orders)):
        audit.add("lost_order", oid, "placed (202) but not in the order log")
    for oid in sorted(set(side.sagas) - set(side.orders)):
        audit.add("orphan_saga", oid, "a saga without an order stream")
    for oid, m in side.orders.items():
        if not isinstance(m.facts[0].data, OrderPlaced):
            audit.add("stream_gap", oid, f"order stream starts with {m.facts[0].type}")
        if oid not in side.sagas:
            audit.add("missing_saga", oid, "an order without a saga")
    for agg in side.payments.values():
        if agg.order_id not in side.orders:
            audit.add("orphan_payment", agg.order_id, f"payment {agg.stream_id} of an order not in the order log")
    for agg in side.shipments.values():
        if agg.order_id not in side.orders:
            audit.add("orphan_shipment", agg.order_id, f"shipment {agg.stream_id} of an order not in the order log")


def check_invariants(audit: Audit) -> None:
    """What a final order must look like across the services, and that nothing stays pending."""
    side, config, now = audit.side, audit.config, audit.now
    pending_limit = timedelta(seconds=config.saga_timeout_s + config.pending_slack_s)
    slack = timedelta(seconds=config.pending_slack_s)
    for oid, m in side.orders.items():
        payments = side.payments_of.get(oid, [])
        shipments = side.shipments_of.get(oid, [])
        fresh = oid in audit.fresh
        if m.status in FULFILLED:
            captured = [p for p in payments if p.status == PaymentStatus.CAPTURED]
            if len(payments) != 1 or len(captured) != 1:
                audit.add(
                    "payment_not_captured",
                    oid,
                    f"order is {m.status} but its payments are {[p.status for p in payments]}",
                )
            else:
                # every fact of the payment (authorization, capture) is for the order's total
                wrong = [
                    f"{fact_type} {amount.amount_cents} {amount.currency}"
                    for fact_type, amount in captured[0].amounts()
                    if (amount.amount_cents, amount.currency) != (m.total_cents, m.currency)
                ]
                if wrong:
                    audit.add(
                        "payment_amount_mismatch", oid, f"{'; '.join(wrong)}, order total {m.total_cents} {m.currency}"
                    )
            if len(shipments) != 1:
                audit.add("shipment_count", oid, f"order is {m.status} with {len(shipments)} shipments")
            elif not fresh and m.status is not None and shipments[0].status != EXPECTED_SHIPMENT[m.status]:
                audit.add(
                    "shipment_status_mismatch",
                    oid,
                    f"order is {m.status} but shipment {shipments[0].stream_id} is {shipments[0].status}",
                )
        elif m.status in ENDED_BADLY:
            if not m.reason:
                audit.add("missing_reason", oid, f"order {m.status} without a reason")
            for p in payments:
                kept = p.counts[PaymentCaptured.TYPE] - p.counts[PaymentRefunded.TYPE]
                if kept > 0:
                    audit.add(
                        "money_kept", oid, f"order {m.status} but payment {p.stream_id} is captured and not refunded"
                    )
                elif p.status == PaymentStatus.AUTHORIZED and not fresh:
                    audit.add(
                        "authorization_held", oid, f"order {m.status} but payment {p.stream_id} is still AUTHORIZED"
                    )
            for sh in shipments:
                if sh.status in ACTIVE_SHIPMENT and not fresh:
                    audit.add("active_shipment", oid, f"order {m.status} but shipment {sh.stream_id} is {sh.status}")
        elif m.status == OrderStatus.PENDING:
            if m.placed_at is not None and now - m.placed_at > pending_limit:
                age = (now - m.placed_at).total_seconds()
                audit.add(
                    "stuck_pending", oid, f"PENDING for {age:.0f}s (saga timeout {config.saga_timeout_s}s + slack)"
                )
        saga = side.sagas.get(oid)
        if saga is not None and saga.deadline is not None and now - saga.deadline > slack:
            late = (now - saga.deadline).total_seconds()
            audit.add("saga_overdue", oid, f"saga deadline passed {late:.0f}s ago and was not fired")


def check_duplicates(audit: Audit) -> None:
    """Effects that happened twice: never skipped for freshness."""
    side = audit.side
    for oid, m in side.orders.items():
        for fact_type, n in Counter(e.type for e in m.facts).items():
            if n > 1:
                audit.add("duplicate_order_event", oid, f"{n} × {fact_type}")
        final = [e.type for e in m.facts if isinstance(e.data, FINAL_ORDER_FACTS)]
        if len(final) > 1:
            audit.add("duplicate_order_outcome", oid, f"several final facts: {final}")
        if len(side.payments_of.get(oid, [])) > 1:
            audit.add("duplicate_payment", oid, f"{len(side.payments_of[oid])} payments")
        if len(side.shipments_of.get(oid, [])) > 1:
            audit.add("duplicate_shipment", oid, f"{len(side.shipments_of[oid])} shipments")
    for aggs, kind in ((side.payments, "payment"), (side.shipments, "shipment")):
        for agg in aggs.values():
            for fact_type, n in agg.counts.items():
                if n > 1:
                    name = "duplicate_capture" if fact_type == PaymentCaptured.TYPE else f"duplicate_{kind}_event"
                    audit.add(name, agg.order_id, f"{kind} {agg.stream_id}: {n} × {fact_type}")
    for oid, saga in side.sagas.items():
        replies = Counter(e.data.reply_id for e in saga.facts if isinstance(e.data, SagaReplyReceived))
        for reply_id, n in replies.items():
            if n > 1:
                audit.add("duplicate_reply_applied", oid, f"reply {reply_id} applied {n} times")
        kinds = Counter(e.type for e in saga.facts)
        for once in (SagaStarted.TYPE, SagaCompleted.TYPE):
            if kinds[once] > 1:
                audit.add("duplicate_saga_event", oid, f"{kinds[once]} × {once}")
        issued = Counter(e.data.command for e in saga.facts if isinstance(e.data, SagaOrderCommandIssued))
        for command, n in issued.items():
            if n > 1:
                audit.add("duplicate_order_command", oid, f"order command {command!r} issued {n} times")


def check_views(audit: Audit) -> None:
    """Every order's query view equals its write side (orders still within the grace are skipped)."""
    views = audit.snapshot.views
    assert views is not None
    side = audit.side
    for oid, m in side.orders.items():
        if oid in audit.fresh:
            continue
        view = views.get(oid)
        if view is None:
            audit.add("view_missing", oid, f"order {m.status} v{m.version} has no query view")
            continue
        diffs = _differences(m.status, m.version, m.total_cents, m.currency, view)
        payments = side.payments_of.get(oid, [])
        shipments = side.shipments_of.get(oid, [])
        if len(payments) <= 1:
            p = payments[0] if payments else None
            diffs += _diff("payment_status", p.status if p else None, view.get("payment_status"))
            if p is not None and "payment_id" in view:
                diffs += _diff("payment_id", p.stream_id, view.get("payment_id"))
        if len(shipments) <= 1:
            sh = shipments[0] if shipments else None
            diffs += _diff("shipment_status", sh.status if sh else None, view.get("shipment_status"))
            if sh is not None and "shipment_id" in view:
                diffs += _diff("shipment_id", sh.stream_id, view.get("shipment_id"))
        if diffs:
            audit.add("view_mismatch", oid, "; ".join(diffs))
    for oid in sorted(set(views) - set(side.orders)):
        audit.add("view_orphan", oid, "a query view of an order that is not in the order log")


def _differences(
    status: str | None, version: int, total_cents: int | None, currency: str | None, view: dict[str, Any]
) -> list[str]:
    return [
        *_diff("status", status, view.get("status")),
        *_diff("version", version, view.get("version")),
        *_diff("total_cents", total_cents, view.get("total_cents")),
        *_diff("currency", currency, view.get("currency")),
    ]


def _diff(name: str, write: Any, read: Any) -> list[str]:
    return [f"{name}: write {write!r} ≠ view {read!r}"] if write != read else []

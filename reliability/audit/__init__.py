"""`make audit`: a consistency checker over every service's event log, the topics and the views.

It reads

* the `events` table of the order, payment and shipping databases (and their outbox backlog),
  each row decoded by the message contract (`shared.contract`), older schema versions upcast,
* every Kafka topic and dead-letter topic from its beginning (no consumer group: nothing is
  committed),
* the query service's order views (over its REST API, or straight from its database),

and checks, printing each violation with its order id and exiting non-zero if there is any:

**Invariants**, per order of the order log
  - `CONFIRMED`/`SHIPPED`/`DELIVERED`: exactly one payment, CAPTURED (not refunded) for the
    order's total in its currency, and exactly one shipment whose status matches
    (SCHEDULED / DISPATCHED / DELIVERED);
  - `REJECTED`/`CANCELLED`: no captured-and-unrefunded money, no authorization still held,
    no active (SCHEDULED/DISPATCHED) shipment, and a reason;
  - no order PENDING longer than the saga step timeout + slack, and no saga whose deadline
    passed more than the slack ago without the scheduler firing it.
**Duplicate effects** (`duplicate_*`): two payments or shipments for one order, two facts of
  one kind in a stream (two captures, two schedulings, two confirmations …), one reply applied
  twice by the saga (two recorded replies with the same reply id), a saga started or completed
  twice, an order command issued twice.
**Log integrity**: stream versions 1..n without gaps; every payment/shipment belongs to a
  known order (`orphan_*`); orders the caller placed are in the log (`lost_order`).
**Topics** (`topic_checks`): each event topic holds exactly its log's published facts, each
  command topic exactly the commands the sagas recorded, and no real message is in a `.dlq`.
**Views**: every order's query view matches its write side: status, version, total, currency,
  payment and shipment status and ids (`view_missing` / `view_mismatch` / `view_orphan`).

Lag. A live system is eventually consistent, so checks that depend on propagation (topics,
views, status agreement between aggregates, held authorizations) skip orders with activity in
the last `grace_s` seconds (counted as `fresh_orders`); `--settle-s N` re-runs the audit until
it passes or N seconds went by. Safety checks (money kept on a final order, duplicates) never
skip anything.

Modules: `config` (where to look), `snapshot` (what is checked), `reading` (reading it from a
running system), `model` (the write side folded from the logs), `checks` and `topic_checks`
(pure), `report`, `cli`.
"""

from reliability.audit.checks import check
from reliability.audit.cli import audit_until_ok, build_parser, main, run_audit, run_cli
from reliability.audit.config import AuditConfig
from reliability.audit.reading import collect, read_topics, recorded_from_row, topic_partitions
from reliability.audit.report import AuditReport, Violation
from reliability.audit.snapshot import Snapshot, TopicRecord

__all__ = [
    "AuditConfig",
    "AuditReport",
    "Snapshot",
    "TopicRecord",
    "Violation",
    "audit_until_ok",
    "build_parser",
    "check",
    "collect",
    "main",
    "read_topics",
    "recorded_from_row",
    "run_audit",
    "run_cli",
    "topic_partitions",
]

"""A fabricated, consistent system snapshot for the audit's unit tests: logs, topics, views.

`FakeSystem.order(outcome)` writes what the real services would have written for one order
(order + saga streams, payment and shipment streams, every routed fact and every command on
its topic, the query view); tests then break one thing and expect exactly that violation.
"""
from __future__ import annotations

import uuid
import zlib
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from reliability.audit import AuditConfig, Event, Snapshot, TopicRecord

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
SOURCES = {"order": "/services/order", "payment": "/services/payment", "shipping": "/services/shipping"}
TOPIC_OF_LOG = {"order": "order.events", "payment": "payment.events", "shipping": "shipping.events"}
PARTITIONS = 3


def config(**overrides: Any) -> AuditConfig:
    base = AuditConfig(
        order_dsn="-", payment_dsn="-", shipping_dsn="-", query_dsn="-", kafka_bootstrap="-", query_url="-",
        saga_timeout_s=5.0, pending_slack_s=10.0, grace_s=0.0,
    )
    return AuditConfig(**{**base.__dict__, **overrides})


def cloudevent(e: Event) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": e.event_id, "source": SOURCES[e.log], "type": e.type, "subject": e.stream_id,
        "time": e.occurred_at.isoformat(), "datacontenttype": "application/json",
        "correlationid": e.correlation_id, "causationid": e.causation_id, "sequence": str(e.version),
        "schemaversion": "1", "data": dict(e.data),
    }


class FakeSystem:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.clock = now - timedelta(minutes=10)
        self.logs: dict[str, list[Event]] = {"order": [], "payment": [], "shipping": []}
        self.topics: dict[str, list[TopicRecord]] = defaultdict(list)
        self.views: dict[str, dict[str, Any]] = {}
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self._versions: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ low level

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=10)
        return self.clock

    def append(self, log: str, stream_id: str, type_: str, data: dict[str, Any], *, order_id: str,
               publish: bool = True, at: datetime | None = None) -> Event:
        self._versions[stream_id] += 1
        e = Event(log, str(uuid.uuid4()), stream_id, self._versions[stream_id], type_, data, at or self.tick(),
                  order_id, str(uuid.uuid4()))
        self.logs[log].append(e)
        if publish and not type_.startswith("saga."):
            self.publish(TOPIC_OF_LOG[log], stream_id, orjson.dumps(cloudevent(e)))
        return e

    def publish(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> TopicRecord:
        p = zlib.crc32(key.encode()) % PARTITIONS if partition is None else partition
        offset = self._offsets[(topic, p)]
        self._offsets[(topic, p)] += 1
        r = TopicRecord(topic, p, offset, key, value)
        self.topics[topic].append(r)
        return r

    def republish(self, e: Event) -> TopicRecord:
        return self.publish(TOPIC_OF_LOG[e.log], e.stream_id, orjson.dumps(cloudevent(e)))

    def command(self, order_id: str, type_: str, target: str, *, publish: bool = True) -> Event:
        topic = "payment.commands" if type_.startswith("payment.") else "shipping.commands"
        command_id = str(uuid.uuid4())
        e = self.append("order", f"saga-{order_id}", "saga.step_requested",
                        {"order_id": order_id, "command": {"type": type_, "topic": topic, "target_id": target,
                                                           "command_id": command_id, "data": {"order_id": order_id}}},
                        order_id=order_id)
        if publish:
            doc = {"specversion": "1.0", "id": command_id, "source": "/services/order", "type": type_,
                   "subject": target, "time": e.occurred_at.isoformat(), "sequence": "0",
                   "correlationid": order_id, "causationid": e.event_id, "data": {"order_id": order_id}}
            self.publish(topic, target, orjson.dumps(doc))
        return e

    def reply(self, order_id: str, reply: Event) -> Event:
        return self.append("order", f"saga-{order_id}", "saga.reply_received",
                           {"order_id": order_id, "reply_type": reply.type, "reply_id": reply.event_id},
                           order_id=order_id)

    def saga_event(self, order_id: str, type_: str, **data: Any) -> Event:
        return self.append("order", f"saga-{order_id}", type_, {"order_id": order_id, **data}, order_id=order_id)

    # ------------------------------------------------------------------ a whole order

    def order(self, outcome: str = "CONFIRMED", *, total: int = 3000, placed_at: datetime | None = None) -> str:
        """One order driven to `outcome` (PENDING, CONFIRMED, SHIPPED, DELIVERED, REJECTED, CANCELLED)."""
        oid = str(uuid.uuid4())
        pid, sid = f"pay-{oid}", f"shp-{oid}"
        self.append("order", oid, "order.placed",
                    {"order_id": oid, "customer_id": "c-1", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": total}],
                     "currency": "EUR", "total_cents": total, "shipping_address": {"country": "FR"}},
                    order_id=oid, at=placed_at)
        self.saga_event(oid, "saga.started", payment_id=pid, shipment_id=sid)
        view: dict[str, Any] = {"order_id": oid, "status": "PENDING", "version": 1, "total_cents": total,
                                "currency": "EUR", "payment_status": None, "shipment_status": None}
        self.views[oid] = view
        if outcome == "PENDING":
            self.command(oid, "payment.authorize", pid)
            deadline = (placed_at or self.clock) + timedelta(seconds=5)
            self.saga_event(oid, "saga.deadline_set", deadline=deadline.isoformat())
            return oid
        self.command(oid, "payment.authorize", pid)
        money = {"payment_id": pid, "order_id": oid, "amount_cents": total, "currency": "EUR"}
        if outcome == "REJECTED":
            declined = self.append("payment", pid, "payment.declined", {**money, "reason": "card_declined"}, order_id=oid)
            self.reply(oid, declined)
            self.append("order", oid, "order.rejected", {"order_id": oid, "reason": "payment_declined:card_declined"},
                        order_id=oid)
            self.saga_event(oid, "saga.completed", status="REJECTED")
            view.update(status="REJECTED", version=2, payment_status="DECLINED", payment_id=pid)
            return oid
        self.reply(oid, self.append("payment", pid, "payment.authorized", money, order_id=oid))
        self.command(oid, "shipment.schedule", sid)
        if outcome == "CANCELLED":
            self.reply(oid, self.append("shipping", sid, "shipment.failed",
                                        {"shipment_id": sid, "order_id": oid, "reason": "destination_not_served"},
                                        order_id=oid))
            self.command(oid, "payment.void", pid)
            self.reply(oid, self.append("payment", pid, "payment.voided", {**money, "reason": "x"}, order_id=oid))
            self.append("order", oid, "order.cancelled", {"order_id": oid, "reason": "shipping_failed:destination_not_served"},
                        order_id=oid)
            self.saga_event(oid, "saga.completed", status="CANCELLED")
            view.update(status="CANCELLED", version=2, payment_status="VOIDED", shipment_status="FAILED",
                        payment_id=pid, shipment_id=sid)
            return oid
        self.reply(oid, self.append("shipping", sid, "shipment.scheduled", {"shipment_id": sid, "order_id": oid},
                                    order_id=oid))
        self.command(oid, "payment.capture", pid)
        self.reply(oid, self.append("payment", pid, "payment.captured", money, order_id=oid))
        self.append("order", oid, "order.confirmed", {"order_id": oid, "payment_id": pid, "shipment_id": sid}, order_id=oid)
        self.saga_event(oid, "saga.order_command_issued", command="confirm")
        self.saga_event(oid, "saga.deadline_set", deadline=None)
        view.update(status="CONFIRMED", version=2, payment_status="CAPTURED", shipment_status="SCHEDULED",
                    payment_id=pid, shipment_id=sid)
        if outcome == "CONFIRMED":
            return oid
        self.reply(oid, self.append("shipping", sid, "shipment.dispatched", {"shipment_id": sid, "order_id": oid},
                                    order_id=oid))
        self.append("order", oid, "order.shipped", {"order_id": oid, "shipment_id": sid}, order_id=oid)
        view.update(status="SHIPPED", version=3, shipment_status="DISPATCHED")
        if outcome == "SHIPPED":
            return oid
        self.reply(oid, self.append("shipping", sid, "shipment.delivered", {"shipment_id": sid, "order_id": oid},
                                    order_id=oid))
        self.append("order", oid, "order.delivered", {"order_id": oid, "shipment_id": sid}, order_id=oid)
        self.saga_event(oid, "saga.completed", status="DELIVERED")
        view.update(status="DELIVERED", version=4, shipment_status="DELIVERED")
        return oid

    # ------------------------------------------------------------------ queries

    def events_of(self, stream_id: str) -> list[Event]:
        return [e for evs in self.logs.values() for e in evs if e.stream_id == stream_id]

    def drop_from_topic(self, event: Event) -> None:
        topic = TOPIC_OF_LOG[event.log]
        self.topics[topic] = [r for r in self.topics[topic] if event.event_id.encode() not in (r.value or b"")]

    def snapshot(self, *, topics: bool = True, views: bool = True) -> Snapshot:
        return Snapshot(
            taken_at=self.now,
            logs={k: list(v) for k, v in self.logs.items()},
            outbox_backlog={"order": 0, "payment": 0, "shipping": 0},
            topics={k: list(v) for k, v in self.topics.items()} if topics else None,
            views={k: dict(v) for k, v in self.views.items()} if views else None,
        )

"""A fabricated, consistent system snapshot for the audit's unit tests: logs, topics, views.

`FakeSystem.order(outcome)` writes what the real services would have written for one order
(order + saga streams, payment and shipment streams, every published fact and every command
on its topic, the query view), as the contract's typed messages; tests then break one thing
and expect exactly that violation.
"""

from __future__ import annotations

import dataclasses
import uuid
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from reliability.audit import AuditConfig, AuditReport, Snapshot, TopicRecord
from services.order.customers import seal_address
from shared.contract import (
    Address,
    AuthorizePayment,
    CapturePayment,
    Command,
    Envelope,
    Fact,
    Money,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderStatus,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentVoided,
    SagaCompleted,
    SagaDeadlineSet,
    SagaFact,
    SagaOrderCommandIssued,
    SagaReplyReceived,
    SagaStarted,
    SagaStepRequested,
    ScheduleShipment,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFailed,
    ShipmentScheduled,
    VoidPayment,
    encode,
)
from shared.eventstore import Recorded
from shared.personal import DataKey

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SOURCES = {"order": "/services/order", "payment": "/services/payment", "shipping": "/services/shipping"}
PARTITIONS = 3
ADDRESS = seal_address(
    DataKey("0" * 32, "cust-1", 1, bytes(32)),
    Address(name="Ada", line1="1 Main St", city="Paris", postal_code="75001", country="FR"),
)

ALL_OUTCOMES = ("CONFIRMED", "SHIPPED", "DELIVERED", "REJECTED", "CANCELLED")


def checks_of(report: AuditReport) -> set[str]:
    return {v.check for v in report.violations}


def only(report: AuditReport, check_name: str, order_id: str | None = None) -> None:
    """`report` holds violations of exactly that check (and of that order)."""
    assert checks_of(report) == {check_name}, report.render()
    if order_id is not None:
        assert {v.order_id for v in report.violations} == {order_id}, report.render()


def consistent_system() -> FakeSystem:
    """One order of every final outcome, all consistent."""
    s = FakeSystem()
    for outcome in ALL_OUTCOMES:
        s.order(outcome)
    return s


def config(**overrides: Any) -> AuditConfig:
    base = AuditConfig(
        order_dsn="-",
        payment_dsn="-",
        shipping_dsn="-",
        query_dsn="-",
        kafka_bootstrap="-",
        query_url="-",
        saga_timeout_s=5.0,
        pending_slack_s=10.0,
        grace_s=0.0,
    )
    return dataclasses.replace(base, **overrides)


def money(cents: int = 3000) -> Money:
    return Money(amount_cents=cents, currency="EUR")


class FakeSystem:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.clock = now - timedelta(minutes=10)
        self.logs: dict[str, list[Recorded]] = {"order": [], "payment": [], "shipping": []}
        self.topics: dict[str, list[TopicRecord]] = defaultdict(list)
        self.views: dict[str, dict[str, Any]] = {}
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self._versions: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ low level

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=10)
        return self.clock

    def append(
        self, log: str, stream_id: str, fact: Fact, *, publish: bool = True, at: datetime | None = None
    ) -> Recorded:
        """Record `fact` at the stream's next version and publish it on its topic (if it has one)."""
        self._versions[stream_id] += 1
        e: Recorded = Envelope(
            id=str(uuid.uuid4()),
            source=SOURCES[log],
            subject=stream_id,
            sequence=self._versions[stream_id],
            time=at or self.tick(),
            correlation_id=fact.order_id,
            causation_id=str(uuid.uuid4()),
            data=fact,
        )
        self.logs[log].append(e)
        if publish and fact.TOPIC is not None:
            self.republish(e)
        return e

    def publish(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> TopicRecord:
        p = zlib.crc32(key.encode()) % PARTITIONS if partition is None else partition
        offset = self._offsets[(topic, p)]
        self._offsets[(topic, p)] += 1
        r = TopicRecord(topic, p, offset, key, value)
        self.topics[topic].append(r)
        return r

    def republish(self, e: Envelope[Any]) -> TopicRecord:
        """`e` (a recorded fact, or a command) on its topic, keyed by its subject."""
        assert e.data.TOPIC is not None
        return self.publish(e.data.TOPIC, e.subject, encode(e))

    def saga(self, fact: SagaFact) -> Recorded:
        return self.append("order", f"saga-{fact.order_id}", fact)

    def command(self, command: Command, *, publish: bool = True) -> Recorded:
        """The saga records sending `command`, and sends it."""
        command_id = str(uuid.uuid4())
        e = self.saga(
            SagaStepRequested(
                order_id=command.order_id,
                command_type=command.TYPE,
                target_id=command.target_id,
                command_id=command_id,
                requested_at=self.clock,
            )
        )
        if publish:
            self.republish(
                Envelope(
                    id=command_id,
                    source=SOURCES["order"],
                    subject=command.target_id,
                    sequence=0,
                    time=e.time,
                    correlation_id=command.order_id,
                    causation_id=e.id,
                    data=command,
                )
            )
        return e

    def reply(self, order_id: str, reply: Recorded) -> Recorded:
        return self.saga(
            SagaReplyReceived(order_id=order_id, reply_type=reply.type, reply_id=reply.id, received_at=self.clock)
        )

    # ------------------------------------------------------------------ a whole order

    def order(self, outcome: str = "CONFIRMED", *, total: int = 3000, placed_at: datetime | None = None) -> str:
        """One order driven to `outcome` (PENDING, CONFIRMED, SHIPPED, DELIVERED, REJECTED, CANCELLED)."""
        oid = str(uuid.uuid4())
        pid, sid = f"pay-{oid}", f"shp-{oid}"
        self.append(
            "order",
            oid,
            OrderPlaced(
                order_id=oid,
                customer_id="c-1",
                items=(OrderLine(sku="s", quantity=1, unit_price_cents=total),),
                currency="EUR",
                total_cents=total,
                shipping_address=ADDRESS,
            ),
            at=placed_at,
        )
        self.saga(
            SagaStarted(
                order_id=oid,
                payment_id=pid,
                shipment_id=sid,
                amount_cents=total,
                currency="EUR",
                shipping_address=ADDRESS,
                step_timeout_s=5.0,
            )
        )
        view: dict[str, Any] = {
            "order_id": oid,
            "status": "PENDING",
            "version": 1,
            "total_cents": total,
            "currency": "EUR",
            "payment_status": None,
            "shipment_status": None,
        }
        self.views[oid] = view
        self.command(
            AuthorizePayment(order_id=oid, payment_id=pid, amount_cents=total, currency="EUR", payment_token="tok_visa")
        )
        if outcome == "PENDING":
            deadline = (placed_at or self.clock) + timedelta(seconds=5)
            self.saga(SagaDeadlineSet(order_id=oid, deadline=deadline, awaiting=(pid,)))
            return oid
        amount = money(total)
        if outcome == "REJECTED":
            declined = self.append(
                "payment", pid, PaymentDeclined(order_id=oid, payment_id=pid, amount=amount, reason="card_declined")
            )
            self.reply(oid, declined)
            self.append("order", oid, OrderRejected(order_id=oid, reason="payment_declined:card_declined"))
            self.saga(SagaCompleted(order_id=oid, status=OrderStatus.REJECTED))
            view.update(status="REJECTED", version=2, payment_status="DECLINED", payment_id=pid)
            return oid
        self.reply(oid, self.append("payment", pid, PaymentAuthorized(order_id=oid, payment_id=pid, amount=amount)))
        self.command(ScheduleShipment(order_id=oid, shipment_id=sid, address=ADDRESS))
        if outcome == "CANCELLED":
            self.reply(
                oid,
                self.append(
                    "shipping", sid, ShipmentFailed(order_id=oid, shipment_id=sid, reason="destination_not_served")
                ),
            )
            self.command(VoidPayment(order_id=oid, payment_id=pid, reason="x"))
            self.reply(
                oid, self.append("payment", pid, PaymentVoided(order_id=oid, payment_id=pid, amount=amount, reason="x"))
            )
            self.append("order", oid, OrderCancelled(order_id=oid, reason="shipping_failed:destination_not_served"))
            self.saga(SagaCompleted(order_id=oid, status=OrderStatus.CANCELLED))
            view.update(
                status="CANCELLED",
                version=2,
                payment_status="VOIDED",
                shipment_status="FAILED",
                payment_id=pid,
                shipment_id=sid,
            )
            return oid
        self.reply(oid, self.append("shipping", sid, ShipmentScheduled(order_id=oid, shipment_id=sid, address=ADDRESS)))
        self.command(CapturePayment(order_id=oid, payment_id=pid))
        self.reply(oid, self.append("payment", pid, PaymentCaptured(order_id=oid, payment_id=pid, amount=amount)))
        self.append("order", oid, OrderConfirmed(order_id=oid, payment_id=pid, shipment_id=sid))
        self.saga(
            SagaOrderCommandIssued(
                order_id=oid, command="confirm", status=OrderStatus.CONFIRMED, payment_id=pid, shipment_id=sid
            )
        )
        self.saga(SagaDeadlineSet(order_id=oid, deadline=None))
        view.update(
            status="CONFIRMED",
            version=2,
            payment_status="CAPTURED",
            shipment_status="SCHEDULED",
            payment_id=pid,
            shipment_id=sid,
        )
        if outcome == "CONFIRMED":
            return oid
        self.reply(oid, self.append("shipping", sid, ShipmentDispatched(order_id=oid, shipment_id=sid)))
        self.append("order", oid, OrderShipped(order_id=oid, shipment_id=sid))
        view.update(status="SHIPPED", version=3, shipment_status="DISPATCHED")
        if outcome == "SHIPPED":
            return oid
        self.reply(oid, self.append("shipping", sid, ShipmentDelivered(order_id=oid, shipment_id=sid)))
        self.append("order", oid, OrderDelivered(order_id=oid, shipment_id=sid))
        self.saga(SagaCompleted(order_id=oid, status=OrderStatus.DELIVERED))
        view.update(status="DELIVERED", version=4, shipment_status="DELIVERED")
        return oid

    # ------------------------------------------------------------------ queries

    def events_of(self, stream_id: str) -> list[Recorded]:
        return [e for facts in self.logs.values() for e in facts if e.subject == stream_id]

    def fact(self, stream_id: str, kind: type[Fact]) -> Recorded:
        """The (first) fact of a kind in a stream."""
        return next(e for e in self.events_of(stream_id) if isinstance(e.data, kind))

    def drop_from_topic(self, event: Recorded) -> None:
        topic = event.data.TOPIC
        assert topic is not None
        self.topics[topic] = [r for r in self.topics[topic] if event.id.encode() not in (r.value or b"")]

    def snapshot(self, *, topics: bool = True, views: bool = True) -> Snapshot:
        return Snapshot(
            taken_at=self.now,
            logs={k: list(v) for k, v in self.logs.items()},
            outbox_backlog={"order": 0, "payment": 0, "shipping": 0},
            topics={k: list(v) for k, v in self.topics.items()} if topics else None,
            views={k: dict(v) for k, v in self.views.items()} if views else None,
        )

"""A simulated world for the saga: order service + payment + shipping, wired by in-memory queues.

Everything is the real pure domain code; only the transport is simulated, with the delivery
guarantees the real system has: commands to one aggregate (one Kafka key) stay in order,
facts of one stream stay in order, nothing is lost, anything may be redelivered, and
participants answer a duplicate command with the fact already recorded (docs/EVENTS.md).
"""
from __future__ import annotations

import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from services.domain_errors import DomainError, IllegalTransition
from services.order.domain import order as o
from services.order.domain import saga
from services.order.domain.order import OrderLine, OrderState, OrderStatus, PlaceOrder
from services.domain_kit import Address
from services.payment import domain as pay
from services.shipping import domain as ship
from shared.messages import Command, NewEvent

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
ADDRESS = Address("Ada", "1 Main St", "Berlin", "10115", "DE")


@dataclass
class Participant:
    """One participant aggregate's log, with event ids."""

    events: list[tuple[str, NewEvent]] = field(default_factory=list)

    def history(self) -> list[NewEvent]:
        return [event for _, event in self.events]


class World:
    def __init__(
        self,
        *,
        order_id: str = "order-1",
        token: str = "tok_ok",
        items: tuple[OrderLine, ...] = (OrderLine("sku-1", 2, 1250), OrderLine("sku-2", 1, 499)),
        country: str = "DE",
        limit_cents: int = pay.DEFAULT_LIMIT_CENTS,
        unserved: frozenset[str] = frozenset({"AQ"}),
        timeout_s: float = 30.0,
    ) -> None:
        self.now = T0
        self.order_id = order_id
        self.token = token
        self.items = items
        self.address = Address(ADDRESS.name, ADDRESS.line1, ADDRESS.city, ADDRESS.postal_code, country)
        self.limit_cents = limit_cents
        self.unserved = unserved
        self.timeout_s = timeout_s
        self.order_log: list[NewEvent] = []
        self.order = OrderState()
        self.saga_log: list[NewEvent] = []
        self.saga = saga.SagaState()
        self.payment = Participant()
        self.shipment = Participant()
        self.command_queues: dict[str, deque[Command]] = {}
        self.reply_queues: dict[str, deque[saga.ReplyReceived]] = {"payment": deque(), "shipping": deque()}
        self.delivered: list[saga.ReplyReceived] = []
        self.sent: list[Command] = []
        self.order_commands: list[o.OrderCommand] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ order service

    def place(self) -> saga.SagaDecision:
        command = PlaceOrder(self.order_id, "cust-1", self.items, "EUR", self.address, self.token)
        for event in o.decide(command, self.order):
            self.order_log.append(event)
            self.order = o.evolve(self.order, event)
        return self.feed(saga.SagaStarted.for_order(self.order, self.token, self.timeout_s))

    def feed(self, trigger: saga.SagaTrigger) -> saga.SagaDecision:
        decision = saga.decide(trigger, self.saga, self.now)
        self.apply(decision)
        return decision

    def apply(self, decision: saga.SagaDecision) -> None:
        """What the service does in one transaction: saga events, order events, outbox."""
        self.saga_log += decision.saga_events
        self.saga = decision.state
        for order_command in decision.order_commands:
            self.order_commands.append(order_command)
            for event in o.decide(order_command, self.order):  # must never be refused
                self.order_log.append(event)
                self.order = o.evolve(self.order, event)
        for command in decision.commands:
            self.sent.append(command)
            self.command_queues.setdefault(command.target_id, deque()).append(command)

    def cancel(self) -> bool:
        """POST /orders/{id}/cancel: True when accepted (202)."""
        if not o.can_cancel(self.order):
            return False
        try:
            self.feed(saga.CancelRequested())
        except IllegalTransition:
            return False
        return True

    def timeout(self) -> saga.SagaDecision:
        """The deadline scheduler: jump the clock to the deadline and fire."""
        if self.saga.deadline is not None and self.saga.deadline > self.now:
            self.now = self.saga.deadline
        return self.feed(saga.StepTimedOut())

    def deliver_reply(self, stream: str) -> saga.SagaDecision | None:
        queue = self.reply_queues[stream]
        if not queue:
            return None
        reply = queue.popleft()
        self.delivered.append(reply)
        return self.feed(reply)

    def redeliver(self, index: int) -> saga.SagaDecision | None:
        if not self.delivered:
            return None
        return self.feed(self.delivered[index % len(self.delivered)])

    # ------------------------------------------------------------------ participants

    def run_command(self, target_id: str | None = None) -> bool:
        """Let the participant process the oldest command for one key."""
        keys = [k for k, q in self.command_queues.items() if q]
        if not keys:
            return False
        if target_id is not None and target_id not in keys:
            return False
        key = keys[0] if target_id is None else target_id
        command = self.command_queues[key].popleft()
        if command.type.startswith("payment."):
            self._handle_payment(command)
        else:
            self._handle_shipping(command)
        return True

    def _answer(self, stream: str, participant: Participant, events: list[NewEvent], answer: Any) -> None:
        if events:
            for event in events:
                event_id = str(uuid.UUID(int=next(self._ids)))
                participant.events.append((event_id, event))
                self.reply_queues[stream].append(saga.ReplyReceived(event_id, event.type, event.data))
        elif answer is not None:  # duplicate command: re-answer with the recorded fact
            event_id = next(i for i, e in participant.events if e is answer)
            self.reply_queues[stream].append(saga.ReplyReceived(event_id, answer.type, answer.data))

    def _handle_payment(self, command: Command) -> None:
        domain_command = pay.command_from_message(command.type, command.data, limit_cents=self.limit_cents)
        try:
            events = pay.decide(domain_command, self.payment_state)
        except DomainError:
            return  # refused: no answer, the saga's timeout covers it
        self._answer("payment", self.payment, events, pay.find_answer(domain_command, self.payment.history()))

    def _handle_shipping(self, command: Command) -> None:
        domain_command = ship.command_from_message(command.type, command.data, unserved_countries=self.unserved)
        try:
            events = ship.decide(domain_command, self.shipment_state)
        except DomainError:
            return
        self._answer("shipping", self.shipment, events, ship.find_answer(domain_command, self.shipment.history()))

    def operator(self, action: str) -> bool:
        """POST /shipments/{id}/dispatch or /deliver."""
        command: ship.ShipmentCommand = (
            ship.DispatchShipment(self.saga.shipment_id) if action == "dispatch" else ship.DeliverShipment(self.saga.shipment_id)
        )
        try:
            events = ship.decide(command, self.shipment_state)
        except DomainError:
            return False
        self._answer("shipping", self.shipment, events, None)
        return bool(events)

    @property
    def payment_state(self) -> pay.PaymentState:
        return pay.fold(self.payment.history())

    @property
    def shipment_state(self) -> ship.ShipmentState:
        return ship.fold(self.shipment.history())

    # ------------------------------------------------------------------ driving

    def busy(self) -> bool:
        return any(self.command_queues.values()) or any(self.reply_queues.values())

    def pump(self) -> None:
        """Deliver every queued command and reply (no timeouts)."""
        while self.busy():
            if not self.run_command():
                for stream in ("payment", "shipping"):
                    self.deliver_reply(stream)

    def settle(self, max_rounds: int = 200) -> None:
        """All services up: deliver everything, fire deadlines only when nothing else moves."""
        for _ in range(max_rounds):
            if self.busy():
                self.pump()
            elif self.saga.deadline is not None:
                self.timeout()
            else:
                return
        raise AssertionError("the world did not settle")

    def sent_types(self) -> list[str]:
        return [c.type for c in self.sent]

    # ------------------------------------------------------------------ the audit (SPEC §6)

    def check_invariants(self) -> None:
        order, payment, shipment = self.order, self.payment_state, self.shipment_state
        assert order.status is not OrderStatus.PENDING, "order left PENDING"
        assert saga.fold(self.saga_log) == self.saga, "the saga log does not rebuild the state"
        assert self.saga.deadline is None, "a settled saga awaits nothing"
        assert self.saga.completed == (order.status in o.FINAL_STATUSES)
        assert self.saga.anomalies == ()
        assert self.saga.order_status is order.status
        if order.status in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
            assert payment.status is pay.PaymentStatus.CAPTURED, payment
            assert payment.amount_cents == order.total_cents
            expected = {
                OrderStatus.CONFIRMED: ship.ShipmentStatus.SCHEDULED,
                OrderStatus.SHIPPED: ship.ShipmentStatus.DISPATCHED,
                OrderStatus.DELIVERED: ship.ShipmentStatus.DELIVERED,
            }[order.status]
            assert shipment.status is expected, (order.status, shipment.status)
        else:
            assert order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED)
            assert payment.status not in (pay.PaymentStatus.AUTHORIZED, pay.PaymentStatus.CAPTURED), payment
            assert shipment.status not in ship.ACTIVE_STATUSES, shipment
            assert order.reason is not None

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

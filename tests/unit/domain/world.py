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
from datetime import UTC, datetime, timedelta

from services.order import domain as o
from services.order import saga
from services.order.domain import OrderState, PlaceOrder
from services.order.saga import Outgoing
from services.payment import domain as pay
from services.shipping import domain as ship
from shared.contract import (
    Address,
    CancelShipment,
    Envelope,
    Fact,
    OrderFact,
    OrderLine,
    OrderStatus,
    PaymentCommand,
    PaymentStatus,
    SagaFact,
    ScheduleShipment,
    ShipmentStatus,
)
from shared.errors import DomainError, IllegalTransition
from shared.eventstore import Recorded

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
ADDRESS = Address(name="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
ITEMS = (
    OrderLine(sku="sku-1", quantity=2, unit_price_cents=1250),
    OrderLine(sku="sku-2", quantity=1, unit_price_cents=499),
)


def recorded(log: list[Recorded], stream_id: str, fact: Fact, event_id: str, now: datetime) -> Recorded:
    """`fact` appended to a participant's stream `log` (the id is what replies carry)."""
    event = Envelope(
        id=event_id,
        source="/test",
        subject=stream_id,
        sequence=len(log) + 1,
        time=now,
        correlation_id=fact.order_id,
        causation_id=fact.order_id,
        data=fact,
    )
    log.append(event)
    return event


class World:
    def __init__(
        self,
        *,
        order_id: str = "order-1",
        customer_id: str = "cust-1",
        token: str = "tok_ok",
        items: tuple[OrderLine, ...] = ITEMS,
        currency: str = "EUR",
        country: str = "DE",
        address: Address | None = None,
        limit_cents: int = pay.DEFAULT_LIMIT_CENTS,
        unserved: frozenset[str] = frozenset({"AQ"}),
        timeout_s: float = 30.0,
    ) -> None:
        self.now = T0
        self.order_id = order_id
        self.customer_id = customer_id
        self.token = token
        self.items = items
        self.currency = currency
        self.address = address or Address(
            name=ADDRESS.name, line1=ADDRESS.line1, city=ADDRESS.city, postal_code=ADDRESS.postal_code, country=country
        )
        self.limit_cents = limit_cents
        self.unserved = unserved
        self.timeout_s = timeout_s
        self.order_log: list[OrderFact] = []
        self.order = OrderState()
        self.saga_log: list[SagaFact] = []
        self.saga = saga.SagaState()
        self.payment: list[Recorded] = []
        self.shipment: list[Recorded] = []
        self.command_queues: dict[str, deque[Outgoing]] = {}
        self.reply_queues: dict[str, deque[saga.ReplyReceived]] = {"payment": deque(), "shipping": deque()}
        self.delivered: list[saga.ReplyReceived] = []
        self.sent: list[Outgoing] = []
        self.order_commands: list[o.SagaOrderCommand] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ order service

    def place(self) -> saga.SagaDecision:
        command = PlaceOrder(self.order_id, self.customer_id, self.items, self.currency, self.address, self.token)
        for fact in o.decide(command, self.order):
            self.order_log.append(fact)
            self.order = o.evolve(self.order, fact)
        return self.feed(saga.StartSaga.for_order(self.order, self.token, self.timeout_s))

    def feed(self, trigger: saga.SagaTrigger) -> saga.SagaDecision:
        decision = saga.decide(trigger, self.saga, self.now)
        self.apply(decision)
        return decision

    def apply(self, decision: saga.SagaDecision) -> None:
        """What the service does in one transaction: saga facts, order facts, outbox."""
        self.saga_log += decision.saga_facts
        self.saga = decision.state
        for order_command in decision.order_commands:
            self.order_commands.append(order_command)
            for fact in o.decide(order_command, self.order):  # must never be refused
                self.order_log.append(fact)
                self.order = o.evolve(self.order, fact)
        for outgoing in decision.commands:
            self.sent.append(outgoing)
            self.command_queues.setdefault(outgoing.command.target_id, deque()).append(outgoing)

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
        command = self.command_queues[key].popleft().command
        if isinstance(command, PaymentCommand):
            self._handle_payment(command)
        elif isinstance(command, (ScheduleShipment, CancelShipment)):
            self._handle_shipping(command)
        return True

    def _answer(
        self, stream: str, log: list[Recorded], stream_id: str, facts: list[Fact], answer: Recorded | None
    ) -> None:
        if facts:
            for fact in facts:
                event = recorded(log, stream_id, fact, str(uuid.UUID(int=next(self._ids))), self.now)
                self.reply_queues[stream].append(saga.ReplyReceived(event.id, fact))
        elif answer is not None:  # duplicate command: re-answer with the recorded fact, same id
            self.reply_queues[stream].append(saga.ReplyReceived(answer.id, answer.data))

    def _handle_payment(self, command: PaymentCommand) -> None:
        try:
            facts = pay.decide(command, self.payment_state, limit_cents=self.limit_cents)
        except DomainError:
            return  # refused: no answer, the saga's timeout covers it
        self._answer("payment", self.payment, command.payment_id, list(facts), pay.find_answer(command, self.payment))

    def _handle_shipping(self, command: ship.ShipmentCommand) -> None:
        try:
            facts = ship.decide(command, self.shipment_state, unserved_countries=self.unserved)
        except DomainError:
            return
        self._answer(
            "shipping", self.shipment, command.shipment_id, list(facts), ship.find_answer(command, self.shipment)
        )

    def operator(self, action: str) -> bool:
        """POST /shipments/{id}/dispatch or /deliver."""
        command: ship.ShipmentCommand = (
            ship.DispatchShipment(self.saga.shipment_id)
            if action == "dispatch"
            else ship.DeliverShipment(self.saga.shipment_id)
        )
        try:
            facts = ship.decide(command, self.shipment_state, unserved_countries=self.unserved)
        except DomainError:
            return False
        self._answer("shipping", self.shipment, command.shipment_id, list(facts), None)
        return bool(facts)

    @property
    def payment_state(self) -> pay.PaymentState:
        return pay.fold(e.data for e in self.payment)

    @property
    def shipment_state(self) -> ship.ShipmentState:
        return ship.fold(e.data for e in self.shipment)

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
        return [c.command.TYPE for c in self.sent]

    # ------------------------------------------------------------------ the audit

    def check_invariants(self) -> None:
        order, payment, shipment = self.order, self.payment_state, self.shipment_state
        assert order.status is not OrderStatus.PENDING, "order left PENDING"
        assert saga.fold(self.saga_log) == self.saga, "the saga log does not rebuild the state"
        assert self.saga.deadline is None, "a settled saga awaits nothing"
        assert self.saga.completed == (order.status in o.FINAL_STATUSES)
        assert self.saga.anomalies == ()
        assert self.saga.order_status is order.status
        if order.status in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
            assert payment.status is PaymentStatus.CAPTURED, payment
            assert payment.amount_cents == order.total_cents
            expected = {
                OrderStatus.CONFIRMED: ShipmentStatus.SCHEDULED,
                OrderStatus.SHIPPED: ShipmentStatus.DISPATCHED,
                OrderStatus.DELIVERED: ShipmentStatus.DELIVERED,
            }[order.status]
            assert shipment.status is expected, (order.status, shipment.status)
        else:
            assert order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED)
            assert payment.status not in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED), payment
            assert shipment.status not in ship.ACTIVE_STATUSES, shipment
            assert order.reason is not None

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

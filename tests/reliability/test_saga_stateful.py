"""A Hypothesis state machine over the saga and the three aggregates (pure: no I/O).

Up to three orders run at once through the real pure domain code (order, saga, payment,
shipment decide/evolve/fold); only the transport is simulated, with the guarantees the real
system has and no more:

* commands to one aggregate (one Kafka key) are delivered in order; so are the facts of one
  aggregate; different keys interleave arbitrarily;
* nothing is lost, anything may be delivered again: a reply redelivered (same event id), the
  same fact re-published, a command redelivered after a participant crash (in order, from its
  last uncommitted position) or a stray copy of an old command arriving late;
* the saga's step timers fire at their deadline (or early: a no-op), customers cancel, the
  warehouse dispatches confirmed orders and the carrier delivers;
* the order service restarts: its saga and orders are rebuilt from their logs with `fold`
  and the replies after the last committed position are delivered again.

Invariants checked after every step: `fold(log) == state` for every saga and order; an order
only moves forward; no aggregate records the same kind of fact twice; a CONFIRMED/SHIPPED/
DELIVERED order has a capture of its total; a REJECTED order never had money captured. After a
`settle` (every message delivered, every deadline fired, nothing left to do) the saga's
invariants hold for every order, and any further redelivery or timer decides nothing.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.order import domain as o
from services.order import saga
from services.order.domain import OrderState, PlaceOrder
from services.order.saga import Outgoing, ReplyReceived, SagaState
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
    PaymentCaptured,
    PaymentCommand,
    PaymentRefunded,
    PaymentStatus,
    SagaFact,
    ScheduleShipment,
    ShipmentStatus,
)
from shared.errors import DomainError, IllegalTransition
from shared.eventstore import Recorded

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT_S = 30.0
MAX_ORDERS = 3

#: Allowed order status moves (anything else is a bug).
FORWARD: dict[OrderStatus | None, set[OrderStatus]] = {
    None: {OrderStatus.PENDING},
    OrderStatus.PENDING: {OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED},
    OrderStatus.CONFIRMED: {OrderStatus.SHIPPED, OrderStatus.CANCELLED},
    OrderStatus.SHIPPED: {OrderStatus.DELIVERED},
    OrderStatus.DELIVERED: set(),
    OrderStatus.REJECTED: set(),
    OrderStatus.CANCELLED: set(),
}


@dataclass
class OrderSide:
    """What the order service stores for one order: two logs and the live states."""

    order_id: str
    total_cents: int
    order_log: list[OrderFact] = field(default_factory=list)
    saga_log: list[SagaFact] = field(default_factory=list)
    order: OrderState = field(default_factory=OrderState)
    saga: SagaState = field(default_factory=SagaState)
    delivered: list[ReplyReceived] = field(default_factory=list)
    statuses: list[OrderStatus] = field(default_factory=list)


class SagaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.orders: dict[str, OrderSide] = {}
        self.payment_logs: dict[str, list[Recorded]] = {}
        self.shipment_logs: dict[str, list[Recorded]] = {}
        self.command_queues: dict[str, deque[Outgoing]] = {}
        self.processed_commands: dict[str, list[Outgoing]] = {}
        self.reply_queues: dict[str, deque[saga.ReplyReceived]] = {}
        self.limit_cents = pay.DEFAULT_LIMIT_CENTS
        self._ids = itertools.count(1)
        self.restarts = 0

    # ------------------------------------------------------------------ helpers

    def _side(self, n: int) -> OrderSide:
        return list(self.orders.values())[n % len(self.orders)]

    def _apply(self, side: OrderSide, decision: saga.SagaDecision) -> None:
        """One order-service transaction: saga facts, order facts, commands to the outbox."""
        side.saga_log += decision.saga_facts
        side.saga = decision.state
        for command in decision.order_commands:
            if isinstance(command, (o.RejectOrder, o.CancelOrder)):
                # An order ends badly only once every compensation it knows of is confirmed.
                known = decision.state
                assert known.payment not in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED), known
                assert known.shipment is not ShipmentStatus.SCHEDULED, known
            for fact in o.decide(command, side.order):  # the saga never issues a refused command
                side.order_log.append(fact)
                side.order = o.evolve(side.order, fact)
                assert side.order.status is not None
                side.statuses.append(side.order.status)
        for outgoing in decision.commands:
            self.command_queues.setdefault(outgoing.command.target_id, deque()).append(outgoing)

    def _feed(self, side: OrderSide, trigger: saga.SagaTrigger) -> saga.SagaDecision:
        decision = saga.decide(trigger, side.saga, self.now)
        self._apply(side, decision)
        return decision

    def _answer(
        self, logs: dict[str, list[Recorded]], stream_id: str, facts: list[Fact], answer: Recorded | None
    ) -> None:
        queue = self.reply_queues.setdefault(stream_id, deque())
        log = logs.setdefault(stream_id, [])
        if facts:
            for fact in facts:
                event = Envelope(
                    id=str(uuid.UUID(int=next(self._ids))),
                    source="/test",
                    subject=stream_id,
                    sequence=len(log) + 1,
                    time=self.now,
                    correlation_id=fact.order_id,
                    causation_id=fact.order_id,
                    data=fact,
                )
                log.append(event)
                queue.append(saga.ReplyReceived(event.id, fact))
        elif answer is not None:  # a duplicate command is answered with the recorded fact, same id
            queue.append(saga.ReplyReceived(answer.id, answer.data))

    def _run_command(self, outgoing: Outgoing) -> None:
        command = outgoing.command
        if isinstance(command, PaymentCommand):
            history = self.payment_logs.get(command.payment_id, [])
            try:
                facts = pay.decide(command, pay.fold(e.data for e in history), limit_cents=self.limit_cents)
            except DomainError:
                return  # refused: no answer; the saga's timer covers it
            self._answer(self.payment_logs, command.payment_id, list(facts), pay.find_answer(command, history))
        elif isinstance(command, (ScheduleShipment, CancelShipment)):
            history = self.shipment_logs.get(command.shipment_id, [])
            try:
                shipment_facts = ship.decide(
                    command, ship.fold(e.data for e in history), unserved_countries=ship.DEFAULT_UNSERVED_COUNTRIES
                )
            except DomainError:
                return
            self._answer(
                self.shipment_logs, command.shipment_id, list(shipment_facts), ship.find_answer(command, history)
            )

    def _deliver(self, reply: saga.ReplyReceived) -> None:
        side = self.orders.get(reply.fact.order_id)
        if side is None:
            return
        side.delivered.append(reply)
        self._feed(side, reply)

    def _busy(self) -> bool:
        return any(self.command_queues.values()) or any(self.reply_queues.values())

    def _payment_of(self, side: OrderSide) -> list[Fact]:
        return [e.data for e in self.payment_logs.get(saga.payment_id_for(side.order_id), [])]

    def _shipment_of(self, side: OrderSide) -> list[Fact]:
        return [e.data for e in self.shipment_logs.get(saga.shipment_id_for(side.order_id), [])]

    # ------------------------------------------------------------------ rules

    @initialize(
        token=st.sampled_from(["tok_ok", "tok_ok", "tok_decline"]),
        country=st.sampled_from(["DE", "DE", "AQ"]),
        limit=st.sampled_from([pay.DEFAULT_LIMIT_CENTS, pay.DEFAULT_LIMIT_CENTS, 3000]),
    )
    def first_order(self, token: str, country: str, limit: int) -> None:
        self.limit_cents = limit
        self.place(token, country, 2)

    @precondition(lambda self: len(self.orders) < MAX_ORDERS)
    @rule(
        token=st.sampled_from(["tok_ok", "tok_ok", "tok_decline"]),
        country=st.sampled_from(["DE", "DE", "AQ"]),
        quantity=st.integers(1, 3),
    )
    def place(self, token: str, country: str, quantity: int) -> None:
        order_id = f"order-{len(self.orders) + 1}"
        address = Address(name="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country=country)
        items = (OrderLine(sku="sku-1", quantity=quantity, unit_price_cents=1250),)
        command = PlaceOrder(order_id, "cust-1", items, "EUR", address, token)
        side = OrderSide(order_id, 1250 * quantity)
        self.orders[order_id] = side
        for fact in o.decide(command, side.order):
            side.order_log.append(fact)
            side.order = o.evolve(side.order, fact)
            side.statuses.append(OrderStatus.PENDING)
        self._feed(side, saga.StartSaga.for_order(side.order, token, TIMEOUT_S))

    @rule(n=st.integers(0, 100))
    def run_command(self, n: int) -> None:
        keys = [k for k, q in self.command_queues.items() if q]
        if keys:
            key = keys[n % len(keys)]
            command = self.command_queues[key].popleft()
            self.processed_commands.setdefault(key, []).append(command)
            self._run_command(command)

    @rule(n=st.integers(0, 100))
    def deliver_reply(self, n: int) -> None:
        keys = [k for k, q in self.reply_queues.items() if q]
        if keys:
            self._deliver(self.reply_queues[keys[n % len(keys)]].popleft())

    @rule(n=st.integers(0, 100), i=st.integers(0, 100))
    def redeliver_reply(self, n: int, i: int) -> None:
        """The same message again (same id): whatever happened since, it decides nothing."""
        side = self._side(n)
        if side.delivered:
            decision = self._feed(side, side.delivered[i % len(side.delivered)])
            assert decision.is_empty, decision

    @rule(n=st.integers(0, 100), i=st.integers(0, 100))
    def same_fact_new_message_id(self, n: int, i: int) -> None:
        """A known fact under another message id: it is not news, so nothing is decided."""
        side = self._side(n)
        if side.delivered:
            old = side.delivered[i % len(side.delivered)]
            decision = self._feed(side, saga.ReplyReceived(f"copy-{next(self._ids)}", old.fact))
            assert decision.is_empty, decision

    @rule(n=st.integers(0, 100), i=st.integers(0, 100))
    def misrouted_reply(self, n: int, i: int) -> None:
        """A fact about another order reaching this saga changes nothing."""
        if len(self.orders) < 2:
            return
        source, target = self._side(n), self._side(n + 1)
        if source.delivered and source is not target:
            reply = source.delivered[i % len(source.delivered)]
            decision = self._feed(target, saga.ReplyReceived(f"stray-{next(self._ids)}", reply.fact))
            assert decision.is_empty, decision

    @rule(n=st.integers(0, 100), i=st.integers(0, 100))
    def stray_old_command(self, n: int, i: int) -> None:
        """An old command arrives again after newer ones (a late duplicate): the worst case."""
        keys = [k for k, done in self.processed_commands.items() if done]
        if keys:
            done = self.processed_commands[keys[n % len(keys)]]
            outgoing = done[i % len(done)]
            self.command_queues.setdefault(outgoing.command.target_id, deque()).append(outgoing)

    @rule(n=st.integers(0, 100), k=st.integers(1, 4))
    def participant_crash(self, n: int, k: int) -> None:
        """A participant died before committing its Kafka offset: its last k commands come again, in order."""
        keys = [key for key, done in self.processed_commands.items() if done]
        if keys:
            key = keys[n % len(keys)]
            again = self.processed_commands[key][-k:]
            self.command_queues.setdefault(key, deque()).extendleft(reversed(again))

    @rule(n=st.integers(0, 100))
    def fire_timeout(self, n: int) -> None:
        side = self._side(n)
        if side.saga.deadline is not None and side.saga.deadline > self.now:
            self.now = side.saga.deadline
        self._feed(side, saga.StepTimedOut())

    @rule(n=st.integers(0, 100))
    def early_timer(self, n: int) -> None:
        side = self._side(n)
        if side.saga.deadline is not None and side.saga.deadline > self.now:
            assert self._feed(side, saga.StepTimedOut()).is_empty

    @rule(seconds=st.integers(0, 40))
    def clock_moves(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(n=st.integers(0, 100))
    def cancel(self, n: int) -> None:
        side = self._side(n)
        if o.can_cancel(side.order):
            try:
                self._feed(side, saga.CancelRequested())
            except IllegalTransition:
                pass  # 409: the goods have left

    @rule(n=st.integers(0, 100))
    def warehouse_dispatches(self, n: int) -> None:
        side = self._side(n)
        if side.order.status is OrderStatus.CONFIRMED:  # the warehouse works from confirmed orders
            self._operator(side, ship.DispatchShipment(saga.shipment_id_for(side.order_id)))

    @rule(n=st.integers(0, 100))
    def carrier_delivers(self, n: int) -> None:
        side = self._side(n)
        self._operator(side, ship.DeliverShipment(saga.shipment_id_for(side.order_id)))

    def _operator(self, side: OrderSide, command: ship.ShipmentCommand) -> None:
        history = self._shipment_of(side)
        try:
            facts = ship.decide(command, ship.fold(history), unserved_countries=ship.DEFAULT_UNSERVED_COUNTRIES)
        except DomainError:
            return
        self._answer(self.shipment_logs, saga.shipment_id_for(side.order_id), list(facts), None)

    @rule(k=st.integers(0, 3))
    def order_service_restarts(self, k: int) -> None:
        """Crash and restart: states rebuilt from the logs; replies since the last commit come again."""
        self.restarts += 1
        for side in self.orders.values():
            side.saga = saga.fold(side.saga_log)
            side.order = o.fold(side.order_log)
            for reply in side.delivered[-k:] if k else []:
                assert self._feed(side, reply).is_empty

    @rule()
    def settle(self) -> None:
        """Everything delivered, every deadline fired: then the saga's invariants must hold."""
        for _ in range(300):
            if self._busy():
                while self._busy():
                    keys = [k for k, q in self.command_queues.items() if q]
                    if keys:
                        command = self.command_queues[keys[0]].popleft()
                        self.processed_commands.setdefault(keys[0], []).append(command)
                        self._run_command(command)
                        continue
                    for queue in self.reply_queues.values():
                        if queue:
                            self._deliver(queue.popleft())
                            break
                continue
            due = [side for side in self.orders.values() if side.saga.deadline is not None]
            if not due:
                break
            for side in due:
                self.now = max(self.now, side.saga.deadline or self.now)
                self._feed(side, saga.StepTimedOut())
        else:
            raise AssertionError("the system did not settle")
        for side in self.orders.values():
            self._check_settled(side)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def logs_rebuild_the_states(self) -> None:
        for side in self.orders.values():
            assert saga.fold(side.saga_log) == side.saga, side.order_id
            assert o.fold(side.order_log) == side.order, side.order_id

    @invariant()
    def orders_only_move_forward(self) -> None:
        for side in self.orders.values():
            previous: OrderStatus | None = None
            for status in side.statuses:
                assert status in FORWARD[previous], (side.order_id, side.statuses)
                previous = status

    @invariant()
    def no_aggregate_records_a_fact_twice(self) -> None:
        for logs in (self.payment_logs, self.shipment_logs):
            for stream_id, log in logs.items():
                counts = Counter(e.type for e in log)
                assert all(n == 1 for n in counts.values()), (stream_id, counts)
        for side in self.orders.values():
            counts = Counter(f.TYPE for f in side.order_log)
            assert all(n == 1 for n in counts.values()), (side.order_id, counts)

    @invariant()
    def money_follows_the_order(self) -> None:
        for side in self.orders.values():
            payment = self._payment_of(side)
            captured = [f for f in payment if isinstance(f, PaymentCaptured)]
            if side.order.status in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
                assert captured and captured[0].amount.amount_cents == side.total_cents, side.order_id
            if side.order.status is OrderStatus.REJECTED:
                assert not captured, side.order_id
            if side.order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED):
                refunded = [f for f in payment if isinstance(f, PaymentRefunded)]
                assert len(captured) == len(refunded), (side.order_id, side.order.status, payment)

    def _check_settled(self, side: OrderSide) -> None:
        order_state, payment, shipment = (
            side.order,
            pay.fold(self._payment_of(side)),
            ship.fold(self._shipment_of(side)),
        )
        assert order_state.status is not OrderStatus.PENDING, side.order_id
        assert side.saga.deadline is None and side.saga.awaiting == ()
        assert side.saga.completed == (order_state.status in o.FINAL_STATUSES)
        assert side.saga.anomalies == (), side.saga.anomalies
        assert side.saga.order_status is order_state.status
        if order_state.status in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
            assert payment.status is PaymentStatus.CAPTURED and payment.amount_cents == side.total_cents
            expected = {
                OrderStatus.CONFIRMED: ShipmentStatus.SCHEDULED,
                OrderStatus.SHIPPED: ShipmentStatus.DISPATCHED,
                OrderStatus.DELIVERED: ShipmentStatus.DELIVERED,
            }[order_state.status]
            assert shipment.status is expected, (order_state.status, shipment.status)
        else:
            assert order_state.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED)
            assert payment.status not in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED), payment
            assert shipment.status not in ship.ACTIVE_STATUSES, shipment
            assert order_state.reason
        # settled means settled: no timer and no redelivery decides anything more
        assert saga.decide(saga.StepTimedOut(), side.saga, self.now + timedelta(days=1)).is_empty
        for reply in side.delivered:
            assert saga.decide(reply, side.saga, self.now).is_empty


SagaMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSagaStateMachine = SagaMachine.TestCase

"""The order service layer: thin transactions around the pure Order aggregate and saga.

Every write is ONE transaction of the order database (see `_persist`):

1. the saga's new facts are appended to `saga-<order_id>` at the version they were decided on;
2. the order commands the saga issued are decided by the Order aggregate and appended to the
   order's stream (routed to `order.events` by the outbox);
3. the saga's commands go to the outbox (`payment.commands` / `shipping.commands`);
4. the saga's deadline is copied to `saga_deadlines` for the scheduler.

Steps 1-3 are one statement (`UnitOfWork.append_many`, which also writes the queued commands).

Nothing is ever produced to Kafka directly: the kernel's relay publishes the outbox.

Per-saga serialisation: every saga transaction first locks the saga's `saga_deadlines` row
(`FOR UPDATE`), so the reply consumer, the cancel endpoint and the deadline scheduler of any
number of replicas take turns on one saga instead of racing to a version conflict. The
optimistic version check of the event store remains the safety net: a lost race raises
ConcurrencyConflict (the consumer runner retries the message; HTTP retries a few times, then 409).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import asyncpg
import orjson
from prometheus_client import Counter

from services.domain_errors import IllegalTransition, InvalidCommand, NotFound
from services.order.domain import order, saga
from services.order.domain.order import OrderState, PlaceOrder
from services.order.domain.saga import SagaDecision, SagaState
from shared.consumer import Delivery
from shared.eventstore import ConcurrencyConflict, EventStore, StreamAppend, UnitOfWork
from shared.ids import caused_by
from shared.messages import NewEvent, RecordedEvent, utc_now

log = logging.getLogger("services.order")

#: Consumer group and inbox key of the saga's reply consumer (KERNEL.md naming).
SAGA_CONSUMER = "order.saga"
#: Where the participants' answers arrive.
REPLY_TOPICS = ("payment.events", "shipping.events")
ORDER_EVENTS = "order.events"

ORDERS_PLACED = Counter("orders_placed_total", "Orders placed (idempotent replays are not counted)")
IDEMPOTENT_REPLAYS = Counter(
    "order_idempotent_replays_total", "POST /orders answered from a stored Idempotency-Key, appending nothing"
)
SAGA_TRIGGERS = Counter(
    "saga_triggers_total",
    "Triggers fed to the order saga, by kind and whether they decided anything",
    ["trigger", "outcome"],
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Placed:
    """The answer to POST /orders (stored with an Idempotency-Key and replayed verbatim)."""

    order_id: str
    status: str
    version: int
    total_cents: int
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "status": self.status, "version": self.version, "total_cents": self.total_cents}


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key and the fingerprint of the body it came with."""

    key: str
    body_sha256: str


@dataclass(frozen=True, slots=True)
class CancelAccepted:
    """The order and saga right after a cancel was accepted (compensation is asynchronous)."""

    order: OrderState
    saga: SagaState


def body_fingerprint(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a validated body: key order and spacing do not matter."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


# --------------------------------------------------------------------------- place


async def place_order(
    store: EventStore,
    command: PlaceOrder,
    *,
    causation_id: str,
    step_timeout_s: float,
    idempotency: IdempotencyKey | None = None,
) -> Placed:
    """Append order.placed and start the saga (→ payment.authorize) in one transaction.

    With an Idempotency-Key, the key row is inserted first: a concurrent request with the same
    key waits on its primary key and then reads the committed answer back, so one key places
    at most one order. Same key with another body → InvalidCommand (422).
    """
    placed_events = order.decide(command, OrderState())  # validation before any I/O
    placed_state = order.fold(placed_events)
    answer = Placed(command.order_id, str(placed_state.status), 1, placed_state.total_cents)
    async with store.transaction() as uow:
        if idempotency is not None:
            earlier = await _claim_idempotency_key(uow, idempotency, answer)
            if earlier is not None:
                IDEMPOTENT_REPLAYS.inc()
                return earlier
        with caused_by(command.order_id, causation_id):
            start = saga.SagaStarted.for_order(placed_state, command.payment_token, step_timeout_s)
            decision = saga.decide(start, SagaState(), utc_now())
            await _write_decision(uow, OrderState(), SagaState(), decision, placed=placed_events)
            await uow.conn.execute(
                "INSERT INTO saga_deadlines (order_id, deadline, saga_version) VALUES ($1, $2, $3)",
                command.order_id,
                decision.state.deadline,
                decision.state.version,
            )
    ORDERS_PLACED.inc()
    SAGA_TRIGGERS.labels(trigger="started", outcome="decided").inc()
    with caused_by(command.order_id, causation_id):
        log.info("order placed", extra={"order_id": command.order_id, "total_cents": answer.total_cents})
    return answer


async def _claim_idempotency_key(uow: UnitOfWork, key: IdempotencyKey, answer: Placed) -> Placed | None:
    """None if this request owns the key now; else the earlier answer (or 422 if the body differs)."""
    claimed = await uow.conn.fetchval(
        """INSERT INTO order_idempotency_keys (idempotency_key, body_sha256, order_id, response)
           VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING RETURNING order_id""",
        key.key,
        key.body_sha256,
        answer.order_id,
        answer.to_dict(),
    )
    if claimed is not None:
        return None
    row = await uow.conn.fetchrow(
        "SELECT body_sha256, response FROM order_idempotency_keys WHERE idempotency_key = $1", key.key
    )
    assert row is not None  # the conflicting row is committed (READ COMMITTED sees it now)
    if row["body_sha256"] != key.body_sha256:
        raise InvalidCommand(
            "Idempotency-Key",
            "this Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
        )
    stored: dict[str, Any] = row["response"]
    return Placed(
        order_id=stored["order_id"],
        status=stored["status"],
        version=stored["version"],
        total_cents=stored["total_cents"],
        replayed=True,
    )


# --------------------------------------------------------------------------- cancel


async def cancel_order(store: EventStore, order_id: str, *, causation_id: str, attempts: int = 5) -> CancelAccepted:
    """Feed CancelRequested to the saga; NotFound (404) / IllegalTransition (409) otherwise.

    Accepted only while the order is PENDING or CONFIRMED and the goods have not left; the
    order becomes CANCELLED once the compensations are confirmed. A cancel of an order that
    is already being compensated is accepted again and decides nothing.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with store.transaction() as uow:
                if not await _lock_saga(uow, order_id):
                    raise NotFound("order_not_found", f"order {order_id} does not exist")
                order_state, saga_state, _ = await _load(uow, order_id)
                if not order_state.exists:
                    raise NotFound("order_not_found", f"order {order_id} does not exist")
                if not order.can_cancel(order_state):
                    raise IllegalTransition("order_not_cancellable", f"cannot cancel an order that is {order_state.status}")
                with caused_by(order_id, causation_id):
                    decision = saga.decide(saga.CancelRequested(), saga_state, utc_now())
                    await _persist(uow, order_state, saga_state, decision)
            SAGA_TRIGGERS.labels(trigger="cancel", outcome=_outcome(decision)).inc()
            with caused_by(order_id, causation_id):
                log.info("cancel accepted", extra={"order_id": order_id, "saga_step": decision.state.step})
            return CancelAccepted(order_state, decision.state)
        except ConcurrencyConflict:
            if attempt == attempts:
                raise
            log.info("cancel lost a race, deciding again", extra={"order_id": order_id, "attempt": attempt})
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- replies


def _reply_order_id(delivery: Delivery) -> str | None:
    env = delivery.envelope
    if env.type not in saga.REPLY_TYPES:
        return None
    order_id = env.data.get("order_id")
    return order_id if isinstance(order_id, str) and order_id else None


async def handle_replies(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
    """Feed participants' facts to their sagas, in the consumer runner's transaction.

    The batch takes its sagas' locks up front, in one sorted order (two replicas' batches then
    never wait on each other in a cycle), and reads every order and saga stream it needs in one
    round trip; each reply then decides on its saga as the earlier replies of the batch left
    it, and the deadline index is updated once per saga. Facts about orders this service does
    not know (other deployments or tests sharing the topics) are ignored. ConcurrencyConflict
    propagates: the runner re-applies the message alone.
    """
    replies = [(d, order_id) for d in deliveries if (order_id := _reply_order_id(d)) is not None]
    if len(replies) < len(deliveries):
        log.debug("messages ignored: not replies about an order", extra={"ignored": len(deliveries) - len(replies)})
    if not replies:
        return
    known: list[str] = [
        row["order_id"]
        for row in await uow.conn.fetch(
            "SELECT order_id FROM saga_deadlines WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE",
            sorted({order_id for _, order_id in replies}),
        )
    ]
    streams = await uow.read_many([s for order_id in known for s in (order_id, saga.saga_stream_id(order_id))])
    sagas = {oid: (order.fold(streams[oid]), saga.fold(streams[saga.saga_stream_id(oid)])) for oid in known}
    moved: dict[str, SagaState] = {}
    for delivery, order_id in replies:
        env = delivery.envelope
        if order_id not in sagas:
            log.debug("reply for an unknown order ignored", extra={"type": env.type, "order_id": order_id})
            continue
        order_state, saga_state = sagas[order_id]
        with caused_by(order_id, env.id):
            decision = saga.decide(saga.ReplyReceived.of(env), saga_state, utc_now())
            order_state = await _write_decision(uow, order_state, saga_state, decision)
        if not decision.is_empty:
            sagas[order_id] = (order_state, decision.state)
            moved[order_id] = decision.state
        uow.after_commit(SAGA_TRIGGERS.labels(trigger="reply", outcome=_outcome(decision)).inc)
    await _index_deadlines(uow, list(moved.values()))


# --------------------------------------------------------------------------- deadlines


@dataclass(frozen=True, slots=True)
class TimeoutPass:
    """One due saga the scheduler took: `ok` False if handling it failed (retried next pass)."""

    order_id: str
    ok: bool


async def time_out_next(store: EventStore, now: datetime, skip: Sequence[str] = ()) -> TimeoutPass | None:
    """Fire StepTimedOut for one saga whose deadline passed; None if none (else than `skip`) is due.

    `FOR UPDATE SKIP LOCKED`: replicas (and a saga busy with a reply) are skipped, not waited
    for. A saga whose handling fails is logged and reported with ok=False, so the caller can
    skip it and go on with the others; its deadline stays and fires again on the next pass.
    """
    async with store.transaction() as uow:
        order_id: str | None = await uow.conn.fetchval(
            """SELECT order_id FROM saga_deadlines
               WHERE deadline <= $1 AND NOT (order_id = ANY($2::text[]))
               ORDER BY deadline LIMIT 1 FOR UPDATE SKIP LOCKED""",
            now,
            list(skip),
        )
        if order_id is None:
            return None
        try:
            async with uow.savepoint():  # a failure leaves the row (and the outbox) as it was
                order_state, saga_state, history = await _load(uow, order_id)
                with caused_by(order_id, _deadline_cause(order_id, history)):
                    decision = saga.decide(saga.StepTimedOut(), saga_state, now)
                    await _persist(uow, order_state, saga_state, decision)
                    if decision.is_empty:  # the index disagreed with the saga: realign it
                        await _index_deadlines(uow, [saga_state])
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            raise
        except Exception as exc:
            log.warning("saga timeout failed; retried on the next pass", extra={"order_id": order_id, "error": repr(exc)})
            return TimeoutPass(order_id, ok=False)
    SAGA_TRIGGERS.labels(trigger="timeout", outcome=_outcome(decision)).inc()
    if not decision.is_empty:
        with caused_by(order_id, _deadline_cause(order_id, history)):
            log.info(
                "saga step timed out",
                extra={"order_id": order_id, "saga_step": decision.state.step, "awaiting": list(saga_state.awaiting)},
            )
    return TimeoutPass(order_id, ok=True)


def _deadline_cause(order_id: str, history: Sequence[RecordedEvent]) -> str:
    """A timeout is caused by the saga fact that set the deadline it fires."""
    for event in reversed(history):
        if event.type == saga.SAGA_DEADLINE_SET:
            return str(event.event_id)
    return order_id


# --------------------------------------------------------------------------- shared steps


async def _lock_saga(uow: UnitOfWork, order_id: str) -> bool:
    """Take the saga's turn (row lock until commit); False if this service has no such saga."""
    row = await uow.conn.fetchval("SELECT 1 FROM saga_deadlines WHERE order_id = $1 FOR UPDATE", order_id)
    return row is not None


async def _load(uow: UnitOfWork, order_id: str) -> tuple[OrderState, SagaState, list[RecordedEvent]]:
    """The order's state, the saga's state and the saga's facts, read in the transaction."""
    streams = await uow.read_many([order_id, saga.saga_stream_id(order_id)])
    history = streams[saga.saga_stream_id(order_id)]
    return order.fold(streams[order_id]), saga.fold(history), history


async def _persist(uow: UnitOfWork, order_state: OrderState, before: SagaState, decision: SagaDecision) -> OrderState:
    """Write one saga decision and its deadline (module docstring, steps 1-4)."""
    state = await _write_decision(uow, order_state, before, decision)
    if not decision.is_empty:
        await _index_deadlines(uow, [decision.state])
    return state


async def _write_decision(
    uow: UnitOfWork,
    order_state: OrderState,
    before: SagaState,
    decision: SagaDecision,
    *,
    placed: Sequence[NewEvent] = (),
) -> OrderState:
    """Steps 1-3 of the module docstring, in one statement; the order's state afterwards.

    The order commands are decided in memory first (each on the state the previous one left),
    so the saga's facts, the order's facts (after `placed`, when the order is new) and the
    queued commands are written together.
    """
    if decision.is_empty:
        return order_state
    order_id = decision.state.order_id
    for outgoing in decision.commands:
        await uow.send(outgoing, saga.COMMAND_TOPICS[outgoing.type])
    state = order_state
    order_events: list[NewEvent] = list(placed)
    for event in placed:
        state = order.evolve(state, event)
    for command in decision.order_commands:
        for event in order.decide(command, state):  # the saga never issues a refused command
            state = order.evolve(state, event)
            order_events.append(event)
    await uow.append_many(
        [
            StreamAppend(saga.saga_stream_id(order_id), before.version, decision.saga_events),
            StreamAppend(order_id, order_state.version, order_events),
        ]
    )
    return state


async def _index_deadlines(uow: UnitOfWork, states: Sequence[SagaState]) -> None:
    """Copy sagas' deadlines to `saga_deadlines` for the scheduler (step 4), in one statement."""
    if not states:
        return
    await uow.conn.execute(
        """UPDATE saga_deadlines AS d SET deadline = u.deadline, saga_version = u.version, updated_at = now()
           FROM unnest($1::text[], $2::timestamptz[], $3::int[]) AS u(order_id, deadline, version)
           WHERE d.order_id = u.order_id""",
        [state.order_id for state in states],
        [state.deadline for state in states],
        [state.version for state in states],
    )


def _outcome(decision: SagaDecision) -> str:
    return "ignored" if decision.is_empty else "decided"


# --------------------------------------------------------------------------- queries


async def _order_history(store: EventStore, order_id: str) -> list[RecordedEvent]:
    """The order's facts; NotFound unless the stream is an order (starts with order.placed)."""
    history = await store.read(order_id)
    if not history or history[0].type != order.ORDER_PLACED:
        raise NotFound("order_not_found", f"order {order_id} does not exist")
    return history


async def get_order(store: EventStore, order_id: str, as_of_version: int | None = None) -> OrderState:
    """The order's write-side state, or as it was right after its event `as_of_version`."""
    history = await _order_history(store, order_id)
    if as_of_version is not None and as_of_version > len(history):
        raise NotFound(
            "version_not_found", f"order {order_id} is at version {len(history)}; it has no version {as_of_version}"
        )
    return order.fold(history, until_version=as_of_version)


async def order_events(store: EventStore, order_id: str) -> list[RecordedEvent]:
    return await _order_history(store, order_id)


async def get_saga(store: EventStore, order_id: str) -> tuple[SagaState, list[RecordedEvent]]:
    """The saga's state and its facts (show their data through `saga.redacted`)."""
    history = await store.read(saga.saga_stream_id(order_id))
    if not history:
        raise NotFound("saga_not_found", f"no saga for order {order_id}")
    return saga.fold(history), history

"""The order service layer: thin transactions around the pure Order aggregate and saga.

Every write is ONE transaction of the order database (`_persist`):

1. the saga's new facts are appended to `saga-<order_id>` at the version they were decided on;
2. the order commands the saga issued are decided by the Order aggregate, in memory, and its
   facts appended to the order's stream (the outbox publishes them: they have a topic);
3. the saga's commands are queued for the outbox, each on its class's topic;
4. the saga's deadline is copied to `saga_deadlines` for the scheduler.

Steps 1-3 are one statement (`UnitOfWork.append_many` also writes the queued commands), so a
decision costs one round trip however many facts and commands it has: the Order aggregate is
driven through the kernel's runner (`ORDERS`, a `shared.aggregate.Aggregate`) with `plan`,
which decides without writing so its facts join the saga's in that one statement. Nothing is
ever produced to Kafka directly: the kernel's relay publishes the outbox.

Per-saga serialisation: every saga transaction first locks the saga's `saga_deadlines` row
(`FOR UPDATE`), so the reply consumer, the cancel endpoint and the deadline scheduler of any
number of replicas take turns on one saga instead of racing to a version conflict. The
optimistic version check of the event store remains the safety net: a lost race raises
ConcurrencyConflict (the consumer runner applies the message again; a request decides again
up to CONFLICT_ATTEMPTS times, then answers 409).

A memory image (`SagaImage`): the reply consumer keeps each saga's folded order and saga state
after its commits, keyed by the saga version they fold. The saga lock reads the index row's
`saga_version`, written with every saga fact in the same transaction, so an image entry is used
only while the log is still at its version; otherwise (another replica, the cancel endpoint or
the deadline scheduler moved the saga) the streams are read again. An order stream that moved
anyway fails the optimistic version check at append; the batch is then applied again without
the image (its entries are dropped on any failure). No read round trip per reply batch.

`saga_deadlines` is an index of the saga log, not the truth: a saga whose facts are in the log
but which has no row (a log restored without its index) is adopted, i.e. given its row, the
first time a reply or a cancel reaches it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
from opentelemetry.trace import Span
from prometheus_client import Counter

from services.order import domain, saga
from services.order.customers import lock_customers, require_keystore, seal_address
from services.order.domain import OrderCommand, OrderState, PlaceOrder
from services.order.idempotency import IdempotencyKey, Placed, claim_idempotency_key
from services.order.saga import SagaDecision, SagaState
from shared.aggregate import Aggregate, deciding_again, facts_of
from shared.batch_write import BatchWork, DeferredWrite, NeedsTransaction
from shared.consumer import Delivery
from shared.contract import PAYMENT_EVENTS, SHIPPING_EVENTS, Fact, SagaDeadlineSet, utc_now
from shared.errors import IllegalTransition, NotFound
from shared.eventstore import EventStore, Recorded, StreamAppend, UnitOfWork
from shared.ids import caused_by
from shared.keystore import Keystore
from shared.memory_image import MemoryImage
from shared.tracing import current_span, in_span

log = logging.getLogger("services.order")

#: Consumer group and inbox key of the saga's reply consumer (docs/KERNEL.md naming).
SAGA_CONSUMER = "order.saga"
#: Where the participants' answers arrive.
REPLY_TOPICS = (PAYMENT_EVENTS, SHIPPING_EVENTS)

ORDERS_PLACED = Counter("orders_placed_total", "Orders placed (idempotent replays are not counted)")
IDEMPOTENT_REPLAYS = Counter(
    "order_idempotent_replays_total", "POST /orders answered from a stored Idempotency-Key, appending nothing"
)
SAGA_TRIGGERS = Counter(
    "saga_triggers_total",
    "Triggers fed to the order saga, by kind and whether they decided anything",
    ["trigger", "outcome"],
)


def _order_id(command: OrderCommand) -> str:
    return command.order_id


#: The Order aggregate on the kernel's runner. Its commands come from the saga (and placement)
#: inside the saga's transaction; requests that decide alone retry via `deciding_again`.
ORDERS: Aggregate[OrderCommand, OrderState] = Aggregate(
    name="order", stream_of=_order_id, fold=domain.fold, evolve=domain.evolve, decide=domain.decide
)


@dataclass(frozen=True, slots=True)
class CancelAccepted:
    """The order and saga right after a cancel was accepted (compensation is asynchronous)."""

    order: OrderState
    saga: SagaState


class SagaImage(MemoryImage[tuple[OrderState, SagaState]]):
    """Folded (order, saga) states by order id (shared/memory_image.py)."""

    def at_version(self, order_id: str, saga_version: int | None) -> tuple[OrderState, SagaState] | None:
        """The entry, only if it folds the saga at `saga_version` (the log's, read under lock)."""
        entry = self.get(order_id)
        if entry is None or saga_version is None or entry[1].version != saga_version:
            return None
        return entry


#: One image per event store (database) in the process.
_IMAGES: weakref.WeakKeyDictionary[EventStore, SagaImage] = weakref.WeakKeyDictionary()


def saga_image(store: EventStore) -> SagaImage:
    image = _IMAGES.get(store)
    if image is None:
        image = _IMAGES[store] = SagaImage()
    return image


# --------------------------------------------------------------------------- place


@dataclass(frozen=True, slots=True)
class Placement:
    """A validated POST /orders: the command, the request's causation id, its answer, and the
    request's span (its facts carry that trace even when written in a batch)."""

    command: PlaceOrder
    causation_id: str
    answer: Placed
    span: Span | None = None


def placement(command: PlaceOrder, causation_id: str) -> Placement:
    """Validate a placement before any I/O (InvalidCommand → 422, nothing appended)."""
    clear = domain.fold(ORDERS.plan(command.order_id, OrderState(), [command]).facts)
    answer = Placed(command.order_id, str(clear.status), clear.version, clear.total_cents)
    return Placement(command, causation_id, answer, current_span())


async def place_orders(
    store: EventStore,
    placements: Sequence[Placement],
    *,
    step_timeout_s: float,
    keystore: Keystore | None,
    idempotency: IdempotencyKey | None = None,
) -> list[Placed]:
    """Append the orders' placements and start their sagas (which send the authorizations), all
    in one transaction of four round trips however many there are: BEGIN, the customers' locks,
    one statement (every order's and saga's facts, the outbox rows, the deadline rows; see
    shared/batch_write.py) and COMMIT, plus one to the key store. The payment tokens go from
    the commands to the sagas' starts, in memory only.

    The addresses' personal fields are sealed with each customer's data key (made if the
    customer has none) under the customer's lock (services/order/customers.py) before the
    domain decides: no fact, command or row ever holds them in clear. A key store that cannot
    be reached raises KeystoreUnavailable (503) and nothing is appended.

    With an Idempotency-Key (one placement only), the key row is inserted first: a concurrent
    request with the same key waits on its primary key and then reads the committed answer
    back, so one key places at most one order. Same key with another body → InvalidCommand (422).
    """
    if idempotency is not None and len(placements) != 1:
        raise ValueError("an Idempotency-Key belongs to one placement")
    async with store.transaction() as uow:
        if idempotency is not None:
            earlier = await claim_idempotency_key(uow, idempotency, placements[0].answer)
            if earlier is not None:
                IDEMPOTENT_REPLAYS.inc()
                return [earlier]
        customers = sorted({p.command.customer_id for p in placements})
        await lock_customers(uow.conn, customers)
        keys = await require_keystore(keystore).current_keys(customers)
        work = BatchWork(uow.conn, store, None, within=uow)
        started: dict[str, tuple[OrderState, SagaState]] = {}
        for p in placements:
            command = p.command
            sealed = replace(
                command, shipping_address=seal_address(keys[command.customer_id], command.shipping_address)
            )
            placed = ORDERS.plan(command.order_id, OrderState(), [sealed]).facts
            with in_span(p.span), caused_by(command.order_id, p.causation_id):
                start = saga.StartSaga.for_order(domain.fold(placed), command.payment_token, step_timeout_s)
                decision = saga.decide(start, SagaState(), utc_now())
                order_state = await _write_decision(work, OrderState(), SagaState(), decision, placed=placed)
            started[command.order_id] = (order_state, decision.state)
        states = [saga_state for _, saga_state in started.values()]
        work.defer(DeferredWrite(_NEW_DEADLINES_SQL, _deadline_columns(states), rows=len(states)))
        await work.commit()
    saga_image(store).put_all(started)  # the first replies decide on them
    ORDERS_PLACED.inc(len(placements))
    SAGA_TRIGGERS.labels(trigger="started", outcome="decided").inc(len(placements))
    for p in placements:
        with caused_by(p.command.order_id, p.causation_id):
            log.info("order placed", extra={"order_id": p.command.order_id, "total_cents": p.answer.total_cents})
    return [p.answer for p in placements]


_NEW_DEADLINES_SQL = """INSERT INTO saga_deadlines (order_id, deadline, saga_version)
    SELECT * FROM unnest({}::text[], {}::timestamptz[], {}::int[]) RETURNING 1"""


# --------------------------------------------------------------------------- cancel


async def cancel_order(store: EventStore, order_id: str, *, causation_id: str, attempts: int) -> CancelAccepted:
    """Feed CancelRequested to the saga; NotFound (404) / IllegalTransition (409) otherwise.

    Accepted only while the order is PENDING or CONFIRMED and the goods have not left; the
    order becomes CANCELLED once the compensations are confirmed. A cancel of an order that
    is already being compensated is accepted again and decides nothing. A lost race is
    decided again, `attempts` times in all (CONFLICT_ATTEMPTS).
    """

    async def attempt() -> tuple[OrderState, SagaDecision]:
        async with store.transaction() as uow:
            locked, adopted, _ = await _lock_sagas(uow, [order_id])
            if not locked:
                raise NotFound("order_not_found", f"order {order_id} does not exist")
            order_state, saga_state, _ = await _load(uow, order_id)
            if not order_state.exists:
                raise NotFound("order_not_found", f"order {order_id} does not exist")
            if not domain.can_cancel(order_state):
                raise IllegalTransition("order_not_cancellable", f"cannot cancel an order that is {order_state.status}")
            with caused_by(order_id, causation_id):
                decision = saga.decide(saga.CancelRequested(), saga_state, utc_now())
                await _persist(uow, order_state, saga_state, decision, reindex=bool(adopted))
            return order_state, decision

    order_state, decision = await deciding_again(attempts, order_id, attempt)
    SAGA_TRIGGERS.labels(trigger="cancel", outcome=_outcome(decision)).inc()
    with caused_by(order_id, causation_id):
        log.info("cancel accepted", extra={"order_id": order_id, "saga_step": decision.state.step})
    return CancelAccepted(order_state, decision.state)


# --------------------------------------------------------------------------- replies


def _reply_of(delivery: Delivery) -> tuple[str, saga.ReplyReceived] | None:
    """The saga trigger a delivered participant fact is, and its order id; None for anything else."""
    data = delivery.envelope.data
    if not isinstance(data, saga.REPLY_FACTS):
        return None
    return data.order_id, saga.ReplyReceived(reply_id=delivery.envelope.id, fact=data)


async def handle_replies(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
    """Feed participants' facts to their sagas, in the consumer runner's transaction.

    The batch takes its sagas' locks up front, in one sorted order (two replicas' batches then
    never wait on each other in a cycle), and reads every order and saga stream the memory
    image does not hold at the locked version in one round trip (none when it holds them all);
    each reply then decides on its saga as the earlier replies of the batch left
    it, and the deadline index is updated once per saga. Facts about orders this service does
    not know (other deployments or tests sharing the topics) are ignored. ConcurrencyConflict
    propagates: the runner applies the message again, alone.
    """
    replies = [(delivery, found) for delivery in deliveries if (found := _reply_of(delivery)) is not None]
    if len(replies) < len(deliveries):
        log.debug("messages ignored: not replies about an order", extra={"ignored": len(deliveries) - len(replies)})
    if not replies:
        return
    image = saga_image(uow.store)
    if isinstance(uow, BatchWork):
        await _decide_on_the_image(uow, image, replies)
        return
    known, adopted, versions = await _lock_sagas(uow, [order_id for _, (order_id, _) in replies])
    try:
        sagas = {oid: entry for oid in known if (entry := image.at_version(oid, versions.get(oid))) is not None}
        unread = [oid for oid in known if oid not in sagas]
        streams = await uow.read_many([s for oid in unread for s in (oid, saga.saga_stream_id(oid))]) if unread else {}
        for oid in unread:
            sagas[oid] = (domain.fold(facts_of(streams[oid])), saga.fold(facts_of(streams[saga.saga_stream_id(oid)])))
        moved: dict[str, SagaState] = {oid: sagas[oid][1] for oid in adopted}
        await _decide_replies(uow, sagas, replies, moved)
        await _index_deadlines(uow, list(moved.values()))
    except BaseException:
        image.drop(known)  # a conflict or a failure: the next attempt reads the log
        raise
    settled = {oid: sagas[oid] for oid in known}
    uow.after_commit(lambda: image.put_all(settled))


async def _decide_on_the_image(
    uow: BatchWork, image: SagaImage, replies: Sequence[tuple[Delivery, tuple[str, saga.ReplyReceived]]]
) -> None:
    """The batch in one statement (shared/batch_write.py): every saga decided on its memory
    image entry, without lock or read; the statement checks that each order and saga stream is
    still at the entry's version and that each saga's index row is there, so a saga moved by
    another path (cancel, timeout, a replica) refuses the statement and the batch goes the
    locked way. A saga the image does not hold needs that way too (it reads and may adopt)."""
    sagas: dict[str, tuple[OrderState, SagaState]] = {}
    for _, (order_id, _) in replies:
        if order_id in sagas:
            continue
        entry = image.get(order_id)
        if entry is None:
            raise NeedsTransaction(f"saga of order {order_id} is not in the memory image")
        sagas[order_id] = entry
        uow.expect(order_id, entry[0].version)
        uow.expect(saga.saga_stream_id(order_id), entry[1].version)
    moved: dict[str, SagaState] = {}
    await _decide_replies(uow, sagas, replies, moved)
    if moved:
        states = sorted(moved.values(), key=lambda state: state.order_id)
        uow.defer(DeferredWrite(_INDEX_DEADLINES_SQL + " RETURNING 1", _deadline_columns(states), rows=len(states)))
    uow.after_commit(lambda: image.put_all(sagas))


async def _decide_replies(
    uow: UnitOfWork,
    sagas: dict[str, tuple[OrderState, SagaState]],
    replies: Sequence[tuple[Delivery, tuple[str, saga.ReplyReceived]]],
    moved: dict[str, SagaState],
) -> None:
    """Each reply decides on its saga as the earlier replies of the batch left it (`sagas` and
    `moved` are updated); a reply about an order not in `sagas` is ignored."""
    for delivery, (order_id, reply) in replies:
        if order_id not in sagas:
            log.debug("reply for an unknown order ignored", extra={"type": reply.fact.TYPE, "order_id": order_id})
            continue
        order_state, saga_state = sagas[order_id]
        with caused_by(order_id, delivery.envelope.id, delivery.envelope.type):
            decision = saga.decide(reply, saga_state, utc_now())
            order_state = await _write_decision(uow, order_state, saga_state, decision)
        if not decision.is_empty:
            sagas[order_id] = (order_state, decision.state)
            moved[order_id] = decision.state
        uow.after_commit(SAGA_TRIGGERS.labels(trigger="reply", outcome=_outcome(decision)).inc)


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
                with caused_by(order_id, _deadline_cause(order_id, history), SagaDeadlineSet.TYPE):
                    decision = saga.decide(saga.StepTimedOut(), saga_state, now)
                    await _persist(uow, order_state, saga_state, decision)
                    if decision.is_empty:  # the index disagreed with the saga: realign it
                        await _index_deadlines(uow, [saga_state])
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            raise
        except Exception as exc:
            log.warning(
                "saga timeout failed; retried on the next pass", extra={"order_id": order_id, "error": repr(exc)}
            )
            return TimeoutPass(order_id, ok=False)
    SAGA_TRIGGERS.labels(trigger="timeout", outcome=_outcome(decision)).inc()
    if not decision.is_empty:
        with caused_by(order_id, _deadline_cause(order_id, history), SagaDeadlineSet.TYPE):
            log.info(
                "saga step timed out",
                extra={"order_id": order_id, "saga_step": decision.state.step, "awaiting": list(saga_state.awaiting)},
            )
    return TimeoutPass(order_id, ok=True)


def _deadline_cause(order_id: str, history: Sequence[Recorded]) -> str:
    """A timeout is caused by the saga fact that set the deadline it fires."""
    for event in reversed(history):
        if isinstance(event.data, SagaDeadlineSet):
            return event.id
    return order_id


# --------------------------------------------------------------------------- shared steps


async def _lock_sagas(uow: UnitOfWork, order_ids: Sequence[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """Take the turn (row locks until commit) of each saga of `order_ids` this service has, in
    one sorted order: (every locked order id, those of them adopted now, the saga version each
    index row holds, read after the lock: the memory image's validation)."""
    wanted = sorted(set(order_ids))
    rows = await uow.conn.fetch(
        """SELECT order_id, saga_version FROM saga_deadlines WHERE order_id = ANY($1::text[])
           ORDER BY order_id FOR UPDATE""",
        wanted,
    )
    locked = [row["order_id"] for row in rows]
    versions = {row["order_id"]: row["saga_version"] for row in rows if row["saga_version"] is not None}
    missing = sorted(set(wanted) - set(locked))
    adopted = await _adopt(uow, missing) if missing else []
    return locked + adopted, adopted, versions


async def _adopt(uow: UnitOfWork, order_ids: Sequence[str]) -> list[str]:
    """Give an index row (locked) to each saga of `order_ids` that is in the log without one.

    A concurrent adopter's row is locked too (`DO UPDATE` waits for it), never skipped. Its
    deadline is set by the caller, from the saga's state, before commit."""
    rows = await uow.conn.fetch(
        """INSERT INTO saga_deadlines (order_id)
           SELECT s.order_id FROM unnest($1::text[], $2::text[]) AS s(order_id, stream_id)
           WHERE EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.version = 1)
           ORDER BY s.order_id
           ON CONFLICT (order_id) DO UPDATE SET updated_at = saga_deadlines.updated_at
           RETURNING order_id""",
        list(order_ids),
        [saga.saga_stream_id(order_id) for order_id in order_ids],
    )
    adopted = sorted(row["order_id"] for row in rows)
    if adopted:
        log.info("sagas adopted into the deadline index", extra={"order_ids": adopted})
    return adopted


async def _load(uow: UnitOfWork, order_id: str) -> tuple[OrderState, SagaState, list[Recorded]]:
    """The order's state, the saga's state and the saga's facts, read in the transaction."""
    streams = await uow.read_many([order_id, saga.saga_stream_id(order_id)])
    history = streams[saga.saga_stream_id(order_id)]
    return domain.fold(facts_of(streams[order_id])), saga.fold(facts_of(history)), history


async def _persist(
    uow: UnitOfWork, order_state: OrderState, before: SagaState, decision: SagaDecision, *, reindex: bool = False
) -> OrderState:
    """Write one saga decision and its deadline (module docstring, steps 1-4); `reindex`: the
    saga's index row is new and needs its deadline even if nothing was decided."""
    state = await _write_decision(uow, order_state, before, decision)
    if reindex or not decision.is_empty:
        await _index_deadlines(uow, [decision.state])
    return state


async def _write_decision(
    uow: UnitOfWork,
    order_state: OrderState,
    before: SagaState,
    decision: SagaDecision,
    *,
    placed: Sequence[Fact] = (),
) -> OrderState:
    """Steps 1-3 of the module docstring, in one statement; the order's state afterwards.

    The order commands are decided in memory first (each on the state the previous one left),
    so the saga's facts, the order's facts (after `placed`, when the order is new) and the
    queued commands are written together.
    """
    if decision.is_empty:
        return order_state
    for outgoing in decision.commands:
        await uow.send(outgoing.command, command_id=outgoing.command_id)
    # The saga never issues a command the order refuses.
    order = ORDERS.plan(decision.state.order_id, order_state, decision.order_commands, already=placed)
    await uow.append_many(
        [StreamAppend(saga.saga_stream_id(decision.state.order_id), before.version, decision.saga_facts), order.append]
    )
    return order.state


async def _index_deadlines(uow: UnitOfWork, states: Sequence[SagaState]) -> None:
    """Copy sagas' deadlines to `saga_deadlines` for the scheduler (step 4), in one statement."""
    if not states:
        return
    await uow.conn.execute(_INDEX_DEADLINES_SQL.format("$1", "$2", "$3"), *_deadline_columns(states))


# `d.order_id = ANY(...)` gives the planner the rows' keys: with the join alone, the generic plan
# (unnest estimated at 10 rows) scanned the whole table, a row per saga ever placed, for every
# reply batch while it held a few thousand rows (auto_explain under make bench: 0.25-0.5 ms).
_INDEX_DEADLINES_SQL = """UPDATE saga_deadlines AS d SET deadline = u.deadline, saga_version = u.version, updated_at = now()
    FROM unnest({0}::text[], {1}::timestamptz[], {2}::int[]) AS u(order_id, deadline, version)
    WHERE d.order_id = u.order_id AND d.order_id = ANY({0}::text[])"""


def _deadline_columns(states: Sequence[SagaState]) -> tuple[list[str], list[datetime | None], list[int]]:
    return (
        [state.order_id for state in states],
        [state.deadline for state in states],
        [state.version for state in states],
    )


def _outcome(decision: SagaDecision) -> str:
    return "ignored" if decision.is_empty else "decided"

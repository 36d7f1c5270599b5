"""The kernel's command runner: every write service handles its aggregate's commands this way.

An `Aggregate` binds one kind of event-sourced aggregate's pure domain (`fold`, `decide`,
`find_answer`) to the event store. Every command, whether it arrives on Kafka or over HTTP,
is handled the same way inside one database transaction:

    read the stream → fold → decide → append (optimistic; a lost race is decided again)

and its outcome is one of three:

* **new facts**: appended; the kernel's outbox publishes them (the command's answer);
* **duplicate**: the domain decided nothing because the command's effect is already recorded
  (e.g. a retried AuthorizePayment after a timeout). A command *message* is answered again
  by re-queueing the recorded fact (same event id, same causal ids), so a consumer that
  already saw it drops it by id and one that missed it gets the answer;
* **refused** (IllegalTransition / NotFound): nothing is appended or published. Over HTTP the
  refusal is the answer (409 / 404); for a command message it is logged with the correlation
  id and counted in `commands_refused_total`, and the saga's step timeout covers the missing
  answer. A command message the aggregate does not take is not a refusal but a poison
  message: it is raised, so the consumer runner dead-letters it.

An aggregate addressed by a derived id (payment, shipment) keeps `<name>_by_order(stream_id,
order_id, created_at)`, written by the append statement that creates it (no round trip of its
own), so `GET /<things>?order_id=`
is an index lookup that answers for any id, not only the derived one. The table is the
service's own: its schema.sql creates it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter

from shared.batch_write import BatchWork
from shared.consumer import Delivery, Handler
from shared.contract import Fact
from shared.errors import DomainError, IllegalTransition, InvalidCommand, NotFound
from shared.eventstore import ConcurrencyConflict, EventStore, IndexRows, Recorded, StreamAppend, UnitOfWork
from shared.ids import caused_by, current_context
from shared.memory_image import MemoryImage

log = logging.getLogger("shared.aggregate")

COMMANDS_REFUSED = Counter(
    "commands_refused_total",
    "Commands an aggregate refused (nothing appended, no answer); by command type and refusal code",
    ["aggregate", "type", "code"],
)
COMMANDS_REANSWERED = Counter(
    "commands_reanswered_total",
    "Duplicate commands answered again with the fact already recorded",
    ["aggregate", "type"],
)

_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


class StreamState(Protocol):
    """What the runner needs of a folded aggregate."""

    @property
    def version(self) -> int: ...

    @property
    def order_id(self) -> str: ...


C = TypeVar("C")
S = TypeVar("S", bound=StreamState)
T = TypeVar("T")


async def deciding_again(attempts: int, stream_id: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction that decides on what it read; after a lost append race, run it again
    (it reads again), `attempts` times in all (the service's CONFLICT_ATTEMPTS)."""
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except ConcurrencyConflict:
            if n == attempts:
                raise
            log.info("append lost a race, deciding again", extra={"stream_id": stream_id, "attempt": n})
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Planned(Generic[S]):
    """Commands decided on a state read in the caller's transaction, not yet written."""

    facts: list[Fact]
    #: The state after `facts`.
    state: S
    #: What to pass to `UnitOfWork.append_many`, beside the caller's other streams.
    append: StreamAppend


@dataclass(frozen=True, slots=True)
class Outcome(Generic[S]):
    """The result of handling one command that was not refused."""

    state: S
    appended: list[Recorded]
    #: The recorded fact that answers a duplicate command (None when facts were appended).
    recorded_answer: Recorded | None

    @property
    def duplicate(self) -> bool:
        return not self.appended


def facts_of(history: Iterable[Recorded]) -> Iterable[Fact]:
    """The facts of recorded envelopes, for a pure `fold`."""
    return (event.data for event in history)


@dataclass(frozen=True)
class Aggregate(Generic[C, S]):
    """One aggregate kind's pure domain plus the name its tables and metrics use.

    `name` ("order", "payment", "shipment") names the NotFound code, the `aggregate` label of
    the metrics and, with `indexed_by_order`, the lookup table `<name>_by_order`.
    `conflict_attempts` is the service's retry policy for appends that lost a race
    (CONFLICT_ATTEMPTS, ServiceSettings).
    """

    name: str
    stream_of: Callable[[C], str]
    fold: Callable[[Iterable[Fact]], S]
    evolve: Callable[[S, Fact], S]
    decide: Callable[[C, S], Sequence[Fact]]
    find_answer: Callable[[C, Sequence[Recorded]], Recorded | None] = lambda command, history: None
    indexed_by_order: bool = False
    conflict_attempts: int = 5
    #: The histories the command consumer decided on last (shared/memory_image.py).
    image: MemoryImage[list[Recorded]] = field(default_factory=MemoryImage, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _IDENT.fullmatch(self.name):
            raise ValueError(f"aggregate name {self.name!r} must be a plain SQL identifier")

    @property
    def index_table(self) -> str:
        """The order → aggregate lookup of an `indexed_by_order` aggregate (the service's schema.sql creates it)."""
        return f"{self.name}_by_order"

    # ------------------------------------------------------------------ commands

    async def execute(
        self,
        uow: UnitOfWork,
        command: C,
        *,
        causation_id: str | None = None,
        history: list[Recorded] | None = None,
    ) -> Outcome[S]:
        """Read (unless `history` is given) → fold → decide → append in `uow`.

        Raises DomainError for a refusal (nothing written) and ConcurrencyConflict when another
        writer appended first; the caller retries its whole transaction (`execute_alone`, or
        the consumer runner, which re-applies the message in a savepoint). No savepoint here:
        it would cost two round trips per command for a race that almost never happens.
        With `causation_id` (an HTTP request), the appended facts carry it and the aggregate's
        order id as correlation; otherwise the causal context of the message being handled.
        """
        stream_id = self.stream_of(command)
        if history is None:
            history = await uow.read(stream_id)
        state = self.fold(facts_of(history))
        if causation_id is None:
            return await self._decide_and_append(uow, command, stream_id, history, state)
        with caused_by(state.order_id or stream_id, causation_id):
            return await self._decide_and_append(uow, command, stream_id, history, state)

    async def execute_alone(self, store: EventStore, command: C, *, causation_id: str) -> Outcome[S]:
        """`execute` in a transaction of its own, deciding again after a lost race (HTTP commands)."""

        async def attempt() -> Outcome[S]:
            async with store.transaction() as uow:
                return await self.execute(uow, command, causation_id=causation_id)

        return await deciding_again(self.conflict_attempts, self.stream_of(command), attempt)

    def plan(self, stream_id: str, state: S, commands: Sequence[C], *, already: Sequence[Fact] = ()) -> Planned[S]:
        """Decide `commands` one after the other on `state` (after the facts `already` decided
        in this transaction), without writing: the caller appends `Planned.append` together
        with its other streams, so a decision spanning aggregates is one round trip."""
        facts = list(already)
        after = state
        for fact in facts:
            after = self.evolve(after, fact)
        for command in commands:
            for fact in self.decide(command, after):
                facts.append(fact)
                after = self.evolve(after, fact)
        return Planned(facts, after, StreamAppend(stream_id, state.version, facts))

    async def _decide_and_append(
        self, uow: UnitOfWork, command: C, stream_id: str, history: list[Recorded], state: S
    ) -> Outcome[S]:
        new_facts = self.decide(command, state)
        if not new_facts:
            return Outcome(state, [], self.find_answer(command, history))
        index = None
        if state.version == 0 and self.indexed_by_order:  # a new aggregate: its lookup row, same statement
            index = IndexRows(self.index_table, [(stream_id, self.fold(new_facts).order_id)])
        appended = await uow.append(stream_id, state.version, new_facts, index=index)
        after = self.fold(facts_of([*history, *appended]))
        return Outcome(after, appended, None)

    def consumer(self, accepts: tuple[type[C], ...]) -> Handler:
        """The batch handler of the aggregate's command topic (one causal context per message).

        `accepts`: the command types this aggregate takes; any other message is poison. The
        streams of the whole batch are read in one round trip; each command then decides on
        its stream as the earlier commands of the batch left it.
        """

        def command_of(delivery: Delivery) -> C:
            data = delivery.envelope.data
            if not isinstance(data, accepts):
                raise InvalidCommand("type", f"{self.name} takes no {delivery.envelope.type}", code="unknown_command")
            return data

        async def handle_one(
            uow: UnitOfWork, delivery: Delivery, command: C, history: list[Recorded]
        ) -> list[Recorded]:
            env = delivery.envelope
            try:
                outcome = await self.execute(uow, command, history=history)
            except InvalidCommand:
                raise
            except (IllegalTransition, NotFound) as refusal:
                stream_id, ctx, refused = self.stream_of(command), current_context(), refusal
                uow.after_commit(
                    lambda: self.record_refusal(
                        env.type,
                        refused,
                        message_id=env.id,
                        stream_id=stream_id,
                        correlation_id=ctx.correlation_id if ctx else None,
                    )
                )
                return history
            if outcome.duplicate:
                await self.reanswer(uow, env.type, outcome.recorded_answer, message_id=env.id)
            return [*history, *outcome.appended]

        async def handle(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
            # InvalidCommand → the batch is re-applied message by message, then dead-lettered.
            commands = [command_of(d) for d in deliveries]
            streams = sorted({self.stream_of(c) for c in commands})
            if isinstance(uow, BatchWork):
                histories = self._from_image(uow, streams)
            else:
                histories = await uow.read_many(streams)
            for delivery, command in zip(deliveries, commands):
                env = delivery.envelope
                stream_id = self.stream_of(command)
                with caused_by(env.correlation_id or env.subject, env.id, env.type):
                    histories[stream_id] = await handle_one(uow, delivery, command, histories[stream_id])
            uow.after_commit(lambda: self.image.put_all(histories))

        return handle

    def _from_image(self, uow: BatchWork, streams: Sequence[str]) -> dict[str, list[Recorded]]:
        """The batch's histories from the memory image, without a read. A stream the image does
        not hold is taken to be new (most commands create their aggregate); the one statement
        checks every version assumed here, so a stream that does exist refuses it and the batch
        is read and decided again in a transaction."""
        histories: dict[str, list[Recorded]] = {}
        for stream_id in streams:
            history = self.image.get(stream_id) or []
            uow.expect(stream_id, history[-1].sequence if history else 0)
            histories[stream_id] = history
        return histories

    def record_refusal(
        self,
        command_type: str,
        refusal: DomainError,
        *,
        message_id: str,
        stream_id: str,
        correlation_id: str | None = None,
    ) -> None:
        """Refusals of command messages are answered by silence, so they must be visible."""
        COMMANDS_REFUSED.labels(aggregate=self.name, type=command_type, code=refusal.code).inc()
        ctx = current_context()
        log.warning(
            "command refused",
            extra={
                "command_type": command_type,
                "message_id": message_id,
                "stream_id": stream_id,
                "code": refusal.code,
                "reason": refusal.message,
                "correlation_id": correlation_id or (ctx.correlation_id if ctx else None),
            },
        )

    async def reanswer(self, uow: UnitOfWork, command_type: str, answer: Recorded | None, *, message_id: str) -> None:
        """Publish the already-recorded answer again, with the same id."""
        if answer is None:
            log.warning(
                "duplicate command has no recorded answer to repeat",
                extra={"command_type": command_type, "message_id": message_id},
            )
            return
        await uow.republish(answer)
        ctx = current_context()

        def count() -> None:
            COMMANDS_REANSWERED.labels(aggregate=self.name, type=command_type).inc()
            log.info(
                "duplicate command answered with the recorded fact",
                extra={
                    "command_type": command_type,
                    "message_id": message_id,
                    "event_id": answer.id,
                    "correlation_id": ctx.correlation_id if ctx else None,
                },
            )

        uow.after_commit(count)

    # ------------------------------------------------------------------ queries

    async def load(self, store: EventStore, stream_id: str) -> tuple[list[Recorded], S]:
        """The stream's facts and the state they fold to; NotFound if there are none."""
        history = await store.read(stream_id)
        if not history:
            raise NotFound(f"{self.name}_not_found", f"{self.name} {stream_id} does not exist")
        return history, self.fold(facts_of(history))

    async def of_order(self, store: EventStore, order_id: str) -> list[S]:
        """Every aggregate of this kind the order has, oldest first (indexed aggregates only)."""
        async with store.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT stream_id FROM {self.index_table} WHERE order_id = $1 ORDER BY created_at, stream_id",
                order_id,
            )
            histories = await store.read_many([row["stream_id"] for row in rows], conn=conn)
        return [self.fold(facts_of(h)) for h in histories.values() if h]

"""Runs one kernel ConsumerRunner per live view generation, and switches rebuilt generations in.

Each generation has its own consumer name (= Kafka group id, inbox and stored-position key),
so a rebuild reads the topics from offset 0 while the current generation's consumer keeps
going. When the building generation has caught up, `generations.try_switch` flips it to
current in one transaction; on the next tick every replica stops the retired generation's
consumer and the rebuilt generation's consumer simply carries on as the live one.

The kernel's `ServiceDefinition.consumers` are fixed at start-up, which is why this is a
background loop that owns its runners instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from services.query import generations, store
from services.query.metrics import CURRENT_GENERATION, FACTS_APPLIED, FEED_HELD, REBUILD_PROGRESS, SWITCHES
from services.query.notify import Notifications
from services.query.projection import project
from services.query.settings import QuerySettings
from shared.batch_write import BatchWork
from shared.consumer import ConsumerRunner, Delivery, Handler
from shared.eventstore import UnitOfWork
from shared.runtime import Runtime, consumer_settings_of

log = logging.getLogger("services.query.supervisor")


def batch_handler(generation: int) -> Handler:
    """The ConsumerRunner handler of one generation: a whole poll in one statement. The
    deliveries' data is already the current version of its contract type."""
    feeds = True  # the generation was current at its last batch (or none yet): order facts for the feed

    async def handle(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
        nonlocal feeds
        batch = project(d.envelope for d in deliveries)
        if isinstance(uow, BatchWork):  # the claim and this write in one statement, if the state is as last seen
            if batch.facts:
                expected = "current" if feeds else "building"
                write = uow.defer(store.apply_in_batch_statement(generation, batch, feed=feeds))
                uow.after_commit(lambda: _count(expected, len(batch.facts), uow.read_back(write)))
            return
        state, held = await store.apply_batch(uow.conn, generation, batch, feed=feeds)
        if state not in generations.LIVE_STATES:
            return  # commands only, or retired or dropped under us: its consumer is being stopped
        feeds = state == "current"
        _count(state, len(batch.facts), held)

    return handle


def _count(state: str, facts: int, held: int) -> None:
    FACTS_APPLIED.labels(state=state).inc(facts)
    if held:
        FEED_HELD.inc(held)


@dataclass
class _Running:
    """The group members (ConsumerRunners sharing one consumer name) of one generation."""

    runners: list[ConsumerRunner]
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]


class GenerationSupervisor:
    def __init__(self, settings: QuerySettings, notifications: Notifications) -> None:
        self.settings = settings
        self.notifications = notifications
        self.runners: dict[int, _Running] = {}
        self.ticked = False  # the live generations' consumers have been started once
        self.building = False  # a rebuild is catching up: its switch is polled for

    def readiness(self) -> str | None:
        """The kernel's readiness check of the view consumers (every live generation's)."""
        if not self.ticked:
            return "view generations not started yet"
        waiting = sorted({r.name for running in self.runners.values() for r in running.runners if not r.assigned})
        return "not assigned yet: " + ", ".join(waiting) if waiting else None

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        """Background loop (ServiceDefinition.loops)."""
        try:
            while not stop.is_set():
                waiter = self.notifications.generations.waiter()
                try:
                    await self.tick(runtime)
                    self.ticked = True
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("generation supervision failed", extra={"error": repr(exc)})
                stopping = asyncio.ensure_future(stop.wait())
                woken = asyncio.ensure_future(waiter.wait())
                try:
                    await asyncio.wait({stopping, woken}, timeout=self._pause(), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    woken.cancel()
        finally:
            await asyncio.gather(*(self._stop(n) for n in list(self.runners)), return_exceptions=True)

    def _pause(self) -> float:
        """Until the next look: GENERATION_POLL_S while a rebuild catches up (its switch is
        polled) or the listener is down; otherwise only a NOTIFY (rebuild start, switch) or
        the idle fallback wakes the supervisor, so an idle service does not commit every tick."""
        if self.building or not self.notifications.listening:
            return self.settings.generation_poll_s
        return self.settings.generation_idle_poll_s

    async def tick(self, runtime: Runtime) -> None:
        async with runtime.pool.acquire() as conn:
            live = await generations.generations(conn, generations.LIVE_STATES)
        self.building = any(g.state == "building" for g in live)
        wanted = {g.generation: g for g in live}
        for number in list(self.runners):
            if number not in wanted:
                await self._stop(number)
        for number, generation in wanted.items():
            if number not in self.runners:
                self._start(runtime, generation)
            if generation.state == "current":
                CURRENT_GENERATION.set(number)
        for generation in live:
            if generation.state == "building" and await self._maybe_switch(runtime, generation):
                async with runtime.pool.acquire() as conn:
                    dropped = await generations.drop_retired(conn, self.settings.retained_generations)
                log.info("view generation switched", extra={"generation": generation.generation, "dropped": dropped})
                SWITCHES.inc()
                await self.tick(runtime)  # stop the retired generation's consumer now
                return

    async def _maybe_switch(self, runtime: Runtime, generation: generations.Generation) -> bool:
        if generation.target is None:
            return False
        async with runtime.pool.acquire() as conn:
            position = await generations.positions(conn, generation.consumer)
            total = sum(generation.target.values())
            REBUILD_PROGRESS.set(generations.applied(position, generation.target) / total if total else 1.0)
            if not generations.reached(position, generation.target):
                return False  # cheap check first: the switch itself pauses every batch briefly
            return await generations.try_switch(
                conn,
                generation.generation,
                self.settings.topics,
                timedelta(seconds=self.settings.rebuild_switch_grace_s),
            )

    def _start(self, runtime: Runtime, generation: generations.Generation) -> None:
        """Start VIEW_CONSUMERS members of the generation's group: Kafka splits the partitions
        between them, so one member's Python work overlaps another's database round trips."""
        settings = runtime.settings
        consumer_settings = consumer_settings_of(settings)
        stop = asyncio.Event()
        runners, tasks = [], []
        for member in range(self.settings.view_consumers):
            runner = ConsumerRunner(
                name=generation.consumer,
                topics=self.settings.topics,
                store=runtime.store,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                handler=batch_handler(generation.generation),
                settings=consumer_settings,
                one_statement=True,
            )
            runners.append(runner)
            tasks.append(asyncio.create_task(runner.run(stop), name=f"consumer:{generation.consumer}:{member}"))
        self.runners[generation.generation] = _Running(runners, stop, tasks)
        log.info(
            "view consumers started",
            extra={"generation": generation.generation, "consumer": generation.consumer, "members": len(runners)},
        )

    async def _stop(self, number: int) -> None:
        running = self.runners.pop(number, None)
        if running is None:
            return
        running.stop.set()
        done, pending = await asyncio.wait(running.tasks, timeout=30)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "view consumer ended with an error", extra={"generation": number, "error": repr(task.exception())}
                )
        log.info("view consumers stopped", extra={"generation": number})

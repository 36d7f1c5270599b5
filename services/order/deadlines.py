"""The saga deadline scheduler: a background loop that fires StepTimedOut for due sagas.

Deadlines are data: each saga records them as `SagaDeadlineSet` facts and the service
mirrors the current one in `saga_deadlines` (same transaction), so they survive restarts and
a scheduler that was down simply fires late. Every replica runs this loop; `FOR UPDATE SKIP
LOCKED` keeps them off each other's sagas, and correctness does not depend on it anyway: a
timeout before the deadline, or a second one for the same deadline, decides nothing.

Between passes the loop sleeps until the earliest deadline (at least SAGA_TICK_S), and at most
SAGA_STEP_TIMEOUT_S: every deadline is set to "now + the step timeout" when it is written, so a
saga placed while the loop sleeps is never due before it wakes. An idle service (no saga
waiting) thus looks once per step timeout instead of every tick.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncpg
from prometheus_client import Counter

from services.order import handlers
from services.order.settings import OrderSettings
from shared.contract import utc_now
from shared.eventstore import EventStore
from shared.runtime import BackgroundLoop, Runtime

log = logging.getLogger("services.order.deadlines")

DEADLINES_FIRED = Counter("saga_deadlines_fired_total", "Due saga deadlines the scheduler handled")


async def fire_due(store: EventStore, *, limit: int, now: datetime | None = None) -> int:
    """Handle up to `limit` sagas due at `now`, one transaction each; how many were fired.

    Sagas whose handling failed are skipped for the rest of the pass and not counted, so a
    broken saga neither blocks the others nor makes the loop spin.
    """
    moment = now or utc_now()
    taken: list[str] = []
    fired = 0
    while len(taken) < limit:
        result = await handlers.time_out_next(store, moment, taken)
        if result is None:
            break
        taken.append(result.order_id)
        if result.ok:
            fired += 1
            DEADLINES_FIRED.inc()
    return fired


async def next_deadline(pool: asyncpg.Pool) -> datetime | None:
    """The earliest deadline of any saga (due or not); None when no saga waits."""
    due: datetime | None = await pool.fetchval("SELECT min(deadline) FROM saga_deadlines")
    return due


def pause_until(due: datetime | None, now: datetime, settings: OrderSettings) -> float:
    """Seconds to sleep before the next pass: until `due`, within [tick, step timeout]."""
    if due is None:
        return settings.saga_step_timeout_s
    return min(max((due - now).total_seconds(), settings.saga_tick_s), settings.saga_step_timeout_s)


def deadline_loop(settings: OrderSettings) -> BackgroundLoop:
    """The loop the service definition runs: a pass at the earliest deadline (at once while busy)."""

    async def saga_deadlines(runtime: Runtime, stop: asyncio.Event) -> None:
        while not stop.is_set():
            fired = 0
            try:
                fired = await fire_due(runtime.store, limit=settings.saga_deadline_batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again next tick
                log.warning("deadline pass failed", extra={"error": repr(exc)})
            if fired >= settings.saga_deadline_batch:
                continue  # a backlog: keep going without waiting
            pause = settings.saga_tick_s
            try:
                pause = pause_until(await next_deadline(runtime.store.pool), utc_now(), settings)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("next deadline unknown", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(stop.wait(), timeout=pause)
            except TimeoutError:
                pass

    return saga_deadlines

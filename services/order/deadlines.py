"""The saga deadline scheduler: a background loop that fires StepTimedOut for due sagas.

Deadlines are data: each saga records them as `SagaDeadlineSet` facts and the service
mirrors the current one in `saga_deadlines` (same transaction), so they survive restarts and
a scheduler that was down simply fires late. Every replica runs this loop; `FOR UPDATE SKIP
LOCKED` keeps them off each other's sagas, and correctness does not depend on it anyway: a
timeout before the deadline, or a second one for the same deadline, decides nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

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


def deadline_loop(settings: OrderSettings) -> BackgroundLoop:
    """The loop the service definition runs: a pass every SAGA_TICK_S (at once while busy)."""

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
            try:
                await asyncio.wait_for(stop.wait(), timeout=settings.saga_tick_s)
            except TimeoutError:
                pass

    return saga_deadlines

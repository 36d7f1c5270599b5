"""The bound of the causal SSE feed: a background loop that sends held-back facts whose cause
did not reach the feed within FEED_CAUSAL_WAIT_MS, marked `causalgap`.

Facts held back for a cause are released by the batch that appends the cause (views.sql), so
this loop only handles causes that never come, or come late. It sleeps until the oldest held
fact is due, or for a quarter of the bound when none is held: a fact is sent between the
bound and 1.25 times the bound after it was held. Every replica runs it; the feed lock makes
concurrent releases harmless, and the held facts are in PostgreSQL, so a restart loses none.
"""

from __future__ import annotations

import asyncio
import logging

from services.query import store
from services.query.metrics import FEED_CAUSAL_GAPS
from services.query.settings import QuerySettings
from shared.runtime import Runtime

log = logging.getLogger("services.query.feed")

MIN_POLL_S = 0.05  # the loop never spins faster than this, whatever the bound


class CausalGapReleaser:
    """`ServiceDefinition.loops` entry: sends overdue held-back facts, marked."""

    def __init__(self, settings: QuerySettings) -> None:
        self.wait_ms = settings.feed_causal_wait_ms
        self.poll_s = max(self.wait_ms / 4000, MIN_POLL_S)

    async def tick(self, runtime: Runtime) -> float:
        """Release what is due; the seconds to sleep before the next look."""
        async with runtime.pool.acquire() as conn:
            released = await store.release_overdue(conn, self.wait_ms)
            due_in = await store.next_release_in(conn, self.wait_ms)
        if released:
            FEED_CAUSAL_GAPS.inc(released)
            log.info("facts sent without their cause past the bound", extra={"released": released})
        if due_in is None:
            return self.poll_s
        return min(max(due_in, MIN_POLL_S), self.poll_s)

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                pause = await self.tick(runtime)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("releasing held-back feed facts failed", extra={"error": repr(exc)})
                pause = self.poll_s
            try:
                await asyncio.wait_for(stop.wait(), timeout=pause)
            except TimeoutError:
                pass

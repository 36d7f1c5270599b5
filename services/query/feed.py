"""The bound of the causal SSE feed: a background loop that sends held-back facts whose cause
did not reach the feed within FEED_CAUSAL_WAIT_MS, marked `causalgap`.

Facts held back for a cause are released by the batch that appends the cause (views.sql), so
this loop only handles causes that never come, or come late. It sleeps until the oldest held
fact is due; when none is held it waits for a view batch's NOTIFY (only a batch can hold a
fact), looking at most once per quarter of the bound: a fact is sent between the bound and
1.25 times the bound after it was held, and an idle service runs no statement at all. Every replica runs it; the feed lock makes
concurrent releases harmless, and the held facts are in PostgreSQL, so a restart loses none.
"""

from __future__ import annotations

import asyncio
import logging

from services.query import store
from services.query.metrics import FEED_CAUSAL_GAPS
from services.query.notify import Notifications
from services.query.settings import QuerySettings
from shared.runtime import Runtime

log = logging.getLogger("services.query.feed")

MIN_POLL_S = 0.05  # the loop never spins faster than this, whatever the bound
IDLE_FALLBACK_S = 30.0  # nothing held and no NOTIFY: look anyway this often (a lost listener)


class CausalGapReleaser:
    """`ServiceDefinition.loops` entry: sends overdue held-back facts, marked."""

    def __init__(self, settings: QuerySettings, notifications: Notifications) -> None:
        self.wait_ms = settings.feed_causal_wait_ms
        self.poll_s = max(self.wait_ms / 4000, MIN_POLL_S)
        self.notifications = notifications

    async def tick(self, runtime: Runtime) -> float | None:
        """Release what is due; the seconds to sleep before the next look (None: nothing held)."""
        async with runtime.pool.acquire() as conn:
            released = await store.release_overdue(conn, self.wait_ms)
            due_in = await store.next_release_in(conn, self.wait_ms)
        if released:
            FEED_CAUSAL_GAPS.inc(released)
            log.info("facts sent without their cause past the bound", extra={"released": released})
        if due_in is None:
            return None
        return min(max(due_in, MIN_POLL_S), self.poll_s)

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            batch = self.notifications.views.waiter()  # before the look: a later batch fires it
            looked = loop.time()
            try:
                pause = await self.tick(runtime)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("releasing held-back feed facts failed", extra={"error": repr(exc)})
                pause = self.poll_s
            if pause is None and not self.notifications.listening:
                pause = self.poll_s  # no NOTIFY to wait for: look again as before
            elif pause is None:
                if await _stopped_or_fired(stop, batch, IDLE_FALLBACK_S):
                    return
                pause = looked + self.poll_s - loop.time()  # at most one look per poll_s
            if pause > 0 and await _stopped_or_fired(stop, None, pause):
                return


async def _stopped_or_fired(stop: asyncio.Event, fired: asyncio.Event | None, timeout: float) -> bool:
    """Wait until `stop`, `fired` or the timeout; True when stopped."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, fired) if e is not None]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return stop.is_set()

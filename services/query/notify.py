"""Wake-ups from PostgreSQL LISTEN/NOTIFY: one listening connection per process, many waiters.

Every batch transaction NOTIFYs `query_views` (delivered at commit, to every replica), so
`/stream` and `?min_version=` react to new facts at once instead of polling; a rebuild start
or a generation switch NOTIFYs `query_generations` for the supervisor. Waiters also use a
timeout, so a lost listener connection degrades to polling, never to a hang.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from services.query.generations import GENERATIONS_CHANNEL
from services.query.store import VIEWS_CHANNEL
from shared.db import connect
from shared.runtime import Runtime

log = logging.getLogger("services.query.notify")


class Signal:
    """A broadcast: `waiter()` before checking the state, then `wait(waiter, timeout)`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> asyncio.Event:
        return self._event

    @staticmethod
    async def wait(waiter: asyncio.Event, timeout: float) -> bool:
        """True if fired within `timeout` seconds."""
        if timeout <= 0:
            return waiter.is_set()
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
            return True
        except TimeoutError:
            return False


class Notifications:
    def __init__(self) -> None:
        self.views = Signal()
        self.generations = Signal()
        self.listening = False

    def _on_notify(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        (self.generations if channel == GENERATIONS_CHANNEL else self.views).fire()

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        """Background loop: keep one LISTEN connection; reconnect with backoff when it drops."""
        backoff = 0.2
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await connect(runtime.settings.database_url)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(VIEWS_CHANNEL, self._on_notify)
                await conn.add_listener(GENERATIONS_CHANNEL, self._on_notify)
                self.listening = True
                backoff = 0.2
                # Whatever happened while we were not listening: let everyone re-check.
                self.views.fire()
                self.generations.fire()
                stopping = asyncio.ensure_future(stop.wait())
                dropped = asyncio.ensure_future(lost.wait())
                try:
                    await asyncio.wait({stopping, dropped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    dropped.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection failed", extra={"error": repr(exc)})
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), timeout=5)
                    except Exception:
                        conn.terminate()
            if not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

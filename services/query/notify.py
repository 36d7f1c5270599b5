"""Wake-ups from PostgreSQL LISTEN/NOTIFY: one listening connection per process, many waiters.

Every batch transaction of the current views NOTIFYs `query_views` (delivered at commit, to every
replica) naming the batch's orders, so `/stream` and `?min_version=` react to new facts at once
instead of polling, and a `min_version` waiter re-reads only when its own order changed; a
rebuild start or a generation switch NOTIFYs `query_generations` for the supervisor. Waiters also use a
timeout, so a lost listener connection degrades to polling, never to a hang.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson

from services.query.generations import GENERATIONS_CHANNEL
from services.query.store import VIEWS_CHANNEL
from shared.db import connect
from shared.runtime import Runtime

log = logging.getLogger("services.query.notify")


def changed_orders(payload: str) -> list[str] | None:
    """The order ids a views NOTIFY names (views.sql, query_feed_append: a JSON array of the
    batch's order ids); None when it names none (too many for a payload, a feed release): then
    any order may have changed."""
    if not payload.startswith("["):
        return None
    try:
        ids = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else None


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
        self._orders: dict[str, set[asyncio.Event]] = {}  # order id -> its waiters' events

    def order_waiter(self, order_id: str) -> asyncio.Event:
        """An event set by the next commit that changed `order_id`'s views, or may have (take it
        before reading; `forget` it when done)."""
        event = asyncio.Event()
        self._orders.setdefault(order_id, set()).add(event)
        return event

    def forget(self, order_id: str, event: asyncio.Event) -> None:
        waiting = self._orders.get(order_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._orders[order_id]

    def _wake_orders(self, order_ids: list[str] | None) -> None:
        """Set the waiters of these orders (None: of every order)."""
        woken = self._orders.values() if order_ids is None else (self._orders.get(i, ()) for i in order_ids)
        for waiting in woken:
            for event in waiting:
                event.set()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == GENERATIONS_CHANNEL:
            self.generations.fire()
            self._wake_orders(None)  # a switch changes every order's current views
            return
        self.views.fire()
        self._wake_orders(changed_orders(payload))

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
                self._wake_orders(None)
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

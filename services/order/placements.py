"""Group commit of POST /orders: placements that arrive while others are being written are
written together next, in one transaction (`handlers.place_orders`).

Why: a placement written alone costs five round trips (BEGIN, the customer's lock, the key
store, the statement, COMMIT) and a commit; under load that was most of the order service's
statements per saga and what kept it from keeping up. Batching costs no latency when idle (a
lone request is written at once, as a batch of one) and grows with the load by itself: while a
batch is in flight the next requests wait for it, then go together.

One request's failure never fails the others: a batch that raises is written again one
placement at a time, so each request gets its own answer (its own 503, 409 or 201).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from services.order.handlers import Placement
from services.order.idempotency import Placed

log = logging.getLogger("services.order.placements")

PlaceMany = Callable[[Sequence[Placement]], Awaitable[list[Placed]]]


class PlacementQueue:
    """Writes queued placements in batches of at most `max_batch`, one batch at a time."""

    def __init__(self, place_many: PlaceMany, *, max_batch: int = 100) -> None:
        self._place_many = place_many
        self.max_batch = max_batch
        self._waiting: list[tuple[Placement, asyncio.Future[Placed]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # batches written (a batch written again alone counts once)

    async def place(self, placement: Placement) -> Placed:
        """Queue the placement; its answer once the batch it joined has committed."""
        answer: asyncio.Future[Placed] = asyncio.get_running_loop().create_future()
        self._waiting.append((placement, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="order-placements")
        # A request that goes away (client gone, shutdown) does not take the batch with it.
        return await asyncio.shield(answer)

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            self.batches += 1
            try:
                answers = await self._place_many([p for p, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], error=exc)
                    continue
                log.info("a batch of placements failed; each is placed alone", extra={"error": repr(exc)})
                for p, answer in batch:
                    try:
                        [placed] = await self._place_many([p])
                    except Exception as alone:
                        _settle(answer, error=alone)
                    else:
                        _settle(answer, placed)
                continue
            for (_, answer), placed in zip(batch, answers):
                _settle(answer, placed)


def _settle(
    answer: asyncio.Future[Placed], placed: Placed | None = None, *, error: BaseException | None = None
) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        assert placed is not None
        answer.set_result(placed)

"""Group commit of placements (services/order/placements.py): a lone request is written at once,
requests arriving while a batch is in flight go together next, and one request's failure is
never another's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.order.handlers import Placement, placement
from services.order.idempotency import Placed
from services.order.placements import PlacementQueue
from services.order.views import PlaceOrderRequest
from tests.integration.order_support import order_body


def placements(n: int) -> list[Placement]:
    return [
        placement(PlaceOrderRequest.model_validate(order_body()).to_command(f"order-{i}"), f"req-{i}") for i in range(n)
    ]


class Writer:
    """A fake `place_orders`: records each batch, waits for the test's go, refuses `bad` ids."""

    def __init__(self, bad: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.go = asyncio.Event()
        self.started = asyncio.Event()
        self.bad = bad

    async def __call__(self, batch: Sequence[Placement]) -> list[Placed]:
        ids = [p.command.order_id for p in batch]
        self.batches.append(ids)
        self.started.set()
        await self.go.wait()
        if self.bad & set(ids):
            raise RuntimeError(f"refused {sorted(self.bad & set(ids))}")
        return [p.answer for p in batch]


async def test_a_lone_placement_is_written_at_once_as_a_batch_of_one() -> None:
    writer = Writer()
    writer.go.set()
    [p] = placements(1)
    assert await PlacementQueue(writer).place(p) == p.answer
    assert writer.batches == [["order-0"]]


async def test_placements_arriving_while_a_batch_is_written_go_together_next() -> None:
    writer = Writer()
    queue = PlacementQueue(writer, max_batch=3)
    first, *rest = placements(6)
    asking = [asyncio.create_task(queue.place(first))]
    await writer.started.wait()  # the first batch is in flight: the next ones wait for it
    asking += [asyncio.create_task(queue.place(p)) for p in rest]
    await asyncio.sleep(0)
    writer.go.set()
    answers = await asyncio.gather(*asking)
    assert answers == [p.answer for p in [first, *rest]], "each request gets its own answer"
    assert writer.batches == [["order-0"], ["order-1", "order-2", "order-3"], ["order-4", "order-5"]]


async def test_a_failed_batch_is_written_again_one_by_one_so_only_the_bad_one_fails() -> None:
    writer = Writer(bad=frozenset({"order-2"}))
    queue = PlacementQueue(writer)
    first, *rest = placements(4)
    asking = [asyncio.create_task(queue.place(first))]
    await writer.started.wait()
    asking += [asyncio.create_task(queue.place(p)) for p in rest]
    await asyncio.sleep(0)
    writer.go.set()
    answers = await asyncio.gather(*asking, return_exceptions=True)
    assert [type(a).__name__ for a in answers] == ["Placed", "Placed", "RuntimeError", "Placed"]
    assert writer.batches == [["order-0"], ["order-1", "order-2", "order-3"], ["order-1"], ["order-2"], ["order-3"]]


async def test_a_caller_that_goes_away_does_not_take_the_batch_with_it() -> None:
    writer = Writer()
    queue = PlacementQueue(writer)
    gone, stays = placements(2)
    leaving = asyncio.create_task(queue.place(gone))
    await writer.started.wait()
    staying = asyncio.create_task(queue.place(stays))
    await asyncio.sleep(0)
    leaving.cancel()
    writer.go.set()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == stays.answer
    assert writer.batches == [["order-0"], ["order-1"]], "the departed request's batch was written all the same"

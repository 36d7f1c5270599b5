"""POST /admin/rebuild: replay the event topics from offset 0 into a fresh view generation.

Design (see also views.sql, generations.py and supervisor.py):
1. Capture the topics' end offsets now (the target), create schema `views_g<N+1>` and register
   generation N+1 as `building` with a fresh consumer name (= fresh Kafka group, inbox and
   positions). Answer 202 with the rebuild id.
2. Every replica's supervisor runs that generation's consumer from offset 0; the current
   generation keeps serving reads and its consumer keeps applying new facts.
3. Once the new generation's stored positions reach the target (and, within a grace period,
   are not behind the current one's), one transaction flips `current` to it. Its consumer
   simply continues as the live one; the old one is stopped and, later, dropped.
The projection is order-independent and idempotent, and the contract codec upcasts every
older fact on the topics, so the rebuilt views equal the incrementally built ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.query import generations
from services.query.context import context_of, pool_of
from shared.auth import Role, require_role
from shared.kafka import make_admin, make_consumer
from shared.rest import error_response, error_responses

#: Rebuilding and inspecting generations is an admin's job (admin token; others → 403).
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_role(Role.ADMIN))])

CLIENT_ID = "query.rebuild"


async def end_offsets(bootstrap_servers: str, topics: Sequence[str]) -> generations.Offsets:
    """The next offset of every partition of the topics (read_committed: the stable end)."""
    admin = make_admin(bootstrap_servers, client_id=CLIENT_ID)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    tps = [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t.get("error_code", 0) == 0
        for p in t.get("partitions", ())
    ]
    if not tps:
        return {}
    consumer = make_consumer(bootstrap_servers, group_id=None, client_id=CLIENT_ID)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}
    finally:
        await consumer.stop()


class RebuildStatus(BaseModel):
    rebuild_id: uuid.UUID
    generation: int
    state: str
    done: bool
    created_at: datetime
    caught_up_at: datetime | None
    switched_at: datetime | None
    target_offsets: dict[str, dict[str, int]]
    target_total: int
    applied_total: int
    progress: float


class GenerationStatus(BaseModel):
    generation: int
    state: str
    consumer: str
    rebuild_id: uuid.UUID | None
    created_at: datetime
    switched_at: datetime | None
    retired_at: datetime | None
    positions: dict[str, dict[str, int]]


def _status(generation: generations.Generation, position: generations.Offsets) -> dict[str, Any]:
    target = generation.target or {}
    total = sum(target.values())
    applied = generations.applied(position, target)
    return {
        "rebuild_id": generation.rebuild_id,
        "generation": generation.generation,
        "state": generation.state,
        "done": generation.switched_at is not None,
        "created_at": generation.created_at,
        "caught_up_at": generation.caught_up_at,
        "switched_at": generation.switched_at,
        "target_offsets": generations.offsets_by_topic(target),
        "target_total": total,
        "applied_total": applied,
        "progress": round(applied / total, 4) if total else 1.0,
    }


@router.post(
    "/rebuild",
    status_code=202,
    response_model=RebuildStatus,
    summary="Rebuild the views by replaying the event topics; the old views serve until the switch",
    responses=error_responses(409, 503),
)
async def start_rebuild(request: Request) -> Any:
    """409 `rebuild_in_progress` (with that rebuild's `rebuild_id` and `generation`) while
    another rebuild builds; 503 `kafka_unavailable` when the end offsets cannot be read
    (nothing was started)."""
    ctx = context_of(request)
    try:
        target = await asyncio.wait_for(end_offsets(ctx.settings.kafka_bootstrap_servers, ctx.settings.topics), 30)
    except Exception as exc:  # nothing was started: say why and let the caller retry
        return error_response(
            503, "kafka_unavailable", f"cannot read the topics' end offsets: {exc!r}", headers={"Retry-After": "1"}
        )
    async with pool_of(request).acquire() as conn:
        try:
            generation = await generations.start_rebuild(conn, ctx.settings.query_consumer_prefix, target)
        except generations.RebuildInProgress as exc:
            return error_response(
                409,
                "rebuild_in_progress",
                str(exc),
                rebuild_id=str(exc.generation.rebuild_id),
                generation=exc.generation.generation,
            )
    ctx.notifications.generations.fire()  # this replica starts the consumer without waiting for NOTIFY
    return JSONResponse(
        RebuildStatus.model_validate(_status(generation, {})).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/admin/rebuild/{generation.rebuild_id}"},
    )


@router.get(
    "/rebuild/{rebuild_id}",
    response_model=RebuildStatus,
    summary="A rebuild's progress: offsets applied of the target captured at its start; done once switched",
    responses=error_responses(404),
)
async def rebuild_status(request: Request, rebuild_id: uuid.UUID) -> Any:
    async with pool_of(request).acquire() as conn:
        generation = await generations.generation_by_rebuild(conn, rebuild_id)
        if generation is None:
            return error_response(404, "rebuild_not_found", f"no rebuild {rebuild_id}")
        position = await generations.positions(conn, generation.consumer)
    return _status(generation, position)


@router.get(
    "/generations",
    response_model=list[GenerationStatus],
    summary="All view generations with their consumers' stored positions",
)
async def list_generations(request: Request) -> Any:
    out = []
    async with pool_of(request).acquire() as conn:
        for g in await generations.generations(conn):
            out.append(
                {
                    "generation": g.generation,
                    "state": g.state,
                    "consumer": g.consumer,
                    "rebuild_id": g.rebuild_id,
                    "created_at": g.created_at,
                    "switched_at": g.switched_at,
                    "retired_at": g.retired_at,
                    "positions": generations.offsets_by_topic(await generations.positions(conn, g.consumer)),
                }
            )
    return out

"""Operations views for the admin screens: consumer lag per group and the dead letters.

Both read Kafka without joining a group (shared/consumer_lag.py, shared/dead_letter_reader.py,
the same code `python -m infra dlq` uses), so looking never moves anyone's offsets. Admin only, like the rebuild.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from services.query.context import context_of
from shared.auth import Role, require_role
from shared.consumer_lag import consumer_lag
from shared.contract import DLQ_TOPICS
from shared.dead_letter_reader import DlqError, read_dead_letters
from shared.rest import error_response, error_responses

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_role(Role.ADMIN))])

READ_TIMEOUT_S = 20.0


class PartitionLagView(BaseModel):
    topic: str
    partition: int
    committed_offset: int
    end_offset: int
    lag: int


class GroupLagView(BaseModel):
    group: str
    lag: int
    partitions: list[PartitionLagView]


class ConsumersView(BaseModel):
    note: str
    groups: list[GroupLagView]


class DeadLetterView(BaseModel):
    dlq: str
    partition: int
    offset: int
    key: str | None
    id: str | None = None
    type: str | None = None
    source: str | None = None
    subject: str | None = None
    consumer: str | None = None
    attempts: int | None = None
    error: str | None = None
    first_failure: str | None = None
    last_failure: str | None = None
    origin: dict[str, Any] | None = None


class DeadLettersView(BaseModel):
    topics: list[str]
    items: list[DeadLetterView]


LAG_NOTE = (
    "lag = end offset - the group's committed Kafka offset; consumers commit to Kafka every few "
    "seconds (their true positions are in their databases), so it may over-state, never under-state"
)


@router.get(
    "/consumers",
    response_model=ConsumersView,
    summary="Consumer lag per consumer group (committed offset vs end offset per partition)",
    responses=error_responses(403, 503),
)
async def get_consumers(request: Request) -> Any:
    bootstrap = context_of(request).settings.kafka_bootstrap_servers
    try:
        groups = await asyncio.wait_for(consumer_lag(bootstrap), READ_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        return error_response(
            503, "kafka_unavailable", f"could not read the consumer groups: {exc!r}", headers={"Retry-After": "1"}
        )
    return ConsumersView(
        note=LAG_NOTE,
        groups=[
            GroupLagView(
                group=g.group,
                lag=g.lag,
                partitions=[
                    PartitionLagView(
                        topic=p.topic, partition=p.partition, committed_offset=p.committed, end_offset=p.end, lag=p.lag
                    )
                    for p in g.partitions
                ],
            )
            for g in groups
        ],
    )


@router.get(
    "/dlq",
    response_model=DeadLettersView,
    summary="Every dead letter of every DLQ topic, oldest first per topic",
    responses=error_responses(403, 503),
)
async def get_dead_letters(request: Request) -> Any:
    bootstrap = context_of(request).settings.kafka_bootstrap_servers
    topics = list(DLQ_TOPICS)
    try:
        records = await read_dead_letters(bootstrap, topics, timeout_s=READ_TIMEOUT_S)
    except DlqError as exc:
        return error_response(503, "kafka_unavailable", str(exc), headers={"Retry-After": "1"})
    return DeadLettersView(topics=topics, items=[DeadLetterView(**r.as_json()) for r in records])

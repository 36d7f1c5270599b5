"""Operations for the admin screens: consumer lag per group, the dead letters, and resubmitting one.

Lag and dead letters are read from Kafka without joining a group (shared/consumer_lag.py,
shared/dead_letter_topics.py, the same code `python -m infra dlq` uses), so looking never moves
anyone's offsets. A replay produces the dead letter's original message to its topic and nothing
else (no database write in the request path); the consumers' inboxes make it take effect once.
Admin only, like the rebuild.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from services.query.context import context_of
from shared.auth import Role, require_role
from shared.consumer_lag import consumer_lag
from shared.contract import DLQ_TOPICS
from shared.dead_letter_topics import DeadLetterNotFound, DlqError, read_dead_letters, replay
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


class ReplayRequest(BaseModel):
    topic: str = Field(
        min_length=1, max_length=249, description="the DLQ topic (`payment.commands.dlq`) or its source topic"
    )
    id: str = Field(min_length=1, max_length=200, description="the dead-lettered message's id (`GET /admin/dlq`)")


class ReplayedView(BaseModel):
    message_id: str
    message_type: str
    dlq: str
    dlq_offset: int
    topic: str = Field(description="where the original went back to")
    partition: int
    offset: int


@router.post(
    "/dlq/replay",
    status_code=202,
    response_model=ReplayedView,
    summary="Resubmit ONE dead letter's original message to its topic, after a fix",
    description="The original key and value go back to the original topic (the latest dead letter of that id). "
    "Consumers are idempotent by message id: one that dead-lettered it handles it once; one that had "
    "handled it drops it. 404 `dead_letter_not_found`; 422 for a topic that is not a contract topic or DLQ.",
    responses=error_responses(403, 404, 422, 503),
)
async def replay_dead_letter(request: Request, body: ReplayRequest) -> Any:
    known = set(DLQ_TOPICS) | {t.removesuffix(".dlq") for t in DLQ_TOPICS}
    if body.topic not in known:
        return error_response(
            422, "unknown_topic", f"{body.topic!r} is not a topic of the contract or its DLQ", field="topic"
        )
    bootstrap = context_of(request).settings.kafka_bootstrap_servers
    try:
        done = await replay(bootstrap, body.topic, body.id, timeout_s=READ_TIMEOUT_S, client_id="query-dlq-replay")
    except DeadLetterNotFound as exc:
        return error_response(404, "dead_letter_not_found", str(exc))
    except DlqError as exc:
        return error_response(503, "kafka_unavailable", str(exc), headers={"Retry-After": "1"})
    return ReplayedView(**asdict(done))

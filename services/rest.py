"""REST shapes and helpers every service's HTTP layer shares: event listings, error bodies, causation."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.messages import RecordedEvent


def request_causation_id(header: str | None) -> str:
    """The causation id of an HTTP command: the caller's X-Request-ID if sane, else a new one."""
    if header and 0 < len(header) <= 128 and header.isprintable():
        return header
    return str(uuid.uuid4())


# ---------------------------------------------------------------------- REST shapes


class EventView(BaseModel):
    """One fact with its envelope (SPEC §3), as `GET /<things>/{id}/events` lists them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "0b5e3d1c-7a0e-4a52-9f1e-3f7c1e2d4b6a",
                    "type": "payment.authorized",
                    "stream_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
                    "version": 1,
                    "schema_version": 1,
                    "occurred_at": "2025-01-01T12:00:00.123456+00:00",
                    "correlation_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
                    "causation_id": "c2f1d3e4-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                    "data": {
                        "payment_id": "9a3c3a77-5d0b-5d1e-8a59-2b1f0f1c6e21",
                        "order_id": "5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
                        "amount_cents": 4200,
                        "currency": "EUR",
                    },
                }
            ]
        }
    )

    event_id: uuid.UUID
    type: str = Field(description="`<group>.<name>`, past tense")
    stream_id: str = Field(description="the aggregate id")
    version: int = Field(description="position in the stream: 1, 2, 3 …")
    schema_version: int
    occurred_at: datetime
    correlation_id: str = Field(description="the order id of the whole flow")
    causation_id: str = Field(description="id of the message (or HTTP request) that caused it")
    data: dict[str, Any]

    @classmethod
    def of(cls, event: RecordedEvent) -> "EventView":
        return cls(
            event_id=event.event_id,
            type=event.type,
            stream_id=event.stream_id,
            version=event.version,
            schema_version=event.schema_version,
            occurred_at=event.occurred_at,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=dict(event.data),
        )


class ErrorBody(BaseModel):
    """A refusal: stable machine code plus a human message (see services/domain_errors.py)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"code": "illegal_shipment_transition", "message": "cannot deliver a shipment that is SCHEDULED"}]}
    )

    code: str
    message: str
    field: str | None = None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the refusals an endpoint can answer with."""
    described = {
        404: "no such aggregate",
        409: "illegal transition, or lost a write race too many times",
        422: "invalid input",
    }
    return {s: {"model": ErrorBody, "description": described.get(s, "refused")} for s in statuses}

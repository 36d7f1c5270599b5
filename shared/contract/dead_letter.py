"""The value a consumer writes to `<topic>.dlq` for a message it could not process."""

from __future__ import annotations

import msgspec


class DeadLetterOrigin(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partition: int
    offset: int
    key: str | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """The original value is kept whole (base64), so it can be inspected and resubmitted."""

    consumer: str
    error: str
    failed_at: str
    origin: DeadLetterOrigin
    value_base64: str

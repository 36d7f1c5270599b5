"""The order-fulfilment saga's own facts: private to the order service's log (never published).

They are part of the contract all the same: the saga's log is kept forever and must be read
by every later version of the saga, so its facts are versioned and upcast like public ones.

`saga.step_requested` version 2 names the command it sent but no longer copies its data:
version 1 copied the whole command, the payment token included, into a fact kept forever.
`_command_named_not_copied` upcasts version 1 facts and drops the copy when they are read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from shared.contract.base import Address, Cents, Currency, Fact, Id, OrderStatus, Text, legacy_address
from shared.contract.upcasting import upcaster


class SagaFact(Fact, frozen=True, kw_only=True):
    TOPIC: ClassVar[str | None] = None


class SagaStarted(SagaFact, frozen=True, kw_only=True):
    """Version 2: the address's personal fields are sealed (copied from `order.placed`)."""

    TYPE: ClassVar[str] = "saga.started"
    VERSION: ClassVar[int] = 2

    customer_id: str = ""
    payment_id: Id
    shipment_id: Id
    amount_cents: Cents
    currency: Currency
    shipping_address: Address
    step_timeout_s: float
    started_at: datetime | None = None


@upcaster(SagaStarted.TYPE, from_version=1)
def _saga_address_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: the clear address of a v1 saga start is marked legacy text (`pd0.`)."""
    return legacy_address(data, "shipping_address")


class SagaStepRequested(SagaFact, frozen=True, kw_only=True):
    """A command was sent to a participant. `defensive`: a compensation queued behind a start
    command still in flight. `command_id` is deterministic (the saga version it was sent at)."""

    TYPE: ClassVar[str] = "saga.step_requested"
    VERSION: ClassVar[int] = 2

    command_type: Text
    target_id: Id
    command_id: Id
    defensive: bool = False
    requested_at: datetime


@upcaster(SagaStepRequested.TYPE, from_version=1)
def _command_named_not_copied(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: keep the command's type, target and id; drop its copied data (and the token)."""
    command = data.get("command") or {}
    return {
        "order_id": data.get("order_id"),
        "defensive": data.get("defensive", False),
        "command_type": command.get("type"),
        "target_id": command.get("target_id"),
        "command_id": command.get("command_id"),
        "requested_at": data.get("requested_at"),
    }


class SagaReplyReceived(SagaFact, frozen=True, kw_only=True):
    """A participant's fact moved the saga's knowledge forward."""

    TYPE: ClassVar[str] = "saga.reply_received"

    reply_type: Text
    reply_id: Id
    received_at: datetime
    reason: str | None = None
    amount_cents: int | None = None


class SagaCancelRequested(SagaFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "saga.cancel_requested"

    requested_at: datetime


class SagaTimedOut(SagaFact, frozen=True, kw_only=True):
    """`action`: `compensate` (the step failed) or `retry` (compensations asked again)."""

    TYPE: ClassVar[str] = "saga.timed_out"

    step: Text
    action: Text
    awaiting: tuple[str, ...] = ()
    deadline: datetime | None = None
    gave_up: tuple[str, ...] = ()
    at: datetime


class SagaCompensationStarted(SagaFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "saga.compensation_started"

    outcome: OrderStatus
    reason: Text


class SagaCompensationAborted(SagaFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "saga.compensation_aborted"

    reason: Text


class SagaOrderCommandIssued(SagaFact, frozen=True, kw_only=True):
    """The saga drove the Order aggregate (`command`: confirm, ship, deliver, reject, cancel)."""

    TYPE: ClassVar[str] = "saga.order_command_issued"

    command: Text
    status: OrderStatus
    payment_id: str | None = None
    shipment_id: str | None = None
    reason: str | None = None


class SagaDeadlineSet(SagaFact, frozen=True, kw_only=True):
    """When the awaited step times out; `deadline` None: nothing is awaited."""

    TYPE: ClassVar[str] = "saga.deadline_set"

    deadline: datetime | None = None
    awaiting: tuple[str, ...] = ()


class SagaCompleted(SagaFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "saga.completed"

    status: OrderStatus
    reason: str | None = None


class SagaAnomalyDetected(SagaFact, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "saga.anomaly_detected"

    anomaly: Text


SAGA_FACTS: tuple[type[SagaFact], ...] = (
    SagaStarted,
    SagaStepRequested,
    SagaReplyReceived,
    SagaCancelRequested,
    SagaTimedOut,
    SagaCompensationStarted,
    SagaCompensationAborted,
    SagaOrderCommandIssued,
    SagaDeadlineSet,
    SagaCompleted,
    SagaAnomalyDetected,
)

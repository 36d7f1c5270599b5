"""The payment service layer: thin adapters between messages/requests and the pure domain.

Commands arrive only on `payment.commands` (the saga is the client); the REST API only reads.
All command handling is `services.participant.Participant.execute`: read → fold → decide →
append in one transaction; duplicates are re-answered, refusals logged and counted.
"""
from __future__ import annotations

from typing import Any, Mapping

from services.participant import Participant
from services.payment import domain
from services.payment.domain import PaymentCommand, PaymentState
from shared.consumer import Handler
from shared.eventstore import EventStore
from shared.messages import RecordedEvent

#: Consumer group and inbox key of the command consumer (KERNEL.md naming).
COMMAND_CONSUMER = "payment.commands"

PAYMENTS: Participant[PaymentCommand, PaymentState] = Participant(
    name="payment",
    stream_of=lambda command: command.payment_id,
    fold=domain.fold,
    decide=domain.decide,
    find_answer=domain.find_answer,
)


def command_handler(store: EventStore, limit_cents: int) -> Handler:
    """Handle `payment.*` command messages with the configured authorization limit."""

    def parse(command_type: str, data: Mapping[str, Any]) -> PaymentCommand:
        return domain.command_from_message(command_type, data, limit_cents=limit_cents)

    return PAYMENTS.consumer(store, parse)


async def get_payment(store: EventStore, payment_id: str) -> PaymentState:
    """The payment's current state (NotFound → 404)."""
    _, state = await PAYMENTS.load(store, payment_id)
    return state


async def payment_events(store: EventStore, payment_id: str) -> list[RecordedEvent]:
    """The payment's facts in stream order (NotFound → 404)."""
    history, _ = await PAYMENTS.load(store, payment_id)
    return history


async def payments_of_order(store: EventStore, order_id: str) -> list[PaymentState]:
    return await PAYMENTS.of_order(store, order_id)

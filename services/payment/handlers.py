"""The payment service layer: the Payment aggregate with the service's policy bound, and its consumer.

Commands arrive only on the payment command topic (the saga is the client); the REST API only
reads. Every command goes through the kernel's `Aggregate`: read → fold → decide → append in
one transaction; a duplicate is answered again with the recorded fact, a refusal is logged and
counted, and a message that is not a payment command is dead-lettered.
"""

from __future__ import annotations

from functools import partial

from services.payment import domain
from services.payment.domain import PaymentState
from services.payment.settings import PaymentSettings
from shared.aggregate import Aggregate
from shared.consumer import Handler
from shared.contract import PAYMENT_COMMANDS, PAYMENT_COMMANDS_DECLARED, PaymentCommand

#: Consumer group and inbox key of the command consumer: named after its topic (docs/KERNEL.md).
COMMAND_CONSUMER = PAYMENT_COMMANDS

Payments = Aggregate[PaymentCommand, PaymentState]


def _payment_id(command: PaymentCommand) -> str:
    return command.payment_id


def payments(settings: PaymentSettings) -> Payments:
    """The Payment aggregate as this service runs it: its limit and retry policy from `settings`."""
    return Aggregate(
        name="payment",
        stream_of=_payment_id,
        fold=domain.fold,
        evolve=domain.evolve,
        decide=partial(domain.decide, limit_cents=settings.payment_limit_cents),
        find_answer=domain.find_answer,
        indexed_by_order=True,
        conflict_attempts=settings.conflict_attempts,
    )


def command_handler(aggregate: Payments) -> Handler:
    """The batch handler of the payment command topic."""
    return aggregate.consumer(accepts=PAYMENT_COMMANDS_DECLARED)

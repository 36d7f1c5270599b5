"""One decision under construction: the saga's facts, the commands it sends, the order commands.

`Builder.emit` records a fact and evolves the state at once, so each later step of the same
decision sees what the earlier ones did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial

from services.order.domain import (
    CancelOrder,
    ConfirmOrder,
    DeliverOrder,
    RejectOrder,
    SagaOrderCommand,
    ShipOrder,
)
from services.order.saga.state import (
    AUTHORIZE,
    CANCEL_SHIPMENT,
    CAPTURE,
    REFUND,
    SCHEDULE,
    VOID,
    SagaState,
    evolve,
)
from shared.contract import (
    AuthorizePayment,
    CancelShipment,
    CapturePayment,
    OrderStatus,
    PaymentCommand,
    RefundPayment,
    SagaFact,
    SagaOrderCommandIssued,
    SagaStepRequested,
    ScheduleShipment,
    ShippingCommand,
    VoidPayment,
)
from shared.ids import derived_id


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command for a participant, with its deterministic id (the saga version that sent it)."""

    command: PaymentCommand | ShippingCommand
    command_id: str


@dataclass(frozen=True, slots=True)
class SagaDecision:
    """What one trigger decided. The service writes all of it in one transaction: the saga's
    facts, the order's facts for `order_commands`, and `commands` to the outbox."""

    saga_facts: list[SagaFact]
    commands: list[Outgoing]
    order_commands: list[SagaOrderCommand]
    #: The saga's state after `saga_facts` (saves the caller a fold); `.deadline` to index.
    state: SagaState

    @property
    def is_empty(self) -> bool:
        return not self.saga_facts


#: How the saga's log records each order command: its name and the status it moves the order to.
_ORDER_COMMANDS: dict[type[SagaOrderCommand], tuple[str, OrderStatus]] = {
    ConfirmOrder: ("confirm", OrderStatus.CONFIRMED),
    ShipOrder: ("ship", OrderStatus.SHIPPED),
    DeliverOrder: ("deliver", OrderStatus.DELIVERED),
    RejectOrder: ("reject", OrderStatus.REJECTED),
    CancelOrder: ("cancel", OrderStatus.CANCELLED),
}


def _order_command_issued(command: SagaOrderCommand) -> SagaOrderCommandIssued:
    name, status = _ORDER_COMMANDS[type(command)]
    issued = partial(SagaOrderCommandIssued, order_id=command.order_id, command=name, status=status)
    match command:
        case ConfirmOrder():
            return issued(payment_id=command.payment_id, shipment_id=command.shipment_id)
        case ShipOrder() | DeliverOrder():
            return issued(shipment_id=command.shipment_id)
        case RejectOrder() | CancelOrder():
            return issued(reason=command.reason)


class Builder:
    """Accumulates one decision: emits saga facts and evolves the state as it goes."""

    def __init__(self, state: SagaState, now: datetime, payment_token: str | None = None) -> None:
        self.state = state
        self.now = now
        self._payment_token = payment_token
        self.facts: list[SagaFact] = []
        self.commands: list[Outgoing] = []
        self.order_commands: list[SagaOrderCommand] = []

    def emit(self, fact: SagaFact) -> None:
        self.facts.append(fact)
        self.state = evolve(self.state, fact)

    def _command(self, command_type: str) -> PaymentCommand | ShippingCommand:
        s = self.state
        reason = s.outcome_reason or "compensation"
        if command_type == AUTHORIZE:
            if self._payment_token is None:  # pragma: no cover - authorize is only issued at start
                raise RuntimeError("the authorization needs the payment token of the saga's start")
            return AuthorizePayment(
                payment_id=s.payment_id,
                order_id=s.order_id,
                amount_cents=s.amount_cents,
                currency=s.currency,
                payment_token=self._payment_token,
                customer_id=s.customer_id or None,
            )
        if command_type == CAPTURE:
            return CapturePayment(payment_id=s.payment_id, order_id=s.order_id)
        if command_type == VOID:
            return VoidPayment(payment_id=s.payment_id, order_id=s.order_id, reason=reason)
        if command_type == REFUND:
            return RefundPayment(payment_id=s.payment_id, order_id=s.order_id, reason=reason)
        if command_type == SCHEDULE:
            assert s.shipping_address is not None
            return ScheduleShipment(
                shipment_id=s.shipment_id,
                order_id=s.order_id,
                address=s.shipping_address,
                customer_id=s.customer_id or None,
            )
        if command_type == CANCEL_SHIPMENT:
            return CancelShipment(shipment_id=s.shipment_id, order_id=s.order_id, reason=reason)
        raise ValueError(command_type)  # pragma: no cover

    def issue(self, command_type: str, *, defensive: bool = False) -> None:
        """Send a command to a participant (first time or again); its fact names it, no copy."""
        command = self._command(command_type)
        # Deterministic id: the saga stream version the step_requested fact is about to get.
        command_id = derived_id(self.state.order_id, f"saga-command:{self.state.version + 1}")
        self.commands.append(Outgoing(command, command_id))
        self.emit(
            SagaStepRequested(
                order_id=self.state.order_id,
                command_type=command.TYPE,
                target_id=command.target_id,
                command_id=command_id,
                defensive=defensive,
                requested_at=self.now,
            )
        )

    def order(self, command: SagaOrderCommand) -> None:
        self.order_commands.append(command)
        self.emit(_order_command_issued(command))

    def result(self) -> SagaDecision:
        return SagaDecision(list(self.facts), list(self.commands), list(self.order_commands), self.state)

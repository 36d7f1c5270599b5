"""The order-fulfilment saga (a process manager): event-sourced and pure.

One saga per order, stream id `saga-<order_id>` (`saga_stream_id`). The service feeds it
triggers (`triggers`) and persists what it decides, all in ONE transaction of the order
database:

    decision = decide(trigger, state, now)
    #   append decision.saga_facts to saga-<order_id> (expected version = state.version),
    #   the Order aggregate's facts for decision.order_commands to the order's stream,
    #   and queue decision.commands (contract commands, each with its deterministic id);
    # then index decision.state.deadline (None = nothing awaited) for the deadline scheduler.

How it stays safe: the saga keeps *knowledge* (the furthest payment and shipment facts seen,
monotonic: `state`), a *mode* (FULFIL, or COMPENSATE towards a final REJECTED/CANCELLED with
a reason) and which commands it already *issued*; after every trigger it derives the next
steps from those (`decide`), so any interleaving of replies converges. Deadlines and what a
timeout means are in `timeouts`. A reply already seen (same id) or not advancing the knowledge
decides nothing; a repeated start or cancel decides nothing.

The saga's facts name the commands it sent (`SagaStepRequested`: type, target, id) without
copying them: the payment token lives only in the `AuthorizePayment` command.

Residual risk (documented, flagged with `SagaAnomalyDetected`): a shipment whose schedule
timed out, that is then scheduled *and* dispatched by an operator in the instant before the
queued defensive cancel reaches it, cannot be recalled; the order still ends CANCELLED.
"""

from services.order.saga.builder import Outgoing, SagaDecision
from services.order.saga.decide import decide
from services.order.saga.state import (
    DEFAULT_STEP_TIMEOUT_S,
    REASON_CANCELLED_BY_CUSTOMER,
    REASON_CAPTURE_TIMEOUT,
    REASON_PAYMENT_TIMEOUT,
    REASON_SHIPPING_TIMEOUT,
    SagaMode,
    SagaState,
    evolve,
    fold,
    payment_id_for,
    saga_stream_id,
    shipment_id_for,
)
from services.order.saga.triggers import (
    REPLY_FACTS,
    CancelRequested,
    ReplyReceived,
    SagaTrigger,
    StartSaga,
    StepTimedOut,
)

__all__ = [
    "DEFAULT_STEP_TIMEOUT_S",
    "REASON_CANCELLED_BY_CUSTOMER",
    "REASON_CAPTURE_TIMEOUT",
    "REASON_PAYMENT_TIMEOUT",
    "REASON_SHIPPING_TIMEOUT",
    "REPLY_FACTS",
    "CancelRequested",
    "Outgoing",
    "ReplyReceived",
    "SagaDecision",
    "SagaMode",
    "SagaState",
    "SagaTrigger",
    "StartSaga",
    "StepTimedOut",
    "decide",
    "evolve",
    "fold",
    "payment_id_for",
    "saga_stream_id",
    "shipment_id_for",
]

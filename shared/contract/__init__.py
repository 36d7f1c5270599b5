"""The message contract: every fact and command the system sends, declared once.

Each message is a typed, versioned msgspec Struct that names its CloudEvents `TYPE`, its
schema `VERSION` and its `TOPIC`. Producers construct these types; every consumer decodes into
them (validating, and upcasting an older version). JSON Schema, the AsyncAPI document and
docs/EVENTS.md are generated from here (`python -m shared.contract.publish`, `make contract`).
The rules of evolution are in docs/CONTRACT.md.
"""
from shared.contract.base import (
    MAX_CENTS,
    Address,
    Command,
    Fact,
    Message,
    Money,
    OrderLine,
    OrderStatus,
    PaymentStatus,
    ShipmentStatus,
)
from shared.contract.dead_letter import DeadLetter, DeadLetterOrigin
from shared.contract.envelope import (
    Envelope,
    MessageFormatError,
    decode,
    decode_data,
    encode,
    encode_data,
    utc_now,
)
from shared.contract.order import (
    ORDER_FACTS,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
)
from shared.contract.payment import (
    PAYMENT_COMMANDS_DECLARED,
    PAYMENT_FACTS,
    AuthorizePayment,
    CapturePayment,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentCommand,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentVoided,
    RefundPayment,
    VoidPayment,
)
from shared.contract.registry import (
    ALL_MESSAGES,
    CHANNELS,
    MESSAGES,
    Channel,
    UnknownMessageType,
    message_class,
    messages_on,
    personal_fields,
)
from shared.contract.saga import (
    SAGA_FACTS,
    SagaAnomalyDetected,
    SagaCancelRequested,
    SagaCompensationAborted,
    SagaCompensationStarted,
    SagaCompleted,
    SagaDeadlineSet,
    SagaFact,
    SagaOrderCommandIssued,
    SagaReplyReceived,
    SagaStarted,
    SagaStepRequested,
    SagaTimedOut,
)
from shared.contract.shipping import (
    SHIPPING_COMMANDS_DECLARED,
    SHIPPING_FACTS,
    CancelShipment,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    ShippingCommand,
)
from shared.contract.topics import (
    ALL_TOPICS,
    COMMAND_TOPICS,
    DLQ_TOPICS,
    EVENT_TOPICS,
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    SHIPPING_COMMANDS,
    SHIPPING_EVENTS,
    dlq_topic,
)

__all__ = [
    "ALL_MESSAGES", "ALL_TOPICS", "CHANNELS", "COMMAND_TOPICS", "DLQ_TOPICS", "EVENT_TOPICS", "MAX_CENTS",
    "MESSAGES", "ORDER_EVENTS", "ORDER_FACTS", "PAYMENT_COMMANDS", "PAYMENT_COMMANDS_DECLARED", "PAYMENT_EVENTS",
    "PAYMENT_FACTS", "SAGA_FACTS", "SHIPPING_COMMANDS", "SHIPPING_COMMANDS_DECLARED", "SHIPPING_EVENTS",
    "SHIPPING_FACTS", "Address", "AuthorizePayment", "CancelShipment", "CapturePayment", "Channel", "Command",
    "DeadLetter", "DeadLetterOrigin", "Envelope", "Fact", "Message", "MessageFormatError", "Money",
    "OrderCancelled", "OrderConfirmed", "OrderDelivered", "OrderFact", "OrderLine", "OrderPlaced",
    "OrderRejected", "OrderShipped", "OrderStatus", "PaymentAuthorized", "PaymentCaptured", "PaymentCommand",
    "PaymentDeclined", "PaymentFact", "PaymentRefunded", "PaymentStatus", "PaymentVoided", "RefundPayment",
    "SagaAnomalyDetected", "SagaCancelRequested", "SagaCompensationAborted", "SagaCompensationStarted",
    "SagaCompleted", "SagaDeadlineSet", "SagaFact", "SagaOrderCommandIssued", "SagaReplyReceived",
    "SagaStarted", "SagaStepRequested", "SagaTimedOut", "ScheduleShipment", "ShipmentCancelled",
    "ShipmentDelivered", "ShipmentDispatched", "ShipmentFact", "ShipmentFailed", "ShipmentScheduled",
    "ShipmentStatus", "ShippingCommand", "UnknownMessageType", "VoidPayment", "decode", "decode_data",
    "dlq_topic", "encode", "encode_data", "message_class", "messages_on", "personal_fields", "utc_now",
]

"""The names of the Kafka topics. Every topic's key is the id of the aggregate its message is about."""

from __future__ import annotations

ORDER_EVENTS = "order.events"
PAYMENT_EVENTS = "payment.events"
SHIPPING_EVENTS = "shipping.events"
PAYMENT_COMMANDS = "payment.commands"
SHIPPING_COMMANDS = "shipping.commands"

EVENT_TOPICS = (ORDER_EVENTS, PAYMENT_EVENTS, SHIPPING_EVENTS)
COMMAND_TOPICS = (PAYMENT_COMMANDS, SHIPPING_COMMANDS)
DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: str) -> str:
    """Where a consumer of `topic` puts the messages it could not process."""
    return topic + DLQ_SUFFIX


DLQ_TOPICS = tuple(dlq_topic(t) for t in EVENT_TOPICS + COMMAND_TOPICS)
ALL_TOPICS = EVENT_TOPICS + COMMAND_TOPICS + DLQ_TOPICS

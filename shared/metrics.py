"""Prometheus metrics the kernel records for every service (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPENDED = Counter("events_appended_total", "Facts appended to the event log", ["type"])
MESSAGES_PUBLISHED = Counter("outbox_published_total", "Messages the outbox relay published", ["topic"])
RELAY_LAG = Histogram(
    "outbox_relay_lag_seconds",
    "Time from a message's commit to its acknowledgement by Kafka",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Messages waiting in the outbox at the last relay pass")
MESSAGES_HANDLED = Counter("consumer_messages_total", "Messages handled by consumers", ["consumer", "type", "outcome"])
HANDLER_ERRORS = Counter("consumer_handler_errors_total", "Handler attempts that raised", ["consumer", "type"])
ONE_STATEMENT_BATCHES = Counter(
    "consumer_one_statement_batches_total",
    "Batches tried as one statement (shared/batch_write.py): written, or refused/failed and applied in a transaction",
    ["consumer", "outcome"],
)
DEAD_LETTERED = Counter("consumer_dead_lettered_total", "Messages sent to a DLQ", ["consumer", "type"])
CONSUMER_LAG = Gauge("consumer_lag_messages", "Messages behind the partition end", ["consumer", "topic", "partition"])

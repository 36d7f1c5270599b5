"""The query service: CQRS read models built only from the Kafka event topics (port 8004)."""

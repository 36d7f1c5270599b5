"""The query service: CQRS read models built only from the Kafka event topics (SPEC §5, 8004)."""

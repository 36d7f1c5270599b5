"""The project's kernel: envelopes, event store, outbox relay, idempotent consumers.

Written once and used by every service (order, payment, shipping, query).
"""

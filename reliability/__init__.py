"""Reliability tooling: the consistency audit, fault injection under load, and their helpers.

* `reliability.audit`      — `python -m reliability audit`: checks the saga's invariants, the
  topics against the event logs, and the query views against the write side.
* `reliability.chaos`      — `python -m reliability chaos`: faults under a running load on a
  private LocalStack, each followed by recovery and an audit; a table + JSON report.
* `reliability.faultproxy` — an asyncio TCP proxy (pass / latency / reset / blackhole).
* `reliability.load`       — a small open-loop order generator (fixed rate, mix of outcomes).
"""

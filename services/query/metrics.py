"""Prometheus metrics of the query service (served by the kernel at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FACTS_APPLIED = Counter("query_facts_applied_total", "Facts applied to view generations", ["state"])
CURRENT_GENERATION = Gauge("query_current_generation", "The view generation reads are served from")
REBUILD_PROGRESS = Gauge("query_rebuild_progress_ratio", "Share of the rebuild's target offsets applied (0..1)")
SWITCHES = Counter("query_generation_switches_total", "Rebuilt view generations made current")
SSE_CLIENTS = Gauge("query_sse_clients", "Open /stream connections")
FEED_HELD = Counter("query_feed_held_total", "Facts the SSE feed held back until their cause was in it")
FEED_CAUSAL_GAPS = Counter(
    "query_feed_causal_gaps_total", "Held-back facts sent past FEED_CAUSAL_WAIT_MS without their cause (causalgap)"
)
MIN_VERSION_WAIT = Histogram(
    "query_min_version_wait_seconds",
    "Time GET /orders/{id}?min_version= waited, by outcome",
    ["outcome"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

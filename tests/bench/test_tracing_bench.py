"""The tracing micro-benchmark measures what it says: tracing on costs CPU, messages carry a
traceparent only when it is on, and every span made is exported."""

from __future__ import annotations

from bench import tracing as bench_tracing


def test_the_tracing_benchmark_measures_both_modes_and_exports_every_span() -> None:
    result = bench_tracing.measure(hop_count=200, repeats=1)
    hop = result["hop_us"]
    assert hop["tracing_off"] > 0 and hop["tracing_on"] > hop["tracing_off"]
    assert result["library_span_us"] > 0
    size = result["message_bytes"]
    assert size["tracing_on"] - size["tracing_off"] == len(',"traceparent":""') + 55
    # 2 spans per hop (consume, publish) over the timed run and the one-hop sample, plus the
    # library spans and their enclosing span: nothing made was lost.
    assert result["exported"]["spans"] == 2 * 200 + 2 + 200 + 1
    assert result["exported"]["otlp_bytes_per_span"] > 0

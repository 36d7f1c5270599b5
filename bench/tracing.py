"""What tracing costs per message when it is on: `python -m bench.tracing`.

One *hop* is what a service does for one message: decode it, handle it (the consumer's
transaction), queue the message it causes (the event store stamps the trace context on it)
and publish that one (the relay). The benchmark runs that hop in a loop through the kernel's
real code (`shared.tracing`, `EventStore`'s unit of work, the contract's codec), without Kafka
or PostgreSQL, with tracing off and then on, and reports the process CPU time per hop: the
spans are exported through a batching processor to an exporter that encodes every batch as
OTLP protobuf (what the OTLP/HTTP exporter sends) and drops it, so span creation, batching
and encoding are all counted, the network is not.

In the running system each hop also makes the instrumentations' spans: about four asyncpg
spans (read, append, claim, commit) and an aiokafka send and receive span. Their cost is
measured the same way, as spans through the library tracer `shared.tracing` gives them, and
reported per span and per hop.

Writes bench/results/tracing.json and prints a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.consumer import Delivery
from shared.contract import PAYMENT_COMMANDS, CapturePayment, Envelope, Message, decode, encode, utc_now
from shared.eventstore import EventStore, UnitOfWork
from shared.ids import caused_by

RESULTS = Path(__file__).with_name("results")
HOPS = int(os.environ.get("BENCH_TRACING_HOPS", "20000"))
REPEATS = int(os.environ.get("BENCH_TRACING_REPEATS", "5"))
#: Instrumentation spans per hop in the running system: asyncpg (read, append, claim, commit)
#: and aiokafka (send, receive).
LIBRARY_SPANS_PER_HOP = 6


class OtlpSink:
    """An OTLP/HTTP receiver that counts and drops what it is sent (`make bench` with
    BENCH_TRACING=1 points the services at it), in a thread of the benchmark's own process."""

    def __init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(size)
                with sink._lock:
                    sink.requests += 1
                    sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class EncodingExporter(SpanExporter):
    """Encodes each batch as the OTLP exporter would, then drops it; counts what it saw."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def first_message() -> bytes:
    env: Envelope[Message] = Envelope(
        id=str(uuid.uuid4()),
        source="/services/order",
        subject="pay-1",
        sequence=0,
        time=utc_now(),
        correlation_id=str(uuid.uuid4()),
        causation_id=str(uuid.uuid4()),
        data=CapturePayment(order_id="order-1", payment_id="pay-1"),
    )
    return encode(env)


async def hops(on: tracing.Tracing | None, count: int) -> bytes:
    """`count` hops, each handling the message the previous one published (one long trace)."""
    uow = UnitOfWork(cast(Any, None), EventStore(cast(Any, None), source="/services/payment", tracing=on))
    tracer = on.tracer if on is not None else None
    value = first_message()
    for offset in range(count):
        env = decode(value)
        consume = tracing.consume_trace(on, "payment.bench", [Delivery(env, PAYMENT_COMMANDS, 0, offset)])
        with consume.active(), caused_by(env.correlation_id, env.id, env.type):
            await uow.send(CapturePayment(order_id="order-1", payment_id="pay-1"))
        consume.end()
        topic, _, value = uow._queued.pop()
        spans = tracing.publish_spans(tracer, [{"topic": topic, "value": value}])
        with tracing.in_span(spans[0]):
            pass  # the producer's send
        tracing.end_publish_spans(spans, [None])
    return value


def library_spans(on: tracing.Tracing, count: int) -> None:
    """`count` spans as the asyncpg instrumentation makes them, inside a traced operation."""
    library = tracing._LibraryTracerProvider().get_tracer("opentelemetry.instrumentation.asyncpg")
    attributes: dict[str, str | int] = {
        "db.system": "postgresql",
        "db.name": "payment",
        "net.peer.name": "127.0.0.1",
        "net.peer.port": 5432,
        "db.statement": "SELECT e.event_id, e.type FROM events e WHERE stream_id = $1",
    }
    token = on.activate()
    try:
        with on.tracer.start_as_current_span(f"process {PAYMENT_COMMANDS}"):
            for _ in range(count):
                with library.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attributes):
                    pass
    finally:
        tracing._service.reset(token)


def cpu_us_per(
    work: Callable[[], object], count: int, repeats: int, flush: Callable[[], object] = lambda: None
) -> float:
    """Process CPU time (every thread: the exporter's too) per unit of `work`, median of `repeats`."""
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        flush()
        runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)


class DroppingExporter(SpanExporter):
    """Takes every batch and does nothing with it: span creation and batching alone."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextlib.contextmanager
def sampler(name: str | None) -> Iterator[None]:
    """OTEL_TRACES_SAMPLER for the providers made inside (None: the SDK's default, all sampled)."""
    previous = os.environ.pop("OTEL_TRACES_SAMPLER", None)
    if name is not None:
        os.environ["OTEL_TRACES_SAMPLER"] = name
    try:
        yield
    finally:
        os.environ.pop("OTEL_TRACES_SAMPLER", None)
        if previous is not None:
            os.environ["OTEL_TRACES_SAMPLER"] = previous


def traced_hop_us(exporter: SpanExporter, hop_count: int, repeats: int, sampled: str | None = None) -> float:
    with tracing.export_to(BatchSpanProcessor(exporter, max_queue_size=hop_count * 4)), sampler(sampled):
        on = tracing.for_service("payment")
        assert on is not None
        try:
            return cpu_us_per(lambda: asyncio.run(hops(on, hop_count)), hop_count, repeats, on.provider.force_flush)
        finally:
            on.shutdown()


def measure(hop_count: int = HOPS, repeats: int = REPEATS) -> dict[str, Any]:
    off_us = cpu_us_per(lambda: asyncio.run(hops(None, hop_count)), hop_count, repeats)
    exporter = EncodingExporter()
    on_us = traced_hop_us(exporter, hop_count, repeats)
    unencoded_us = traced_hop_us(DroppingExporter(), hop_count, repeats)
    sampled_out_us = traced_hop_us(exporter, hop_count, repeats, sampled="parentbased_always_off")
    with tracing.export_to(BatchSpanProcessor(exporter, max_queue_size=hop_count * 4)):
        on = tracing.for_service("payment")
        assert on is not None
        traced_message = asyncio.run(hops(on, 1))
        span_us = cpu_us_per(lambda: library_spans(on, hop_count), hop_count, repeats, on.provider.force_flush)
        on.shutdown()
    plain_message = asyncio.run(hops(None, 1))
    kernel_us = on_us - off_us
    return {
        "benchmark": "tracing cost per message (python -m bench.tracing)",
        "method": f"process CPU time (all threads) per hop, median of {repeats} runs of {hop_count} hops; a hop "
        "decodes a message, handles it under its consumer span, queues the command it causes "
        "(trace context stamped) and publishes it under a publish span; spans go through a "
        "BatchSpanProcessor to an exporter that encodes them as OTLP protobuf and drops them",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {n: version(n) for n in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "msgspec")},
        "hop_us": {
            "tracing_off": round(off_us, 2),
            "tracing_on": round(on_us, 2),
            "tracing_on_spans_not_encoded": round(unencoded_us, 2),
            "tracing_on_sampled_out": round(sampled_out_us, 2),
        },
        "kernel_tracing_us_per_hop": round(kernel_us, 2),
        "library_span_us": round(span_us, 2),
        "library_spans_per_hop": LIBRARY_SPANS_PER_HOP,
        "estimated_tracing_us_per_hop": round(kernel_us + LIBRARY_SPANS_PER_HOP * span_us, 1),
        "message_bytes": {"tracing_off": len(plain_message), "tracing_on": len(traced_message)},
        "exported": {"spans": exporter.spans, "otlp_bytes_per_span": round(exporter.bytes / max(exporter.spans, 1), 1)},
    }


def print_summary(result: dict[str, Any]) -> None:
    hop = result["hop_us"]
    print(f"one hop, kernel only: {hop['tracing_off']} µs CPU with tracing off, {hop['tracing_on']} µs on")
    print(f"kernel tracing: +{result['kernel_tracing_us_per_hop']} µs per hop (2 spans, trace context stamped)")
    print(
        f"  of which OTLP encoding: {round(hop['tracing_on'] - hop['tracing_on_spans_not_encoded'], 1)} µs; "
        f"sampled out (OTEL_TRACES_SAMPLER=parentbased_always_off): {hop['tracing_on_sampled_out']} µs per hop"
    )
    print(
        f"instrumentation span: {result['library_span_us']} µs each, ~{result['library_spans_per_hop']} per hop"
        f" → about {result['estimated_tracing_us_per_hop']} µs of CPU per message handled when tracing is on"
    )
    size = result["message_bytes"]
    print(f"message size: {size['tracing_off']} → {size['tracing_on']} bytes (the traceparent attribute)")


def main() -> None:
    result = measure()
    print_summary(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tracing.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

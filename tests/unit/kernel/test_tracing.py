"""The kernel's tracing without a broker: which trace context each queued message carries,
the consumer's and relay's spans, and that nothing is traced unless tracing is on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import tracing
from shared.consumer import Delivery
from shared.contract import (
    PAYMENT_COMMANDS,
    CapturePayment,
    Envelope,
    Fact,
    Message,
    Money,
    PaymentCaptured,
    decode,
    encode,
    utc_now,
)
from shared.eventstore import EventStore, UnitOfWork
from shared.ids import caused_by


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    with tracing.export_to(SimpleSpanProcessor(memory)):
        yield memory


@pytest.fixture
def traced(exporter: InMemorySpanExporter) -> tracing.Tracing:
    on = tracing.for_service("test")
    assert on is not None
    return on


def unit_of_work(tracing_: tracing.Tracing | None) -> UnitOfWork:
    """A unit of work whose queue is inspected without a database (nothing is flushed)."""
    return UnitOfWork(cast(Any, None), EventStore(cast(Any, None), source="/test", tracing=tracing_))


def queued(uow: UnitOfWork) -> list[Envelope[Message]]:
    return [decode(value) for _, _, value in uow._queued]


def capture(order: str) -> CapturePayment:
    return CapturePayment(order_id=order, payment_id=f"pay-{order}")


def remote_parent() -> tuple[str, int]:
    """A traceparent as another service wrote it, and its trace id."""
    trace_id = uuid.uuid4().int
    return f"00-{trace_id:032x}-{uuid.uuid4().int >> 64:016x}-01", trace_id


def delivery(traceparent: str | None, n: int) -> Delivery:
    env: Envelope[Message] = Envelope(
        id=str(uuid.uuid4()),
        source="/elsewhere",
        subject=f"pay-{n}",
        sequence=0,
        time=utc_now(),
        correlation_id=f"order-{n}",
        causation_id="c",
        data=capture(f"order-{n}"),
        traceparent=traceparent,
    )
    return Delivery(env, PAYMENT_COMMANDS, 0, n)


def test_tracing_is_on_only_with_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.for_service("order") is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.TracingSettings().enabled
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.TracingSettings().enabled


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",  # a future version
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 has 4 fields
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "not a traceparent",
    ],
)
def test_a_message_trace_context_is_read_as_the_w3c_propagator_reads_it(traceparent: str) -> None:
    ours = tracing.context_of(traceparent, "vendor=x")
    theirs = TraceContextTextMapPropagator().extract({"traceparent": traceparent, "tracestate": "vendor=x"})
    expected = trace.get_current_span(theirs).get_span_context()
    if not expected.is_valid:
        assert ours is None
        return
    assert ours is not None and trace.get_current_span(ours).get_span_context() == expected


async def test_with_tracing_off_no_message_carries_a_trace_context() -> None:
    provider_span = trace.NonRecordingSpan(
        trace.SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    uow = unit_of_work(None)
    with trace.use_span(provider_span):
        await uow.send(capture("o-1"))
    [env] = queued(uow)
    assert env.traceparent is None and b"traceparent" not in uow._queued[0][2]


async def test_with_tracing_off_a_consumer_transaction_has_no_spans_and_runs_as_before() -> None:
    consume = tracing.consume_trace(None, "c", [delivery(remote_parent()[0], 1)])
    assert consume is tracing.NO_TRACE and not consume.spans
    for message_id in (None, "any message"):  # the batch, and one message re-applied alone
        with consume.active(message_id):
            assert not trace.get_current_span().get_span_context().is_valid
    consume.failed("any message", "error")
    consume.end()


async def test_a_command_sent_while_serving_a_request_carries_the_request_span(traced: tracing.Tracing) -> None:
    uow = unit_of_work(traced)
    with traced.tracer.start_as_current_span("POST /orders") as span:
        await uow.send(capture("o-1"))
    [env] = queued(uow)
    assert env.traceparent == tracing.traceparent_of(span)[0]
    ctx = span.get_span_context()
    assert (
        env.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        and ctx.trace_flags.sampled
    )


async def test_each_message_of_a_batch_causes_effects_in_its_own_trace(
    traced: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    (tp1, trace1), (tp2, trace2) = remote_parent(), remote_parent()
    batch = [delivery(tp1, 1), delivery(tp2, 2), delivery(None, 3)]
    consume = tracing.consume_trace(traced, "payment.commands", batch)
    uow = unit_of_work(traced)
    with consume.active():  # the batch handler: one call for all three messages
        for d in batch:
            with caused_by(d.envelope.correlation_id, d.envelope.id, d.envelope.type):
                await uow.send(capture(d.envelope.correlation_id))
    consume.end()

    spans = {
        (s.attributes or {})["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name.startswith("process payment")
    }
    effects = queued(uow)
    for d, effect in zip(batch, effects):
        span = spans[d.envelope.id]
        assert (
            span.kind is SpanKind.CONSUMER
            and (span.attributes or {})["messaging.message.conversation_id"] == d.envelope.correlation_id
        )
        assert effect.traceparent == tracing.traceparent_of(cast(Any, span))[0], (
            "the effect is a child of its cause's span"
        )
    assert spans[batch[0].envelope.id].context.trace_id == trace1
    assert spans[batch[1].envelope.id].context.trace_id == trace2
    assert spans[batch[2].envelope.id].parent is None, "a message without a trace context starts a trace"
    [batch_span] = [s for s in exporter.get_finished_spans() if s.name == "process batch payment.commands"]
    assert {link.context.span_id for link in batch_span.links} == {s.context.span_id for s in spans.values()}


async def test_a_failed_batch_attempt_ends_its_spans_as_errors(
    traced: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    consume = tracing.consume_trace(traced, "c", [delivery(remote_parent()[0], 1)])
    with pytest.raises(RuntimeError), consume.active():
        raise RuntimeError("handler failed")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


async def test_a_fact_published_again_carries_the_trace_of_the_work_that_republishes(traced: tracing.Tracing) -> None:
    uow = unit_of_work(traced)
    paid = PaymentCaptured(order_id="o-1", payment_id="pay-1", amount=Money(amount_cents=1, currency="EUR"))
    recorded: Envelope[Fact] = Envelope(
        id=str(uuid.uuid4()),
        source="/test",
        subject="pay-1",
        sequence=1,
        time=utc_now(),
        correlation_id="o-1",
        causation_id="c",
        data=paid,
    )  # as read back from the log: no trace context is stored with a fact
    with traced.tracer.start_as_current_span("handling a retried command") as span:
        await uow.republish(recorded)
    [env] = queued(uow)
    assert env.id == recorded.id and env.traceparent == tracing.traceparent_of(span)[0]


def test_the_relay_publishes_traced_rows_under_child_spans(
    traced: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    tp, trace_id = remote_parent()
    rows = [
        {"topic": PAYMENT_COMMANDS, "value": encode(delivery(tp, 1).envelope)},
        {"topic": PAYMENT_COMMANDS, "value": encode(delivery(None, 2).envelope)},  # written with tracing off
        {"topic": "x.dlq", "value": b"\xff not json"},
    ]
    spans = tracing.publish_spans(traced.tracer, rows)
    assert [s is not None for s in spans] == [True, False, False]
    tracing.end_publish_spans(spans, [object()])  # the first acknowledged, the others never sent
    [published] = cast(list[ReadableSpan], exporter.get_finished_spans())
    assert published.kind is SpanKind.PRODUCER and published.name == f"publish {PAYMENT_COMMANDS}"
    assert published.context is not None and published.context.trace_id == trace_id
    assert published.parent is not None and f"{published.parent.span_id:016x}" == tp.split("-")[2]
    assert published.status.status_code is StatusCode.UNSET
    assert msgspec.json.decode(cast(bytes, rows[0]["value"]))["traceparent"] == tp, (
        "the stored bytes are published as they are"
    )

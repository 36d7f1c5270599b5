"""Distributed tracing with OpenTelemetry: one trace per order, across every service.

W3C trace context travels inside every message as the CloudEvents distributed-tracing
extension (`traceparent`, `tracestate`): the event store writes the context of the work that
queued a message (an HTTP request's span, or the span of the message being handled), the relay
publishes the stored bytes as they are under a `publish <topic>` span that is a child of that
context, and the consumer handles each message under a `process <topic>` span that is its
child too, so HTTP → outbox → Kafka → consumer → outbox → … is one trace.

Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set; then
spans go over OTLP/HTTP (protobuf) through a batching processor, configured by the standard
`OTEL_*` variables. Off, nothing of the SDK is loaded, no span is made and no message carries
a `traceparent`. Each service has its own TracerProvider (resource `service.name`), so
services sharing one process (the tests) still report as themselves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, NoOpTracer, Span, SpanKind, Status, StatusCode
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from starlette.types import ASGIApp, Receive, Scope, Send

    from shared.consumer import Delivery

log = logging.getLogger("shared.tracing")

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
#: Library spans (asyncpg, aiokafka) are attributed to the service whose task or request runs.
_service: ContextVar[Tracing | None] = ContextVar("tracing_service", default=None)
#: Message id → span of the messages the current consumer transaction handles.
_handled: ContextVar[Mapping[str, Span] | None] = ContextVar("tracing_handled", default=None)
#: Set by `export_to`: services built meanwhile export here, whatever the environment says.
_override: SpanProcessor | None = None


class TracingSettings(BaseSettings):
    """The standard OpenTelemetry variables that switch tracing on (the exporter, batching and
    sampler read the other `OTEL_*` variables themselves).

    OTEL_EXPORTER_OTLP_ENDPOINT         OTLP/HTTP base URL, e.g. http://127.0.0.1:4318 (default
                                        unset: tracing off)
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  full traces URL, instead of the above (default unset)
    OTEL_SDK_DISABLED                   true keeps tracing off even with an endpoint (default false)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
    otel_sdk_disabled: bool = False

    @property
    def enabled(self) -> bool:
        return not self.otel_sdk_disabled and bool(
            self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint
        )


class Tracing:
    """One service's tracing: its provider, the kernel's tracer, its instrumented app."""

    def __init__(self, service_name: str, processor: SpanProcessor, *, owns_processor: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.service_name = service_name
        self.provider: TracerProvider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self._owns_processor = owns_processor
        self.tracer = self.provider.get_tracer("shared")
        self._library_tracers: dict[tuple[str, str | None, str | None], trace.Tracer] = {}
        instrument_libraries()

    def instrument_app(self, app: FastAPI) -> None:
        """Server spans for every request but the probes, which also attribute the request's
        library spans to this service."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls="/health,/metrics",
            exclude_spans=["receive", "send"],
        )
        app.add_middleware(_ServiceScope, tracing=self)

    def activate(self) -> Token[Tracing | None]:
        """Library spans made from now on in this task (and tasks it starts) are this service's."""
        return _service.set(self)

    def library_tracer(self, name: str, version: str | None, schema_url: str | None) -> trace.Tracer:
        key = (name, version, schema_url)
        tracer = self._library_tracers.get(key)
        if tracer is None:
            tracer = self._library_tracers[key] = self.provider.get_tracer(name, version, schema_url)
        return tracer

    def shutdown(self) -> None:
        """Export what is buffered; a processor given by `export_to` is left to its owner."""
        if self._owns_processor:
            self.provider.shutdown()
        else:
            self.provider.force_flush()


def for_service(service_name: str) -> Tracing | None:
    """The service's tracing as the environment asks for it; None when tracing is off."""
    if _override is not None:
        return Tracing(service_name, _override, owns_processor=False)
    if not TracingSettings().enabled:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    log.info("tracing on: spans exported over OTLP/HTTP")
    return Tracing(service_name, BatchSpanProcessor(OTLPSpanExporter()))


@contextmanager
def export_to(processor: SpanProcessor) -> Iterator[None]:
    """Services built inside this block trace to `processor` (tests, benchmarks); the library
    instrumentations are removed again at its end."""
    global _override
    previous, _override = _override, processor
    try:
        yield
    finally:
        _override = previous
        if previous is None:
            uninstrument_libraries()


# --------------------------------------------------------------------------- messages


def traceparent_of(span: Span) -> tuple[str | None, str | None]:
    """The W3C `traceparent` and `tracestate` values of a span (None, None if it has none)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}", state or None


def message_trace(causation_id: str | None) -> tuple[str | None, str | None]:
    """The trace context a message queued now carries: the span of the message whose handling
    caused it (a consumer batch handles many, each in its own trace), else the current span."""
    handled = _handled.get()
    span = handled.get(causation_id) if handled is not None and causation_id else None
    return traceparent_of(span if span is not None else trace.get_current_span())


def context_of(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The remote parent a message's trace context names (None without a valid one). Parsed
    here, not by the propagator, which costs several times more on every handled message."""
    match = _TRACEPARENT.match(traceparent) if traceparent else None
    if match is None or match[1] == "ff" or (match[1] == "00" and match[5]):
        return None
    trace_id, span_id = int(match[2], 16), int(match[3], 16)
    if not trace_id or not span_id:
        return None
    state = trace.TraceState.from_header([tracestate]) if tracestate else None
    flags = trace.TraceFlags(int(match[4], 16))
    parent = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags, trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(parent))


class _WireTrace(msgspec.Struct):
    """What a publish span needs of a stored CloudEvent (everything else is skipped)."""

    id: str = ""
    type: str = ""
    correlationid: str = ""
    traceparent: str = ""
    tracestate: str = ""


_wire_trace = msgspec.json.Decoder(_WireTrace)


def publish_spans(tracer: trace.Tracer | None, rows: Sequence[Mapping[str, Any]]) -> list[Span | None]:
    """A `publish <topic>` span per outbox row that carries a trace context, child of it."""
    if tracer is None:
        return [None] * len(rows)
    spans: list[Span | None] = []
    for row in rows:
        try:
            wire = _wire_trace.decode(row["value"])
        except msgspec.DecodeError:
            wire = _WireTrace()  # e.g. a dead letter of a message that was not JSON at all
        parent = context_of(wire.traceparent, wire.tracestate)
        if parent is None:
            spans.append(None)
            continue
        spans.append(
            tracer.start_span(
                f"publish {row['topic']}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": row["topic"],
                    "messaging.message.id": wire.id,
                    "messaging.message.conversation_id": wire.correlationid,
                    "cloudevents.event_type": wire.type,
                },
            )
        )
    return spans


def current_span() -> Span | None:
    """The span current now (None without one): work done later for this caller, e.g. a
    request's placement written in a batch, goes under it with `in_span`."""
    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def in_span(span: Span | None) -> AbstractContextManager[Any]:
    """Make `span` current for a block (the aiokafka send span nests under it); None: nothing."""
    return nullcontext() if span is None else trace.use_span(span, end_on_exit=False)


def end_publish_spans(spans: Sequence[Span | None], results: Sequence[object]) -> None:
    """End each row's span once Kafka answered: acknowledged, refused, or never sent."""
    for i, span in enumerate(spans):
        if span is None:
            continue
        if i >= len(results):
            span.set_status(Status(StatusCode.ERROR, "not sent"))
        elif isinstance(results[i], BaseException):
            span.set_status(Status(StatusCode.ERROR, repr(results[i])))
        span.end()


class ConsumeTrace:
    """The spans of one consumer transaction: a `process <topic>` span per message, child of
    the message's trace context, and the span current while the handler runs (the message's
    own when there is one, else a batch span linked to every message)."""

    def __init__(self, tracer: trace.Tracer | None, consumer: str, messages: Sequence[Delivery]) -> None:
        self.spans: dict[str, Span] = {}
        self._batch: Span | None = None
        self._current: Span | None = None
        if tracer is None:
            return
        for m in messages:
            env = m.envelope
            self.spans[env.id] = tracer.start_span(
                f"process {m.topic}",
                context=context_of(env.traceparent, env.tracestate),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.consumer.group.name": consumer,
                    "messaging.destination.name": m.topic,
                    "messaging.destination.partition.id": str(m.partition),
                    "messaging.kafka.offset": m.offset,
                    "messaging.message.id": env.id,
                    "messaging.message.conversation_id": env.correlation_id,
                    "cloudevents.event_type": env.type,
                    "cloudevents.event_subject": env.subject,
                },
            )
        if len(self.spans) == 1:
            [self._current] = self.spans.values()
        else:
            links = [trace.Link(s.get_span_context()) for s in self.spans.values()]
            self._batch = self._current = tracer.start_span(
                f"process batch {consumer}",
                kind=SpanKind.CONSUMER,
                links=links,
                attributes={"messaging.batch.message_count": len(self.spans)},
            )

    @contextmanager
    def active(self, message_id: str | None = None) -> Iterator[None]:
        """While the handler runs: its library spans nest under the current span, and what it
        queues carries the trace of the message that caused it (`message_id`: only that one)."""
        span = self.spans.get(message_id) if message_id is not None else self._current
        if span is None:
            yield
            return
        token = _handled.set(self.spans)
        try:
            with trace.use_span(span, end_on_exit=False):
                yield
        except BaseException as exc:
            if message_id is None:  # the whole attempt failed: it is rolled back and re-applied
                self.end(exc)
            raise
        finally:
            _handled.reset(token)

    def failed(self, message_id: str, error: str) -> None:
        span = self.spans.get(message_id)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, error))

    def end(self, error: BaseException | None = None) -> None:
        """After the transaction committed (or, with `error`, did not)."""
        for span in self.spans.values():
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, repr(error)))
            span.end()
        if self._batch is not None:
            self._batch.end()


#: Tracing off (or nothing to handle): no spans, and every method does nothing.
NO_TRACE = ConsumeTrace(None, "", ())


def consume_trace(tracing: Tracing | None, consumer: str, messages: Sequence[Delivery]) -> ConsumeTrace:
    if tracing is None or not messages:
        return NO_TRACE
    return ConsumeTrace(tracing.tracer, consumer, messages)


# --------------------------------------------------------------------------- libraries


class _ServiceScope:
    """ASGI: a request's library spans belong to the service that serves it."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _service.set(self.tracing)
        try:
            await self.app(scope, receive, send)
        finally:
            _service.reset(token)


class _LibraryTracer(NoOpTracer):
    """What asyncpg's and aiokafka's instrumentations get: spans of the current service, and
    only inside a traced operation (a request, a handled or published message), so that the
    relay's and consumers' polling makes no trace of its own."""

    def __init__(self, name: str, version: str | None, schema_url: str | None) -> None:
        self._key = (name, version, schema_url)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        service = _service.get()
        if service is None or not trace.get_current_span(context).get_span_context().is_valid:
            return NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        return service.library_tracer(*self._key).start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )


class _LibraryTracerProvider(trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return _LibraryTracer(instrumenting_module_name, instrumenting_library_version, schema_url)


def _instrumentors() -> tuple[Any, ...]:
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    return AsyncPGInstrumentor(), AIOKafkaInstrumentor()  # type: ignore[no-untyped-call]


def instrument_libraries() -> None:
    """Patch asyncpg and aiokafka once per process (their instrumentations are global)."""
    for instrumentor in _instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=_LibraryTracerProvider())


def uninstrument_libraries() -> None:
    for instrumentor in _instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()

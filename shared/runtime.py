"""The composition root shared by every service: one way to wire a service's process.

A service supplies its name, settings, routers, extra DDL, which events it publishes, and
which consumers and background loops it runs; this module owns the lifecycle: pool and
migrations, the outbox relay, the consumers, /health, /metrics, JSON logs, error mapping
and the request body limit; liveness, readiness and the graceful shutdown are in
shared/lifecycle.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import asyncpg
from aiokafka import AIOKafkaClient
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Role, TokenVerifier, authenticated, bearer, require_role
from shared.consumer import TRANSIENT_ERRORS, ConsumerRunner, ConsumerSettings, Handler
from shared.db import create_pool, migrate
from shared.errors import DomainError
from shared.eventstore import ConcurrencyConflict, EventStore
from shared.keystore import Keystore, KeystoreUnavailable
from shared.lifecycle import ReadinessCheck, add_health_routes, shut_down
from shared.lifecycle import serve as _serve
from shared.logs import configure_logging
from shared.relay import OutboxRelay, RelaySettings
from shared.rest import error_response
from shared.settings import ServiceSettings
from shared.topics import ensure_topics
from shared.tracing import Tracing, for_service

log = logging.getLogger("shared.runtime")


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer group this service runs: its name, topics and batch handler. `one_statement`:
    the handler can decide a batch as a `shared.batch_write.BatchWork` (tried first)."""

    name: str
    topics: Sequence[str]
    handler: Handler
    one_statement: bool = False


BackgroundLoop = Callable[["Runtime", asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Runtime:
    """What request handlers and loops reach through `request.app.state.runtime`."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    store: EventStore
    relay: OutboxRelay
    consumers: list[ConsumerRunner] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Health and shutdown (shared/lifecycle.py). The relay stops after the consumers and
    #: loops, so it publishes what their last batches wrote. `readiness` holds the service's
    #: own checks (`ServiceDefinition.readiness`), beside the kernel's.
    relay_stop: asyncio.Event = field(default_factory=asyncio.Event)
    relay_task: asyncio.Task[None] | None = None
    readiness: list[ReadinessCheck] = field(default_factory=list)
    migrated: bool = False
    draining: bool = False
    #: The key store of customers' data keys, when the service is given `KEYSTORE_URL`.
    keystore: Keystore | None = None


@dataclass
class ServiceDefinition:
    name: str
    settings: ServiceSettings
    routers: Sequence[APIRouter]
    schema: Sequence[Path | str] = ()
    consumers: Callable[[EventStore], Sequence[ConsumerSpec]] = lambda store: ()
    loops: Sequence[BackgroundLoop] = ()
    #: Extra readiness checks (None = ready, else the reason), e.g. consumers a loop runs itself.
    readiness: Sequence[ReadinessCheck] = ()
    description: str = ""
    openapi_tags: list[dict[str, Any]] | None = None
    #: True for the one service that makes and destroys customers' data keys (order).
    keystore_writer: bool = False


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


class _KafkaProbe:
    """A tiny metadata client for /health, cached briefly so probes stay cheap."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._client: AIOKafkaClient | None = None
        self._ok_until = 0.0

    async def reachable(self) -> bool:
        if time.monotonic() < self._ok_until:
            return True
        try:
            if self._client is None:
                self._client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
                await asyncio.wait_for(self._client.bootstrap(), timeout=3)
            await asyncio.wait_for(self._client.fetch_all_metadata(), timeout=3)
        except Exception:
            await self.close()
            return False
        self._ok_until = time.monotonic() + 1.0
        return True

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:
                pass


def unstorable_text(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], str] | None:
    """Where `value` holds text PostgreSQL cannot store (U+0000) or UTF-8 cannot encode (a lone
    surrogate), and why; None when all of it is storable. Such input is invalid, not a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            return loc, "text must not contain the NUL character (U+0000)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return loc, "text must be valid Unicode (no lone surrogates)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable_text(key, loc) or unstorable_text(item, (*loc, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_text(item, (*loc, index))
            if found:
                return found
    return None


class InputGuard:
    """Refuse, before any handler runs: bodies over the limit (413), and text in the path, the
    query or a JSON body that PostgreSQL cannot store (422 naming where). The body is read once,
    bounded, and replayed to the application."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = unstorable_text(scope.get("path", ""), ("path",)) or unstorable_text(
            dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)), ("query",)
        )
        if problem:
            await _invalid_text(*problem)(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b""):
            try:
                problem = unstorable_text(json.loads(body), ("body",))
            except (ValueError, RecursionError):
                problem = None  # not JSON: the application answers that itself
            if problem:
                await _invalid_text(*problem)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _is_loopback(request: Request) -> bool:
    """True for a client on this host (Prometheus scraping locally, `make` tooling)."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats (which JSON cannot carry) replaced by their names."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _field_of(loc: Sequence[Any]) -> str:
    """`["body", "items", 0, "sku"]` → `items.0.sku`: the bad field as a client names it."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def _invalid(detail: list[dict[str, Any]], status: int = 422, code: str = "invalid_input") -> JSONResponse:
    first = detail[0] if detail else {"loc": ["body"], "msg": "invalid input"}
    return error_response(status, code, str(first.get("msg")), field=_field_of(first.get("loc", ())), detail=detail)


def invalid_input(exc: RequestValidationError) -> JSONResponse:
    """422 `invalid_input` in the one error shape. FastAPI's own handler echoes each bad `input`;
    a non-finite number (`NaN`, `Infinity`, `1e400` → inf) cannot be rendered as JSON, which
    turned a 422 into a 500."""
    return _invalid(_json_safe(jsonable_encoder(exc.errors())))


def _invalid_text(loc: tuple[str | int, ...], msg: str) -> JSONResponse:
    return _invalid([{"loc": list(loc), "msg": msg, "type": "string_unstorable"}])


def _too_large(limit: int) -> JSONResponse:
    detail = [{"loc": ["body"], "msg": f"request body larger than {limit} bytes", "type": "body_too_large"}]
    return _invalid(detail, status=413, code="body_too_large")


def build_app(definition: ServiceDefinition) -> FastAPI:
    settings = definition.settings
    configure_logging(definition.name, settings.log_level)
    probe = _KafkaProbe(settings.kafka_bootstrap_servers)
    tracing = for_service(definition.name)  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _start(definition, tracing)
        app.state.runtime = runtime
        log.info("service started", extra={"port": settings.http_port})
        try:
            yield
        finally:
            await shut_down(runtime, settings.shutdown_grace_s)
            if runtime.keystore is not None:
                await runtime.keystore.close()
            await probe.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # export the last spans
            log.info("service stopped")

    app = FastAPI(
        title=f"{definition.name} service",
        description=definition.description,
        lifespan=lifespan,
        openapi_tags=definition.openapi_tags,
    )
    if tracing is not None:
        tracing.instrument_app(app)
    app.state.token_verifier = TokenVerifier.of(settings)

    @app.get("/health", tags=["operations"], summary="200 only when the database and Kafka are reachable")
    async def health(request: Request) -> JSONResponse:
        runtime = runtime_of(request)
        db_ok = True
        try:
            async with runtime.pool.acquire(timeout=2) as conn:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=2)
        except Exception:
            db_ok = False
        kafka_ok = await probe.reachable()
        body = {
            "service": definition.name,
            "database": "up" if db_ok else "down",
            "kafka": "up" if kafka_ok else "down",
            "relay_leader": runtime.relay.is_leader,
        }
        return JSONResponse(body, status_code=200 if db_ok and kafka_ok else 503)

    add_health_routes(app, definition.name, probe.reachable)

    staff_only = require_role(Role.STAFF)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus text format (open to loopback clients; others need a staff or admin token)",
    )
    async def metrics(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Response:
        if not _is_loopback(request):
            await staff_only(await authenticated(request, credentials))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def unparseable(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 for a body its JSON parser rejects (e.g. a 5,000-digit number);
        # the contract says invalid input is a 422 naming the field, so say it that way.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return _invalid([{"loc": ["body"], "msg": "the body is not valid JSON", "type": "json_invalid"}])
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_input(exc)

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database (or a lock) is away for a moment: nothing was written, and a retry is
        # exactly right (Idempotency-Key makes it safe), so say so instead of a bare 500.
        log.warning("request failed: a dependency is unavailable", extra={"error": repr(exc)})
        return error_response(
            503, "database_unavailable", "a dependency is unavailable; retry shortly", headers={"Retry-After": "1"}
        )

    for transient in TRANSIENT_ERRORS:
        app.add_exception_handler(transient, unavailable)

    @app.exception_handler(KeystoreUnavailable)
    async def keystore_away(_: Request, exc: KeystoreUnavailable) -> JSONResponse:
        # Nothing that needed a data key was written (placement, erasure) or shown (a read).
        log.warning("request failed: the key store is unavailable", extra={"error": str(exc)})
        return error_response(
            503, "keystore_unavailable", "the key store is unavailable; retry shortly", headers={"Retry-After": "1"}
        )

    @app.exception_handler(ConcurrencyConflict)
    async def conflict(_: Request, exc: ConcurrencyConflict) -> JSONResponse:
        return error_response(409, "version_conflict", str(exc))

    @app.exception_handler(DomainError)
    async def refused(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(
            exc.http_status, exc.code, exc.message, field=exc.field, headers=getattr(exc, "headers", None)
        )

    # Every route a service declares needs a valid token (shared/auth.py); its own dependencies
    # then narrow it by role or customer.
    for router in definition.routers:
        app.include_router(router, dependencies=[Depends(authenticated)])
    app.add_middleware(InputGuard, max_bytes=settings.max_body_bytes)
    return app


async def _start(definition: ServiceDefinition, tracing: Tracing | None = None) -> Runtime:
    settings = definition.settings
    pool = await _retrying("database", lambda: create_pool(settings.database_url, max_size=settings.db_pool_max_size))
    await migrate(pool, definition.schema)
    await _retrying("kafka topics", lambda: ensure_topics(settings.kafka_bootstrap_servers, settings.topic_partitions))
    store = EventStore(pool, source=f"/services/{definition.name}", tracing=tracing)
    relay = OutboxRelay(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        name=definition.name,
        settings=RelaySettings(
            batch_size=settings.relay_batch_size,
            poll_interval_s=settings.relay_poll_interval_s,
            idle_poll_max_s=settings.relay_idle_poll_max_s,
            busy_linger_s=settings.relay_busy_linger_ms / 1000,
            flush_timeout_s=settings.shutdown_grace_s,
        ),
        local_bell=store.outbox_written,
        tracing=tracing,
    )
    runtime = Runtime(
        settings=settings, pool=pool, store=store, relay=relay, migrated=True, readiness=list(definition.readiness)
    )
    if settings.keystore_url:
        runtime.keystore = Keystore(settings.keystore_url, writer=definition.keystore_writer)
    runtime.relay_task = asyncio.create_task(relay.run(runtime.relay_stop), name="relay")
    consumer_settings = consumer_settings_of(settings)
    for spec in definition.consumers(store):
        runner = ConsumerRunner(
            name=spec.name,
            topics=spec.topics,
            store=store,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            handler=spec.handler,
            settings=consumer_settings,
            one_statement=spec.one_statement,
        )
        runtime.consumers.append(runner)
        runtime.tasks.append(asyncio.create_task(runner.run(runtime.stop), name=f"consumer:{spec.name}"))
    for loop in definition.loops:
        runtime.tasks.append(asyncio.create_task(loop(runtime, runtime.stop), name=getattr(loop, "__name__", "loop")))
    return runtime


async def _retrying(what: str, attempt: Callable[[], Awaitable[Any]], tries: int = 60) -> Any:
    """Start-up waits for dependencies that are still coming up (compose, make up)."""
    for n in range(1, tries + 1):
        try:
            return await attempt()
        except Exception as exc:
            if n == tries:
                raise
            log.warning("waiting for %s", what, extra={"attempt": n, "error": repr(exc)})
            await asyncio.sleep(min(0.2 * n, 2.0))
    raise AssertionError("unreachable")


def consumer_settings_of(settings: ServiceSettings) -> ConsumerSettings:
    """The ConsumerRunner settings a service's environment asks for."""
    return ConsumerSettings(
        max_batch=settings.consumer_max_batch,
        max_attempts=settings.consumer_max_attempts,
        batch_linger_s=settings.consumer_linger_ms / 1000,
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Entry point for `python -m services.<name>`: uvicorn, graceful on SIGTERM (exit status 0)."""
    _serve(app, settings)

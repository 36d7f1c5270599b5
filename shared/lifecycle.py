"""Liveness, readiness and graceful shutdown of a service process (used by shared/runtime.py).

An orchestrator asks two different questions: "is this process stuck?" (`GET /health/live`:
restart it if not answered) and "may it get work?" (`GET /health/ready`: route to it only on
200). `GET /health` stays what it always was (database and Kafka reachable).

Ready means every check passes:

* `database`   — a pooled connection answers within 2 s;
* `kafka`      — the bootstrap servers answer a metadata request;
* `migrations` — the schema migration of this start-up ran, and the kernel's tables exist;
* `consumers`  — every consumer of the service has joined its group: its first assignment
                 arrived, an empty one included (a member gets no partition when its group
                 has more members than the topics have partitions; it is still a ready
                 standby). A rebalance does not clear it, a restarted Kafka client does.
                 Loops that run consumers of their own (the query service's view
                 generations) declare a check in `ServiceDefinition.readiness`;
* `serving`    — no shutdown has begun (SIGTERM makes readiness 503 at once).

Shutdown (SIGTERM, or the end of the app's lifespan), each phase bounded by SHUTDOWN_GRACE_S:
uvicorn stops accepting connections and lets in-flight requests finish; then the consumers
stop polling, finish and commit their current batch and leave their groups, and the
background loops end; then the relay publishes what the outbox holds (the last requests' and
batches' messages) and stops; then the pool closes and the process exits 0. A phase that
overruns is cancelled, which loses nothing: an uncommitted batch is redelivered (and dropped
by the inbox if it had committed), unpublished outbox rows wait for the next relay.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.rest import ErrorBody, error_response

if TYPE_CHECKING:
    from shared.runtime import Runtime
    from shared.settings import ServiceSettings

log = logging.getLogger("shared.lifecycle")

#: None when the part it looks at is ready, else why not (a few words).
ReadinessCheck = Callable[[], str | None]

_KERNEL_TABLES = ["events", "outbox", "inbox", "consumer_positions"]
_TABLES_SQL = "SELECT count(to_regclass(t)) FROM unnest($1::text[]) AS t"
_STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan start-up failed


async def _database(runtime: Runtime) -> tuple[str, str]:
    """(database, migrations) in one round trip."""
    try:
        async with runtime.pool.acquire(timeout=2) as conn:
            found = await asyncio.wait_for(conn.fetchval(_TABLES_SQL, _KERNEL_TABLES), timeout=2)
    except Exception:
        return "unreachable", "unknown"
    return "ok", "ok" if runtime.migrated and found == len(_KERNEL_TABLES) else "pending"


def _consumers(runtime: Runtime) -> str:
    reasons = [reason for check in runtime.readiness if (reason := check()) is not None]
    waiting = sorted({c.name for c in runtime.consumers if not c.assigned})
    if waiting:
        reasons.insert(0, "not assigned yet: " + ", ".join(waiting))
    return "; ".join(reasons) or "ok"


async def readiness(runtime: Runtime | None, kafka_reachable: Callable[[], Awaitable[bool]]) -> dict[str, str]:
    """Every check by name: "ok", or why not."""
    if runtime is None:
        return {"serving": "starting"}
    (database, migrations), kafka_ok = await asyncio.gather(_database(runtime), kafka_reachable())
    return {
        "database": database,
        "kafka": "ok" if kafka_ok else "unreachable",
        "migrations": migrations,
        "consumers": _consumers(runtime),
        "serving": "shutting down" if runtime.draining else "ok",
    }


def add_health_routes(app: FastAPI, service: str, kafka_reachable: Callable[[], Awaitable[bool]]) -> None:
    """`GET /health/live` and `GET /health/ready` (docs/API.md, "Health")."""

    @app.get("/health/live", tags=["operations"], summary="200 while the process and its event loop answer")
    async def live() -> dict[str, str]:
        return {"service": service, "status": "alive"}

    @app.get(
        "/health/ready",
        tags=["operations"],
        summary="200 only when PostgreSQL and Kafka are reachable, migrations done and consumers assigned",
        responses={503: {"model": ErrorBody, "description": "`not_ready`: `failed` names the checks that failed"}},
    )
    async def ready(request: Request) -> JSONResponse:
        checks = await readiness(getattr(request.app.state, "runtime", None), kafka_reachable)
        failed = [name for name, state in checks.items() if state != "ok"]
        if not failed:
            return JSONResponse({"service": service, "status": "ready", "checks": checks})
        message = "not ready: " + "; ".join(f"{name} {checks[name]}" for name in failed)
        return error_response(
            503, "not_ready", message, headers={"Retry-After": "1"}, service=service, failed=failed, checks=checks
        )


async def _bounded(tasks: Iterable[asyncio.Task[Any]], grace_s: float, phase: str) -> None:
    """Wait for `tasks` at most `grace_s`, then cancel what is left."""
    waiting = {t for t in tasks if not t.done()}
    if not waiting:
        return
    _, pending = await asyncio.wait(waiting, timeout=grace_s)
    if pending:
        log.warning(
            "shutdown grace exceeded: cancelling",
            extra={"phase": phase, "tasks": sorted(t.get_name() for t in pending)},
        )
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=5)


async def shut_down(runtime: Runtime, grace_s: float) -> None:
    """Stop a started runtime in order (see the module docstring); in-flight HTTP requests
    are already answered when the lifespan ends."""
    runtime.draining = True
    runtime.stop.set()
    await _bounded(runtime.tasks, grace_s, "consumers and loops")
    runtime.relay_stop.set()
    await _bounded([runtime.relay_task] if runtime.relay_task else [], grace_s, "relay")
    for task in (*runtime.tasks, runtime.relay_task):
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("task ended with an error", extra={"task": task.get_name(), "error": repr(task.exception())})
    try:
        await asyncio.wait_for(runtime.pool.close(), timeout=grace_s)
    except (TimeoutError, OSError) as exc:
        log.warning("pool did not close in time: terminating", extra={"error": repr(exc)})
        runtime.pool.terminate()


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT; a SIGTERM ends it gracefully with status 0."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            runtime = getattr(app.state, "runtime", None)
            if runtime is not None:
                runtime.draining = True  # readiness says 503 before the listener closes
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",  # the C parser: h11 (pure Python) cost a tenth of the order service's CPU
        # In-flight requests get this long; open SSE streams must not hold a shutdown forever.
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)),
    )
    server = DrainingServer(config)
    # uvicorn re-raises the signal it stopped for once it is done, with the handler it found:
    # this one turns a finished graceful stop into exit status 0 instead of death by SIGTERM.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    if not server.started:
        sys.exit(_STARTUP_FAILURE)

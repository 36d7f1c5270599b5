"""SIGTERM faults: a graceful stop of one service under load, then its restart.

`kill-<service>` shows that a crash loses nothing; these show that an orderly stop (a deploy,
a scale-down, a node drain) is clean too: the service answers its in-flight requests, lets
its consumers commit their current batch, has its relay publish what the outbox holds, and
exits with status 0 within its SHUTDOWN_GRACE_S phases. It stays down for the rest of
`--fault-s` and is started again; the harness then checks, as for every fault, that no
acknowledged order was lost and no effect doubled. A stop that does not end in status 0
(or not at all within `STOP_TIMEOUT_S`) fails the fault.

Recorded: `exit_status`, `stop_s` (SIGTERM → exit), `restart_ready_s` (start → /health/ready 200).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
import psutil

if TYPE_CHECKING:
    from reliability.chaos.config import FaultResult
    from reliability.chaos.harness import ChaosHarness

#: The faults of this module (their descriptions are in `config.DESCRIPTIONS`).
FAULTS = ("sigterm-order", "sigterm-payment", "sigterm-shipping", "sigterm-query")
#: Longer than the three SHUTDOWN_GRACE_S phases (default 10 s each) a stop may take.
STOP_TIMEOUT_S = 60.0

Inject = Callable[["FaultResult"], Awaitable[None]]


def injector(h: ChaosHarness, fault: str) -> Inject:
    if fault not in FAULTS:
        raise ValueError(f"not a SIGTERM fault: {fault!r}")
    return lambda r: sigterm_service(h, fault.removeprefix("sigterm-"), r)


def _exit_status(process: psutil.Process, timeout_s: float) -> int | None:
    """The exit status of our child process (None: it did not exit in time, or was reaped elsewhere)."""
    try:
        status = process.wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        return None
    return status if isinstance(status, int) else None


async def sigterm_service(h: ChaosHarness, name: str, result: FaultResult) -> None:
    proc = h.service(name)
    pid = proc.pid()
    if pid is None:
        raise RuntimeError(f"{name} is not running")
    process = psutil.Process(pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(_exit_status, process, STOP_TIMEOUT_S)
    stop_s = round(time.monotonic() - started, 2)
    stopped = not process.is_running()
    if not stopped:
        await asyncio.to_thread(proc.kill)
    proc.forget()
    result.details.update(signalled_pid=pid, exit_status=status, stop_s=stop_s)
    await asyncio.sleep(max(h.config.fault_s - stop_s, 0.0))
    proc.start()
    t = time.monotonic()
    await wait_ready(h.stack.service_url(name))
    result.details["restart_ready_s"] = round(time.monotonic() - t, 2)
    if not stopped:
        raise RuntimeError(f"{name} did not stop within {STOP_TIMEOUT_S}s of SIGTERM (SIGKILLed)")
    if status != 0:
        raise RuntimeError(f"{name} exited with status {status} after SIGTERM, not 0")


async def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until GET /health/ready answers 200: the database, Kafka and its consumers are back."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                if (await client.get(url + "/health/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout_s}s")
            await asyncio.sleep(0.2)

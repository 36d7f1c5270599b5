"""Debug entry point: `python -m reliability._taskdump services.order` runs the module with a
SIGUSR1 handler that prints every asyncio task's await chain to stderr (a hung consumer or a
stuck commit shows up as the innermost awaited frame). `make chaos` uses it with CHAOS_TASKDUMP=1."""

from __future__ import annotations

import asyncio
import runpy
import signal
import sys
from types import FrameType
from typing import Any


def await_chain(awaitable: Any) -> list[str]:
    """file:line function for each coroutine in the await chain, then the awaited future."""
    out: list[str] = []
    seen = 0
    while awaitable is not None and seen < 64:
        seen += 1
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            out.append(f"awaiting {awaitable!r}"[:300])
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return out


def dump_tasks(signum: int = 0, frame: FrameType | None = None) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("taskdump: no running loop", file=sys.stderr, flush=True)
        return
    tasks = asyncio.all_tasks(loop)
    print(f"===== taskdump: {len(tasks)} tasks", file=sys.stderr)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"--- {task.get_name()} {'done' if task.done() else 'pending'}", file=sys.stderr)
        for line in await_chain(task.get_coro()):
            print(f"    {line}", file=sys.stderr)
    print("===== end taskdump", file=sys.stderr, flush=True)


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m reliability._taskdump <module> [args…]", file=sys.stderr)
        sys.exit(2)
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    signal.signal(signal.SIGUSR1, dump_tasks)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

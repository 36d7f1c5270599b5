"""Running every fault on one private stack, the results table and `python -m reliability chaos`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reliability.chaos.config import (
    ALL_FAULTS,
    DESCRIPTIONS,
    REDUCED_FAULTS,
    SERVICE_NAMES,
    ChaosConfig,
    FaultResult,
    log,
)
from reliability.chaos.harness import ChaosHarness
from reliability.load import Mix


def render_table(results: Sequence[FaultResult]) -> str:
    header = f"{'fault':<20} {'placed':>7} {'refused':>8} {'lost':>5} {'dup':>4} {'recovery_s':>11}  {'audit':<6} notes"
    lines = [header, "-" * len(header)]
    for r in results:
        recovery = f"{r.recovery_s:.1f}" if r.recovery_s is not None else "never"
        notes = r.error or (", ".join(f"{k}={v}" for k, v in r.violations.items()) if r.violations else "")
        lines.append(
            f"{r.fault:<20} {r.placed:>7} {r.refused:>8} {r.lost:>5} {r.duplicates:>4} {recovery:>11}  "
            f"{'pass' if r.audit_ok else 'FAIL':<6} {notes}"
        )
    total_placed = sum(r.placed for r in results)
    total_lost = sum(r.lost for r in results)
    total_dup = sum(r.duplicates for r in results)
    lines.append("-" * len(header))
    lines.append(f"{'total':<20} {total_placed:>7} {sum(r.refused for r in results):>8} {total_lost:>5} {total_dup:>4}")
    return "\n".join(lines)


async def run_chaos(config: ChaosConfig, harness: ChaosHarness | None = None) -> dict[str, Any]:
    """Start the private stack (unless given), run every fault, write the JSON, return it."""
    own = harness is None
    harness = harness or ChaosHarness(config)
    started = time.monotonic()
    results: list[FaultResult] = []
    report: dict[str, Any] = {}
    try:
        if own:
            await asyncio.to_thread(harness.start)
        for fault in config.faults:
            try:
                await harness.wait_healthy(SERVICE_NAMES, timeout_s=120)
                results.append(await harness.run_fault(fault))
            except Exception as exc:
                r = FaultResult(fault, DESCRIPTIONS.get(fault, fault), error=repr(exc))
                results.append(r)
                log(f"{fault}: harness error {exc!r}")
    finally:
        report = {
            "started_at": datetime.now(UTC).isoformat(),
            "ok": bool(results) and all(r.ok for r in results) and len(results) == len(config.faults),
            "config": {k: (str(v) if isinstance(v, (Path, Mix)) else v) for k, v in asdict(config).items()},
            "timings": {**harness.timings, "total_s": round(time.monotonic() - started, 2)},
            "faults": [r.to_dict() for r in results],
            "totals": {
                "placed": sum(r.placed for r in results),
                "lost": sum(r.lost for r in results),
                "duplicates": sum(r.duplicates for r in results),
            },
        }
        if own:
            await asyncio.to_thread(harness.stop)
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    d = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m reliability chaos",
        description="faults under a running load, each followed by recovery and the audit",
    )
    parser.add_argument(
        "--faults",
        default=",".join(ALL_FAULTS),
        help=f"comma-separated (default all): {', '.join(ALL_FAULTS)}; 'reduced' = {','.join(REDUCED_FAULTS)}",
    )
    parser.add_argument(
        "--rate", type=float, default=d.rate, help=f"orders/s offered during each fault (default {d.rate})"
    )
    parser.add_argument("--pre-s", type=float, default=d.pre_s, help="load before the fault starts")
    parser.add_argument(
        "--fault-s", type=float, default=d.fault_s, help="how long a fault lasts (down time, proxy mode)"
    )
    parser.add_argument("--post-s", type=float, default=d.post_s, help="load after the fault ended")
    parser.add_argument("--sigstop-s", type=float, default=d.sigstop_s, help="SIGSTOP duration (> saga timeout)")
    parser.add_argument("--saga-timeout-s", type=float, default=d.saga_timeout_s, help="SAGA_STEP_TIMEOUT_S of the run")
    parser.add_argument("--recovery-timeout-s", type=float, default=d.recovery_timeout_s)
    parser.add_argument("--latency-ms", type=float, default=d.latency_ms)
    parser.add_argument("--mix", default="90,5,5", help="happy,decline,unserved shares")
    parser.add_argument("--cancel-ratio", type=float, default=d.cancel_ratio, help="share of placed orders cancelled")
    parser.add_argument(
        "--proxied",
        choices=SERVICE_NAMES,
        default=d.proxied,
        help="the service whose PostgreSQL and Kafka connections go through the fault proxies",
    )
    parser.add_argument("--out", type=Path, default=d.out, help="JSON report path")
    parser.add_argument("--run-dir", type=Path, default=None, help="run dir of the private stack (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, data) afterwards")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = (
        REDUCED_FAULTS if args.faults == "reduced" else tuple(f.strip() for f in args.faults.split(",") if f.strip())
    )
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        print(f"unknown faults: {unknown}; known: {', '.join(ALL_FAULTS)}", file=sys.stderr)
        return 2
    config = ChaosConfig(
        rate=args.rate,
        pre_s=args.pre_s,
        fault_s=args.fault_s,
        post_s=args.post_s,
        sigstop_s=args.sigstop_s,
        saga_timeout_s=args.saga_timeout_s,
        recovery_timeout_s=args.recovery_timeout_s,
        latency_ms=args.latency_ms,
        faults=faults,
        mix=Mix.parse(args.mix),
        cancel_ratio=args.cancel_ratio,
        proxied=args.proxied,
        out=args.out,
        run_dir=args.run_dir,
        keep=args.keep,
        seed=args.seed,
    )
    report = asyncio.run(run_chaos(config))
    results = [FaultResult(**{k: v for k, v in f.items() if k != "ok"}) for f in report["faults"]]
    print(render_table(results))
    print(f"report: {config.out}  ({report['timings'].get('total_s')}s)")
    print("CHAOS PASSED" if report["ok"] else "CHAOS FAILED")
    return 0 if report["ok"] else 1

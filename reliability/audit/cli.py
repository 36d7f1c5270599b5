"""Running the audit: once, until it passes, and `python -m reliability audit`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable, Sequence

from reliability.audit.checks import check
from reliability.audit.config import AuditConfig
from reliability.audit.reading import collect
from reliability.audit.report import AuditReport


async def run_audit(config: AuditConfig, expected_orders: Iterable[str] = ()) -> AuditReport:
    started = time.monotonic()
    snapshot = await collect(config)
    report = check(snapshot, config, expected_orders)
    report.elapsed_s = time.monotonic() - started
    return report


async def audit_until_ok(
    config: AuditConfig, settle_s: float, expected_orders: Iterable[str] = (), interval_s: float = 2.0
) -> AuditReport:
    """Re-run the audit until it passes or `settle_s` went by; the last report."""
    expected = list(expected_orders)
    deadline = time.monotonic() + settle_s
    while True:
        report = await run_audit(config, expected)
        if report.ok or time.monotonic() >= deadline:
            return report
        await asyncio.sleep(interval_s)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m reliability audit",
        description="a consistency checker over every service's event log, the topics and the views",
    )
    parser.add_argument("--order-dsn", help="order database (env AUDIT_ORDER_DSN)")
    parser.add_argument("--payment-dsn", help="payment database (env AUDIT_PAYMENT_DSN)")
    parser.add_argument("--shipping-dsn", help="shipping database (env AUDIT_SHIPPING_DSN)")
    parser.add_argument("--query-dsn", help="query database, for --views db (env AUDIT_QUERY_DSN)")
    parser.add_argument("--kafka", dest="kafka_bootstrap", help="Kafka bootstrap (env AUDIT_KAFKA_BOOTSTRAP)")
    parser.add_argument("--query-url", help="query service base URL (env AUDIT_QUERY_URL)")
    parser.add_argument(
        "--auth-dir",
        help="the stack's development key dir, to read the views as admin (env AUDIT_AUTH_DIR; RUN_DIR/auth)",
    )
    parser.add_argument("--saga-timeout-s", type=float, help="SAGA_STEP_TIMEOUT_S of the order service (default 30)")
    parser.add_argument("--pending-slack-s", type=float, help="slack beyond the saga timeout (default 30)")
    parser.add_argument(
        "--grace-s", type=float, help="skip lag-sensitive checks for orders active this recently (default 2)"
    )
    parser.add_argument("--views", choices=("http", "db", "off"), help="where to read the query views (default http)")
    parser.add_argument("--no-topics", action="store_true", help="skip the Kafka topic checks")
    parser.add_argument(
        "--settle-s", type=float, default=0.0, help="re-run until it passes or this many seconds went by"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--limit", type=int, default=200, help="violations printed (default 200)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0 if the audit passed, 1 on any violation, 2 if it could not read something."""
    config = AuditConfig.from_env(
        order_dsn=args.order_dsn,
        payment_dsn=args.payment_dsn,
        shipping_dsn=args.shipping_dsn,
        query_dsn=args.query_dsn,
        kafka_bootstrap=args.kafka_bootstrap,
        query_url=args.query_url,
        auth_dir=args.auth_dir,
        saga_timeout_s=args.saga_timeout_s,
        pending_slack_s=args.pending_slack_s,
        grace_s=args.grace_s,
        views=args.views,
        check_topics=False if args.no_topics else None,
    )
    try:
        report = asyncio.run(audit_until_ok(config, args.settle_s))
    except Exception as exc:  # cannot read a log / topic / view: say which, exit 2
        print(f"audit could not run: {exc!r}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.render(args.limit))
    return 0 if report.ok else 1

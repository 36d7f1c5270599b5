"""`python -m infra up|down|ps|logs|kafka-jars|watch|dlq|token`: the no-Docker way to run the system locally.

Configuration comes from the environment (see infra/settings.py): RUN_DIR (default .run),
KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_BROKERS (1; 3 = a 3-node KRaft cluster), PG_PORT (5432),
PG_USE_EMBEDDED, PG_BIN_DIR, ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from infra.kafka_broker import ensure_jars, kafka_version, port_open
from infra.postgres import DATABASES
from infra.procs import POLL_S, list_records, tail
from infra.services import SERVICES
from infra.settings import InfraSettings
from infra.stack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_READY_TIMEOUT_S = float(os.environ.get("SERVICE_READY_TIMEOUT_S", "60"))


def _rel(p: Path | str) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def cmd_up(args: argparse.Namespace) -> int:
    stack = LocalStack.from_settings()
    print(f"run dir: {_rel(stack.run_dir)}")
    t = time.monotonic()
    stack.start()
    brokers = stack.kafka_brokers
    rf, min_isr = stack.kafka_replication
    for b in brokers:
        role = f"node {b.node_id} of {len(brokers)}, " if len(brokers) > 1 else ""
        print(
            f"{b.name:<9} {b.bootstrap:<22} (KRaft {kafka_version()}, {role}controller :{b.controller_port})"
            f"  ready in {stack.timings.get('kafka_ready_s', 0):.1f}s   log {_rel(b.log_path)}"
        )
    if len(brokers) > 1:
        print(f"kafka     bootstrap {stack.kafka_bootstrap}; topics: replication factor {rf}, min ISR {min_isr}")
    print(
        f"postgres  127.0.0.1:{stack.pg_port:<12} (dbs {', '.join(DATABASES)}; role app/app)"
        f"  ready in {stack.timings.get('postgres_ready_s', 0):.1f}s   log {_rel(stack.postgres.log_path)}"
    )
    rc = 0
    if not args.no_services:
        rc = _start_services(stack)
    print(f"up in {time.monotonic() - t:.1f}s; `make ps` to list, `make down` to stop")
    return rc


def _start_services(stack: LocalStack) -> int:
    """Start every service whose module exists and wait for its GET /health."""
    import httpx

    procs = [(svc, stack.service_process(svc.name, cwd=REPO_ROOT)) for svc in SERVICES]
    present = [(svc, p) for svc, p in procs if p.module_exists()]
    missing = [svc.module for svc, p in procs if not p.module_exists()]
    if missing:
        print(f"services not present yet (skipped): {', '.join(missing)}")
    for _, p in present:
        p.start()
    rc = 0
    deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
    for svc, p in present:
        url = f"http://127.0.0.1:{svc.port()}/health"
        status = "starting"
        while time.monotonic() < deadline:
            if not p.is_alive():
                status = "EXITED"
                break
            if port_open(svc.port()):
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        status = "healthy"
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(POLL_S)
        else:
            status = "not healthy yet"
        print(f"{svc.name:<9} http://127.0.0.1:{svc.port():<8} pid {p.pid() or '-'}  {status}   log {_rel(p.log_path)}")
        if status == "EXITED":
            print(tail(p.log_path, 20), file=sys.stderr)
            rc = 1
    return rc


def cmd_down(args: argparse.Namespace) -> int:
    stack = LocalStack.from_settings()
    before = stack.live_pids()
    stack.stop()
    if args.purge:
        stack.postgres.purge()
        shutil.rmtree(stack.run_dir, ignore_errors=True)
    left = stack.live_pids()
    for name, pid in before.items():
        print(f"stopped {name} (pid {pid})")
    if not before:
        print(f"nothing running in {_rel(stack.run_dir)}")
    if left:
        print(f"still alive: {left}", file=sys.stderr)
        return 1
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    s = InfraSettings()
    recs = list_records(s.run_dir)
    if not recs:
        print(f"nothing started in {_rel(s.run_dir)}")
        return 0
    print(f"{'NAME':<10} {'PID':>7}  {'STATE':<6} {'PORTS':<12} LOG")
    for r in recs:
        state = "alive" if r.alive() else "dead"
        ports = ",".join(str(p) for p in r.ports) or "-"
        print(f"{r.name:<10} {r.pid:>7}  {state:<6} {ports:<12} {_rel(r.log)}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    s = InfraSettings()
    log_dir = Path(s.run_dir) / "logs"
    names: list[str] = args.names or sorted(p.stem for p in log_dir.glob("*.log"))
    files = [f for n in names for f in _log_files(log_dir, n)]
    if not files:
        print(f"no logs in {_rel(log_dir)} for {names or 'anything'}", file=sys.stderr)
        return 1
    if args.follow:
        os.execvp("tail", ["tail", "-n", str(args.lines), "-F", *map(str, files)])
    for f in files:
        print(f"==> {_rel(f)} <==")
        print(tail(f, args.lines))
    return 0


def _log_files(log_dir: Path, name: str) -> list[Path]:
    """`<name>.log`, or for `kafka` on a cluster each node's `kafka-<n>.log`."""
    exact = log_dir / f"{name}.log"
    nodes = sorted(p for p in log_dir.glob(f"{name}-*.log") if p.stem[len(name) + 1 :].isdigit())
    return ([exact] if exact.exists() else []) + nodes


def cmd_kafka_jars(args: argparse.Namespace) -> int:
    s = InfraSettings()
    t = time.monotonic()
    lib = ensure_jars(s.kafka_lib_dir)
    print(f"Kafka {kafka_version()} jars in {lib} ({len(list(lib.glob('*.jar')))} jars, {time.monotonic() - t:.1f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start Kafka + PostgreSQL (+ the services that exist) in the background")
    up.add_argument("--no-services", action="store_true", help="only Kafka and PostgreSQL")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop exactly what `up` started, by PID")
    down.add_argument("--purge", action="store_true", help="also delete the run dir (all data)")
    down.set_defaults(func=cmd_down)
    sub.add_parser("ps", help="list the processes with PID, state and ports").set_defaults(func=cmd_ps)
    logs = sub.add_parser("logs", help="tail the log files (all, or the names given)")
    logs.add_argument("names", nargs="*", help="kafka, postgres, order, ... (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=cmd_logs)
    sub.add_parser("kafka-jars", help="fetch the Kafka broker jars with Maven (once)").set_defaults(func=cmd_kafka_jars)
    sub.add_parser("watch", help="print every message on the topics live (see infra/watch.py)", add_help=False)
    sub.add_parser("dlq", help="list the dead letters, replay one (see infra/dlq.py)", add_help=False)
    sub.add_parser("token", help="mint a development bearer token (see infra/tokens.py)", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["watch"]:
        from infra.watch import main as watch_main

        return watch_main(argv[1:])
    if argv[:1] == ["dlq"]:
        from infra.dlq import main as dlq_main

        return dlq_main(argv[1:])
    if argv[:1] == ["token"]:
        from infra.tokens import main as token_main

        return token_main(argv[1:])
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc

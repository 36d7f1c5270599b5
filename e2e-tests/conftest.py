"""End-to-end session: which running system the tests talk to, and how it is started.

The tests are black-box: they reach the system only over HTTP and Kafka through `client.py`
(which imports nothing from `services/`, `shared/` or `infra/`). Only this file may use
`infra.stack`, to start a stack of its own. The system under test is chosen by the
environment, first match wins:

1. **External stack** - `E2E_ORDER_URL`, `E2E_PAYMENT_URL`, `E2E_SHIPPING_URL`, `E2E_QUERY_URL`
   and `E2E_KAFKA_BOOTSTRAP` all set: any running stack given by its base URLs (compose,
   a staging box, ...). Nothing is started or stopped. Tests that must freeze a service
   process (participant timeouts) are skipped: we do not own its processes.
2. **`make up` stack** - `E2E_USE_MAKE_UP=1`: the stack of `make up` at its addresses
   (defaults 127.0.0.1:8001-8004 and Kafka 127.0.0.1:9092, or `ORDER_PORT`, ...,
   `KAFKA_PORT`, `RUN_DIR` as in infra/README.md). Nothing is started or stopped; the
   timeout tests freeze a service by the PID that `make up` recorded in `RUN_DIR/pids/`
   (SIGSTOP) and always resume it (SIGCONT).
3. **Testcontainers** - `E2E_TESTCONTAINERS=1`: Kafka and PostgreSQL in containers
   (testcontainers; needs a reachable Docker engine, else the session fails with
   "no Docker engine"), the four services as local processes pointed at them, on free ports.
4. **Private local stack** (the default, `make test`, `make e2e`, CI): the project's own
   infra starts Kafka, PostgreSQL and the four services on free ports in a temporary
   directory, with `SAGA_STEP_TIMEOUT_S=4` (`E2E_SAGA_STEP_TIMEOUT_S`) so the timeout journeys
   are quick; stopped by PID and purged when the session ends. It never touches a stack the
   user is running.

Bearer tokens (docs/API.md, "Authorization"): the client gets a token maker. For the private,
`make up` and testcontainers stacks it signs with that stack's development key
(`<run dir>/auth/signing-key.pem`, infra/tokens.py). An external stack must say how:
`E2E_SIGNING_KEY_FILE` (the PEM EC P-256 private key whose public half, with the RFC 7638
thumbprint `kid` that infra/tokens.py gives it, is in the services' JWKS; `make up` writes
`.run/auth/signing-key.pem`), with `E2E_AUTH_ISSUER` / `E2E_AUTH_AUDIENCE` when the services
do not use the defaults (events-first-dev / events-first).

Other knobs: `E2E_FLOW_TIMEOUT_S` (default 30) bounds every wait for an asynchronous outcome;
`E2E_KEEP_STACK=1` leaves the private stack running (its run dir is printed) for a post-mortem.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from client import Endpoints, SystemClient, TokenMaker, new_customer, order_body
from streams import KafkaTap

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("order", "payment", "shipping", "query")
STEP_TIMEOUT_S = float(os.environ.get("E2E_SAGA_STEP_TIMEOUT_S", "4"))
FLOW_TIMEOUT_S = float(os.environ.get("E2E_FLOW_TIMEOUT_S", "30"))

Signaller = Callable[[str, int], bool]


@dataclass
class SystemUnderTest:
    """Where the system is, and what this session may do to its processes."""

    mode: str  # "external" | "make-up" | "testcontainers" | "private"
    endpoints: Endpoints
    # The saga step timeout the services run with, when this session chose it.
    step_timeout_s: float | None
    # Send a signal to a service's process (by the PID we or `make up` recorded); None: not ours.
    signal: Signaller | None = None
    flow_timeout_s: float = FLOW_TIMEOUT_S
    # A DSN that may read every table of the named database of the stack's PostgreSQL, and the
    # directory its processes log to: None when the stack is not ours to inspect.
    pg_dsn: Callable[[str], str] | None = None
    log_dir: Path | None = None
    # Signs bearer tokens the services accept (see "Bearer tokens" above).
    signer: Signer | None = None

    @property
    def tokens(self) -> TokenMaker:
        assert self.signer is not None, "no signing key for this stack"
        return self.signer.make

    @property
    def can_pause(self) -> bool:
        return self.signal is not None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Signer:
    """The stack's signing key: good tokens for the client, and bad ones for test_authorization."""

    keys: Any  # infra.tokens.DevKeys

    def make(self, role: str, customer_id: str | None) -> str:
        from shared.auth import Role

        token: str = self.keys.mint(role=Role(role), customer_id=customer_id)
        return token

    def bad_tokens(self) -> dict[str, str]:
        """One token of each kind the services must refuse with 401, by name."""
        import base64
        import hashlib
        import hmac
        import json

        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        now = int(time.time())
        claims = {"iss": self.keys.issuer, "aud": self.keys.audience, "sub": "staff", "role": "admin"}
        claims |= {"iat": now, "exp": now + 600}
        kid = {"kid": self.keys.kid}

        def signed(key: Any = None, headers: dict[str, str] | None = None, **changes: Any) -> str:
            token: str = jwt.encode(
                {**claims, **changes}, key or self.keys.private_key, algorithm="ES256", headers=headers or kid
            )
            return token

        head_none = b64(json.dumps({"alg": "none", "typ": "JWT", **kid}).encode())
        head_hs = b64(json.dumps({"alg": "HS256", "typ": "JWT", **kid}).encode())
        body = b64(json.dumps(claims).encode())
        public = self.keys.jwks_path.read_bytes()
        mac = b64(hmac.new(public, f"{head_hs}.{body}".encode(), hashlib.sha256).digest())
        return {
            "malformed": "not-a-jwt",
            "expired": signed(iat=now - 120, exp=now - 60),
            "wrong_signature": signed(key=ec.generate_private_key(ec.SECP256R1())),
            "unknown_kid": signed(headers={"kid": "no-such-key"}),
            "wrong_audience": signed(aud="someone-else"),
            "wrong_issuer": signed(iss="https://evil.example"),
            "alg_none": f"{head_none}.{body}.",
            "hs256_with_public_key": f"{head_hs}.{body}.{mac}",
            "no_role": jwt.encode(
                {k: v for k, v in claims.items() if k != "role"}, self.keys.private_key, algorithm="ES256", headers=kid
            ),
        }


def _signer(key_dir: Path, issuer: str | None = None, audience: str | None = None) -> Signer:
    """The development key in `key_dir` (created there if absent)."""
    from dataclasses import replace

    from infra.tokens import ensure_dev_keys

    keys = ensure_dev_keys(key_dir)
    return Signer(replace(keys, issuer=issuer or keys.issuer, audience=audience or keys.audience))


def _external_signer() -> Signer:
    key_file = os.environ.get("E2E_SIGNING_KEY_FILE", "").strip()
    if not key_file:
        raise RuntimeError("an external stack needs E2E_SIGNING_KEY_FILE (its signing key) to make tokens")
    return _signer(
        Path(key_file).parent,
        os.environ.get("E2E_AUTH_ISSUER", "").strip() or None,
        os.environ.get("E2E_AUTH_AUDIENCE", "").strip() or None,
    )


# --------------------------------------------------------------------------- the stacks


def _private_stack(tmp: Path) -> Iterator[SystemUnderTest]:
    from infra.stack import LocalStack, free_ports

    kafka_port, controller_port, pg_port, *service_ports = free_ports(3 + len(SERVICES))
    ports = dict(zip(SERVICES, service_ports))
    stack = LocalStack(tmp / "stack", kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
    t = time.monotonic()
    try:
        stack.start()
        stack.start_services(
            SERVICES,
            cwd=REPO_ROOT,
            ports=ports,
            env={"order": {"SAGA_STEP_TIMEOUT_S": str(STEP_TIMEOUT_S)}},
        )
        stack.wait_healthy(SERVICES, timeout_s=120)
        _say(
            f"private stack up in {time.monotonic() - t:.1f}s: run dir {stack.run_dir}, kafka "
            f"{stack.kafka_bootstrap}, services {ports}"
        )
        endpoints = Endpoints(
            order=stack.service_url("order"),
            payment=stack.service_url("payment"),
            shipping=stack.service_url("shipping"),
            query=stack.service_url("query"),
            kafka=stack.kafka_bootstrap,
        )

        def send(name: str, sig: int) -> bool:
            return stack.service_process(name).send_signal(sig)

        yield SystemUnderTest(
            "private",
            endpoints,
            STEP_TIMEOUT_S,
            send,
            pg_dsn=stack.pg_admin_dsn,
            log_dir=stack.run_dir / "logs",
            signer=_signer(stack.run_dir / "auth"),
        )
    finally:
        if _env_flag("E2E_KEEP_STACK"):
            _say(f"E2E_KEEP_STACK=1: left running in {stack.run_dir} (RUN_DIR=... python -m infra down --purge)")
        else:
            stack.purge()


def _make_up_stack() -> Iterator[SystemUnderTest]:
    from infra.stack import LocalStack

    stack = LocalStack.from_settings()
    endpoints = Endpoints(
        order=stack.service_url("order"),
        payment=stack.service_url("payment"),
        shipping=stack.service_url("shipping"),
        query=stack.service_url("query"),
        kafka=stack.kafka_bootstrap,
    )
    pids = stack.live_pids()
    missing = [s for s in SERVICES if s not in pids]
    if missing:
        raise RuntimeError(f"E2E_USE_MAKE_UP=1 but {missing} not running from {stack.run_dir}: run `make up` first")

    def send(name: str, sig: int) -> bool:
        return stack.service_process(name).send_signal(sig)

    yield SystemUnderTest(
        "make-up",
        endpoints,
        None,
        send,
        pg_dsn=stack.pg_admin_dsn,
        log_dir=stack.run_dir / "logs",
        signer=_signer(stack.run_dir / "auth"),
    )


def _testcontainers_stack(tmp: Path) -> Iterator[SystemUnderTest]:
    try:
        # (imported by name: the repo's own docker/ directory would shadow it for mypy)
        docker = importlib.import_module("docker")
        docker.from_env().ping()
    except Exception as exc:  # docker missing, no socket, daemon down, ...
        raise RuntimeError(
            f"E2E_TESTCONTAINERS=1 but there is no Docker engine reachable ({type(exc).__name__}: {exc}); "
            "unset E2E_TESTCONTAINERS to run against a private local stack instead"
        ) from exc
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    from infra.stack import ServiceProcess, free_ports

    kafka_image = os.environ.get("E2E_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    pg_image = os.environ.get("E2E_POSTGRES_IMAGE", "postgres:16-alpine")
    with (
        KafkaContainer(kafka_image).with_kraft() as kafka,
        PostgresContainer(pg_image, username="app", password="app", dbname="postgres", driver=None) as pg,
    ):
        for db in ("order", "payment", "shipping", "query"):
            res = pg.exec(["psql", "-U", "app", "-d", "postgres", "-c", f'CREATE DATABASE "{db}" OWNER app'])
            if res.exit_code != 0:
                raise RuntimeError(f"creating database {db} failed: {res.output!r}")
        pg_host, pg_port = pg.get_container_host_ip(), pg.get_exposed_port(5432)
        bootstrap = kafka.get_bootstrap_server()
        ports = dict(zip(SERVICES, free_ports(len(SERVICES))))
        from infra.tokens import ensure_dev_keys

        auth_env = ensure_dev_keys(tmp / "auth").env()
        procs: dict[str, ServiceProcess] = {}
        for name in SERVICES:
            env = {
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(ports[name]),
                f"{name.upper()}_PORT": str(ports[name]),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "DATABASE_URL": f"postgresql://app:app@{pg_host}:{pg_port}/{name}",
                **auth_env,
            }
            if name == "order":
                env["SAGA_STEP_TIMEOUT_S"] = str(STEP_TIMEOUT_S)
            procs[name] = ServiceProcess(
                name, f"services.{name}", run_dir=tmp / "tc", env=env, cwd=REPO_ROOT, ports=[ports[name]]
            )
        try:
            for p in procs.values():
                p.start()
            url = {n: f"http://127.0.0.1:{ports[n]}" for n in SERVICES}
            endpoints = Endpoints(
                order=url["order"],
                payment=url["payment"],
                shipping=url["shipping"],
                query=url["query"],
                kafka=bootstrap,
            )

            def send(name: str, sig: int) -> bool:
                return procs[name].send_signal(sig)

            def dsn(database: str) -> str:  # `app` created the container's cluster: its superuser
                return f"postgresql://app:app@{pg_host}:{pg_port}/{database}"

            yield SystemUnderTest(
                "testcontainers",
                endpoints,
                STEP_TIMEOUT_S,
                send,
                pg_dsn=dsn,
                log_dir=tmp / "tc" / "logs",
                signer=_signer(tmp / "auth"),
            )
        finally:
            for p in procs.values():
                p.stop()


@pytest.fixture(scope="session")
def sut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemUnderTest]:
    external = Endpoints.from_env()
    if external is not None:
        _say(f"external stack: {external}")
        yield SystemUnderTest("external", external, None, None, signer=_external_signer())
    elif _env_flag("E2E_USE_MAKE_UP"):
        yield from _make_up_stack()
    elif _env_flag("E2E_TESTCONTAINERS"):
        yield from _testcontainers_stack(tmp_path_factory.mktemp("e2e-tc"))
    else:
        yield from _private_stack(tmp_path_factory.mktemp("e2e"))


async def _warm_up(client: SystemClient) -> None:
    """Wait until the system answers and one order goes all the way (consumers assigned)."""
    await client.wait_healthy(SERVICES, timeout=120)
    outcomes: list[str] = []
    for _ in range(5):
        placed = await client.place_ok(order_body(new_customer("warmup")))
        order = await client.wait_order(placed["order_id"], {"CONFIRMED", "REJECTED", "CANCELLED"}, timeout=90)
        outcomes.append(f"{order['status']}:{order.get('reason')}")
        if order["status"] == "CONFIRMED":
            await client.wait_view(placed["order_id"], lambda v: v["status"] == "CONFIRMED", timeout=90)
            return
    raise RuntimeError(f"warm-up orders never got CONFIRMED: {outcomes}")


@pytest.fixture(scope="session")
async def client(sut: SystemUnderTest) -> AsyncIterator[SystemClient]:
    async with SystemClient(sut.endpoints, sut.tokens) as c:
        try:
            await _warm_up(c)
        except Exception as exc:
            raise RuntimeError(f"the system under test ({sut.mode}, {sut.endpoints}) is not usable: {exc}") from exc
        yield c


@pytest.fixture(scope="session")
def bad_tokens(sut: SystemUnderTest) -> dict[str, str]:
    """Tokens the services must refuse with 401, by kind (Signer.bad_tokens)."""
    assert sut.signer is not None
    return sut.signer.bad_tokens()


@pytest.fixture
async def tap(sut: SystemUnderTest) -> AsyncIterator[KafkaTap]:
    """A Kafka reader of every topic of docs/EVENTS.md from this moment on."""
    async with KafkaTap(sut.endpoints.kafka) as t:
        yield t


PauseService = Callable[[str], AbstractAsyncContextManager[None]]


@pytest.fixture
def pause_service(sut: SystemUnderTest, client: SystemClient) -> PauseService:
    """`async with pause_service("shipping"):` freezes that service's process (SIGSTOP) and
    always resumes it (SIGCONT) and waits for its /health afterwards."""
    if sut.signal is None:
        pytest.skip(f"needs to freeze a service process; the {sut.mode} stack's processes are not ours")
    send = sut.signal

    @asynccontextmanager
    async def pause(name: str) -> AsyncIterator[None]:
        if not send(name, signal.SIGSTOP):
            raise RuntimeError(f"{name} is not running (no live PID)")
        try:
            yield
        finally:
            send(name, signal.SIGCONT)
            await client.wait_healthy([name], timeout=60)

    return pause

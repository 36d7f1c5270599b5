"""The application services that `make up` runs next to Kafka and PostgreSQL.

One list, in one place: add a row when a service exists. Rows whose module cannot be imported
yet are skipped, so `make up` works at every stage of the project.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.postgres import KEYSTORE_DATABASE
from infra.procs import ServiceProcess
from infra.tokens import ensure_dev_keys

if TYPE_CHECKING:
    from infra.stack import LocalStack


@dataclass(frozen=True)
class ServiceDef:
    """How to run one service: `python -m <module>` with its port and database in the env."""

    name: str
    module: str
    default_port: int
    database: str | None  # PostgreSQL database it owns (README: addresses)
    keystore: bool = False  # given KEYSTORE_URL: it reads personal data (payment does not)
    upstreams: tuple[str, ...] = ()  # services it calls over HTTP: `<NAME>_URL` in its env

    @property
    def port_env(self) -> str:
        return f"{self.name.upper()}_PORT"

    def port(self) -> int:
        return int(os.environ.get(self.port_env, self.default_port))


SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef("order", "services.order", 8001, "order", keystore=True),
    ServiceDef("payment", "services.payment", 8002, "payment"),
    ServiceDef("shipping", "services.shipping", 8003, "shipping", keystore=True),
    ServiceDef("query", "services.query", 8004, "query", keystore=True),
    ServiceDef("ui", "services.ui", 8000, None, upstreams=("order", "payment", "shipping", "query")),
)


def default_service_env(stack: LocalStack, svc: ServiceDef) -> dict[str, str]:
    """Environment a service gets from the stack (names as read by shared.settings.ServiceSettings):
    its port, Kafka, its database, and the keys it trusts (`auth_env`)."""
    env = {
        **auth_env(stack),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(svc.port()),
        svc.port_env: str(svc.port()),
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
    }
    if svc.database:
        env["DATABASE_URL"] = stack.service_dsn(svc.name, svc.database)
    if svc.keystore:
        env["KEYSTORE_URL"] = stack.service_dsn(svc.name, KEYSTORE_DATABASE)
    for name in svc.upstreams:
        env[f"{name.upper()}_URL"] = stack.service_url(name)
    if svc.name == "ui":
        env["UI_DEV_KEYS_DIR"] = str(stack.run_dir / "auth")
    return env


def auth_env(stack: LocalStack) -> dict[str, str]:
    """The keys the stack's services trust: its development JWKS under `<run_dir>/auth/`
    (created once, infra/tokens.py), whatever this process's environment says, so that the
    tools signing with that key (`python -m infra token`, the bench, the chaos load) always fit."""
    return ensure_dev_keys(stack.run_dir / "auth").env()


SERVICE_ENV: Callable[[LocalStack, ServiceDef], dict[str, str]] = default_service_env


def service_process(stack: LocalStack, svc: ServiceDef, cwd: Path | None = None) -> ServiceProcess:
    return ServiceProcess(
        svc.name,
        svc.module,
        run_dir=stack.run_dir,
        env=SERVICE_ENV(stack, svc),
        cwd=cwd,
        ports=[svc.port()],
    )

"""Where the audit looks and how strict it is; the defaults are `make up`'s addresses."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any


def _env(*names: str, default: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


@dataclass(frozen=True)
class AuditConfig:
    order_dsn: str
    payment_dsn: str
    shipping_dsn: str
    query_dsn: str
    kafka_bootstrap: str
    query_url: str
    #: The stack's development key dir (infra/tokens.py): the views are read with an admin token.
    auth_dir: str = ".run/auth"
    saga_timeout_s: float = 30.0
    pending_slack_s: float = 30.0
    grace_s: float = 2.0
    check_topics: bool = True
    views: str = "http"  # http | db | off
    kafka_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, **overrides: Any) -> AuditConfig:
        """AUDIT_* variables first, then the stack's own (PG_PORT, KAFKA_PORT, QUERY_PORT …)."""
        pg_port = os.environ.get("PG_PORT", "5432")

        def dsn(db: str) -> str:
            return _env(f"AUDIT_{db.upper()}_DSN", default=f"postgresql://app:app@127.0.0.1:{pg_port}/{db}")

        config = cls(
            order_dsn=dsn("order"),
            payment_dsn=dsn("payment"),
            shipping_dsn=dsn("shipping"),
            query_dsn=dsn("query"),
            kafka_bootstrap=_env(
                "AUDIT_KAFKA_BOOTSTRAP",
                "KAFKA_BOOTSTRAP_SERVERS",
                default=f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
            ),
            query_url=_env("AUDIT_QUERY_URL", default=f"http://127.0.0.1:{os.environ.get('QUERY_PORT', '8004')}"),
            auth_dir=_env("AUDIT_AUTH_DIR", default=f"{os.environ.get('RUN_DIR', '.run')}/auth"),
            saga_timeout_s=float(_env("AUDIT_SAGA_TIMEOUT_S", "SAGA_STEP_TIMEOUT_S", default="30")),
            pending_slack_s=float(_env("AUDIT_PENDING_SLACK_S", default="30")),
            grace_s=float(_env("AUDIT_GRACE_S", default="2")),
            views=_env("AUDIT_VIEWS", default="http"),
        )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})

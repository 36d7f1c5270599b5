"""The query service's configuration: environment variables with documented defaults."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.contract import EVENT_TOPICS
from shared.settings import ServiceSettings


class QuerySettings(ServiceSettings):
    """Query settings; everything in `ServiceSettings` plus:

    DATABASE_URL               the views database (default postgresql://query_service:query_service@127.0.0.1:5432/query)
    KEYSTORE_URL               the key store, read-only: opens personal fields for the timeline and the SSE feed
                               (default postgresql://query_service:query_service@127.0.0.1:5432/keystore)
    HTTP_PORT                  REST port (default 8004; QUERY_PORT is accepted too, as `make up` sets it)
    QUERY_TOPICS               comma-separated event topics the views are built from
                               (default: the contract's three event topics); benchmarks
                               point it at fresh topics
    QUERY_CONSUMER_PREFIX      prefix of each generation's consumer name / Kafka group id
                               (default query.views; the group is `<prefix>.g<N>-<token>`)
    MIN_VERSION_TIMEOUT_S      how long `GET /orders/{id}?min_version=` waits by default (default 5)
    MIN_VERSION_MAX_TIMEOUT_S  the largest `wait_s` a client may ask for (default 30)
    SSE_KEEPALIVE_S            idle time after which `/stream` sends a `: keep-alive` comment (default 15)
    SSE_POLL_S                 `/stream` re-reads the feed this often even without a NOTIFY (default 2)
    SSE_BATCH                  feed rows read per query while streaming (default 500)
    SSE_MAX_STREAM_S           a stream ends after this long; EventSource clients reconnect and
                               resume with Last-Event-ID. Bounds how long a graceful shutdown waits
                               for open streams (default 300)
    FEED_CAUSAL_WAIT_MS        how long the SSE feed holds back a fact whose cause (a fact on an
                               event topic, named by its causationid) has not reached the feed; past
                               it the fact is sent with `"causalgap":"true"` (default 5000)
    VIEW_CONSUMERS             consumer-group members per view generation in this process (default 2):
                               Kafka splits the partitions between them, so one member's Python work
                               overlaps another's database round trips (replay throughput)
    CONSUMER_MAX_BATCH         as in ServiceSettings, but default 2000 here: bigger partition
                               batches mean fewer transactions when replaying
    CONSUMER_LINGER_MS         as in ServiceSettings, but default 5 here: a view transaction (feed
                               lock, NOTIFY, WAL flush) costs far more than one fact, so facts
                               arriving together share one for 5 ms more view latency
    GENERATION_POLL_S          how often the supervisor checks generations and rebuild progress while a
                               rebuild catches up or its NOTIFY listener is down (default 0.5)
    GENERATION_IDLE_POLL_S     otherwise (it waits for a NOTIFY): the fallback look (default 30)
    REBUILD_SWITCH_GRACE_S     once a rebuild reached its target offsets, how long the switch waits for
                               the new views to also pass the old ones' positions, so reads never go
                               back in version (default 10)
    RETAINED_GENERATIONS       retired view generations kept (for comparison / rollback) before
                               their schema, inbox and positions are dropped (default 1)
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://query_service:query_service@127.0.0.1:5432/query"
    keystore_url: str | None = "postgresql://query_service:query_service@127.0.0.1:5432/keystore"
    http_port: int = Field(default=8004, validation_alias=AliasChoices("http_port", "query_port"))
    query_topics: str = ",".join(EVENT_TOPICS)
    query_consumer_prefix: str = "query.views"
    min_version_timeout_s: float = Field(default=5.0, ge=0)
    min_version_max_timeout_s: float = Field(default=30.0, ge=0)
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    sse_poll_s: float = Field(default=2.0, gt=0)
    sse_batch: int = Field(default=500, ge=1)
    sse_max_stream_s: float = Field(default=300.0, gt=0)
    feed_causal_wait_ms: float = Field(default=5000.0, ge=0)
    view_consumers: int = Field(default=2, ge=1, le=16)
    consumer_max_batch: int = Field(default=2000, ge=1)
    consumer_linger_ms: float = Field(default=5.0, ge=0)
    generation_poll_s: float = Field(default=0.5, gt=0)
    generation_idle_poll_s: float = Field(default=30.0, gt=0)
    rebuild_switch_grace_s: float = Field(default=10.0, ge=0)
    retained_generations: int = Field(default=1, ge=0)

    @property
    def topics(self) -> list[str]:
        """The event topics as a list (QUERY_TOPICS is a comma-separated string)."""
        return [t.strip() for t in self.query_topics.split(",") if t.strip()]

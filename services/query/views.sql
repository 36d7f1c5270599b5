-- The query service's own tables (applied idempotently at start-up, after the kernel's schema).
--
-- Views live in generations: schema `views_g<N>` holds one complete set (orders, timeline),
-- built by its own consumer group from offset 0. Exactly one generation is `current` (reads
-- go there); a rebuild builds the next one (`building`) while the current keeps serving, then
-- flips the two rows in one transaction. `fact_feed` is outside the generations: it is the
-- monotonic id space of `GET /stream` (Last-Event-ID), which must survive a rebuild.

CREATE TABLE IF NOT EXISTS view_generations (
    generation      INTEGER     PRIMARY KEY,
    state           TEXT        NOT NULL CHECK (state IN ('building', 'current', 'retired', 'dropped')),
    consumer        TEXT        NOT NULL UNIQUE,     -- Kafka group id and inbox/positions key
    rebuild_id      UUID        UNIQUE,               -- null for the first generation
    target_offsets  JSONB,                            -- {"topic": {"partition": end}} at rebuild start
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    caught_up_at    TIMESTAMPTZ,                      -- first time positions reached the target
    switched_at     TIMESTAMPTZ,
    retired_at      TIMESTAMPTZ
);
CREATE UNIQUE INDEX IF NOT EXISTS view_generations_one_current ON view_generations ((true)) WHERE state = 'current';
CREATE UNIQUE INDEX IF NOT EXISTS view_generations_one_building ON view_generations ((true)) WHERE state = 'building';

-- Facts in the order the current views committed them; `seq` is the SSE event id. Writers hold
-- an exclusive advisory lock until commit, so seq order is commit order and a reader that has
-- seen seq N can never later find a smaller one appear.
CREATE TABLE IF NOT EXISTS fact_feed (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    order_id    TEXT        NOT NULL,
    document    JSON        NOT NULL                  -- the CloudEvents document, as sent
);
CREATE INDEX IF NOT EXISTS fact_feed_by_order ON fact_feed (order_id, seq);

-- The tables of one generation. Column order of `orders` = services.query.projection.OrderReadModel.
-- `timeline.data` holds the fact's data in the contract version `schema_version` says; reads upcast.
CREATE OR REPLACE FUNCTION query_create_generation_schema(target TEXT) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', target);
    EXECUTE format($ddl$
        CREATE TABLE IF NOT EXISTS %1$I.orders (
            order_id          TEXT        PRIMARY KEY,
            customer_id       TEXT,
            items             JSON,
            total_cents       BIGINT,
            currency          TEXT,
            placed_at         TIMESTAMPTZ,
            status            TEXT,
            reason            TEXT,
            status_version    INTEGER     NOT NULL DEFAULT 0,
            version           INTEGER     NOT NULL DEFAULT 0,
            payment_id        TEXT,
            payment_status    TEXT,
            payment_version   INTEGER     NOT NULL DEFAULT 0,
            shipment_id       TEXT,
            shipment_status   TEXT,
            shipment_version  INTEGER     NOT NULL DEFAULT 0,
            payment_currency  TEXT,
            captured_cents    BIGINT,
            refunded_cents    BIGINT,
            updated_at        TIMESTAMPTZ
        ) WITH (fillfactor = 80);  -- room for HOT updates: most facts change unindexed columns only
        CREATE INDEX IF NOT EXISTS orders_by_customer ON %1$I.orders (customer_id, placed_at DESC, order_id DESC)
            WHERE placed_at IS NOT NULL;
        CREATE INDEX IF NOT EXISTS orders_by_placed ON %1$I.orders (placed_at DESC, order_id DESC)
            WHERE placed_at IS NOT NULL;
        -- One index serves both needs: the timeline of an order and "each fact once" (the kernel's
        -- inbox already drops repeats; a repeat reaching this key would fail loudly, not vanish).
        -- `data` is json, not jsonb: it is only stored and returned, never queried inside, and
        -- skipping the jsonb conversion roughly halves the cost of a replay in PostgreSQL.
        CREATE TABLE IF NOT EXISTS %1$I.timeline (
            order_id        TEXT        NOT NULL,
            event_id        TEXT        NOT NULL,
            type            TEXT        NOT NULL,
            source          TEXT        NOT NULL,
            subject         TEXT        NOT NULL,
            time            TIMESTAMPTZ NOT NULL,
            sequence        INTEGER     NOT NULL,
            correlation_id  TEXT        NOT NULL,
            causation_id    TEXT        NOT NULL,
            schema_version  INTEGER     NOT NULL,
            data            JSON        NOT NULL,
            PRIMARY KEY (order_id, event_id)
        );
    $ddl$, target);
END $fn$;

-- Called first in every batch transaction: waits while a generation switch is in progress
-- (shared lock 4539207 = generations.GENERATION_LOCK; the switch takes it exclusively), then
-- says what this generation is now.
-- plpgsql takes a fresh snapshot for the SELECT, after the lock is held.
-- A generation still building commits asynchronously: a crash can lose its last few batches,
-- but views and stored positions are lost together (one transaction), so the consumer
-- simply re-reads them; the switch commits synchronously, flushing everything before it.
CREATE OR REPLACE FUNCTION query_batch_begin(gen INTEGER) RETURNS TEXT
LANGUAGE plpgsql AS $fn$
DECLARE
    result TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(4539207);
    SELECT state INTO result FROM view_generations WHERE generation = gen;
    IF result = 'building' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN result;
END $fn$;

-- Adds facts to the SSE feed and wakes /stream and min_version readers, in one round trip.
-- The feed lock (4539208 = store.FEED_LOCK) is taken before the rows get their seq and held
-- until commit, so seq order is commit order; 'query_views' = store.VIEWS_CHANNEL.
CREATE OR REPLACE FUNCTION query_feed_append(gen INTEGER, ids TEXT[], order_ids TEXT[], documents JSON[])
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF cardinality(ids) > 0 THEN
        PERFORM pg_advisory_xact_lock(4539208);
        INSERT INTO fact_feed (event_id, order_id, document)
        SELECT * FROM unnest(ids, order_ids, documents)
        ON CONFLICT (event_id) DO NOTHING;
    END IF;
    PERFORM pg_notify('query_views', gen::text);
END $fn$;

-- The first generation is created by services.query.generations.bootstrap_sql (it needs the
-- consumer-name prefix from the settings).

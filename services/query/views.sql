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

-- Facts the feed holds back until the fact their `causationid` names is in `fact_feed` (a cause
-- the views consume, on another topic, that has not arrived yet). Written in the batch's
-- transaction, so a crash loses nothing; released right after their cause, or past the bound
-- FEED_CAUSAL_WAIT_MS by query_feed_release with the `causalgap` marker. `held_seq`: release order.
CREATE TABLE IF NOT EXISTS fact_feed_held (
    held_seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    order_id    TEXT        NOT NULL,
    cause_id    TEXT        NOT NULL,
    held_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    document    JSON        NOT NULL
);
CREATE INDEX IF NOT EXISTS fact_feed_held_by_cause ON fact_feed_held (cause_id);

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
            causation_type  TEXT,       -- the cause's CloudEvents type; null: a request, or not recorded
            PRIMARY KEY (order_id, event_id)
        );
    $ddl$, target);
END $fn$;

-- Generations created before the timeline kept `causation_type` get the column (null in old rows).
DO $migrate$
DECLARE
    target TEXT;
BEGIN
    FOR target IN
        SELECT t.table_schema FROM information_schema.tables t
        JOIN view_generations g ON t.table_schema = format('views_g%s', g.generation)
        WHERE t.table_name = 'timeline' AND g.state <> 'dropped'
          AND NOT EXISTS (SELECT 1 FROM information_schema.columns c
                          WHERE c.table_schema = t.table_schema AND c.table_name = 'timeline'
                            AND c.column_name = 'causation_type')
    LOOP
        EXECUTE format('ALTER TABLE %I.timeline ADD COLUMN IF NOT EXISTS causation_type TEXT', target);
    END LOOP;
END $migrate$;

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

-- The SSE feed's causal rule: a fact is appended to `fact_feed` only after the fact its
-- `causationid` names, when that cause is a fact the views consume (the caller passes the cause
-- id then, else null: a fact caused by a command or a request never waits). All writers hold the
-- feed lock (4539208 = store.FEED_LOCK) from before the first row gets its seq until commit, so
-- seq order is commit order, and "is the cause in the feed?" cannot change under a writer.

-- Appends one fact (a repeat keeps its first seq), then, recursively, every fact held back for it,
-- in the order they were held: causes first. Only called with the feed lock held.
CREATE OR REPLACE FUNCTION query_feed_emit(fid TEXT, oid TEXT, doc JSON) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    waiting RECORD;
BEGIN
    DELETE FROM fact_feed_held WHERE event_id = fid;
    INSERT INTO fact_feed (event_id, order_id, document) VALUES (fid, oid, doc)
    ON CONFLICT (event_id) DO NOTHING;
    FOR waiting IN SELECT event_id, order_id, document FROM fact_feed_held WHERE cause_id = fid ORDER BY held_seq LOOP
        PERFORM query_feed_emit(waiting.event_id, waiting.order_id, waiting.document);
    END LOOP;
END $fn$;

-- Adds a batch's facts (causes first within the batch) to the SSE feed, or holds back those whose
-- cause is not in it yet; wakes /stream and min_version readers ('query_views' = store.VIEWS_CHANNEL).
DROP FUNCTION IF EXISTS query_feed_append(INTEGER, TEXT[], TEXT[], JSON[]);
CREATE OR REPLACE FUNCTION query_feed_append(gen INTEGER, ids TEXT[], order_ids TEXT[], causes TEXT[], documents JSON[])
RETURNS INTEGER
LANGUAGE plpgsql AS $fn$
DECLARE
    held INTEGER := 0;
    added INTEGER;
BEGIN
    IF cardinality(ids) > 0 THEN
        PERFORM pg_advisory_xact_lock(4539208);
        -- The common case, set-based: every cause is in the feed or earlier in this batch, and
        -- nothing held waits for a fact of the batch. Then the batch is appended as it is.
        IF NOT EXISTS (SELECT 1 FROM unnest(causes) AS c(id)
                       WHERE c.id IS NOT NULL AND NOT c.id = ANY(ids)
                         AND NOT EXISTS (SELECT 1 FROM fact_feed f WHERE f.event_id = c.id))
           AND NOT EXISTS (SELECT 1 FROM fact_feed_held WHERE cause_id = ANY(ids)) THEN
            DELETE FROM fact_feed_held WHERE event_id = ANY(ids);  -- held before, sendable now
            INSERT INTO fact_feed (event_id, order_id, document)
            SELECT * FROM unnest(ids, order_ids, documents)
            ON CONFLICT (event_id) DO NOTHING;
            PERFORM pg_notify('query_views', gen::text);
            RETURN 0;
        END IF;
        FOR i IN 1 .. cardinality(ids) LOOP
            IF causes[i] IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM fact_feed WHERE event_id = causes[i])
               AND NOT EXISTS (SELECT 1 FROM fact_feed WHERE event_id = ids[i]) THEN
                INSERT INTO fact_feed_held (event_id, order_id, cause_id, document)
                VALUES (ids[i], order_ids[i], causes[i], documents[i])
                ON CONFLICT (event_id) DO NOTHING;  -- held already: it keeps its first held_at
                GET DIAGNOSTICS added = ROW_COUNT;
                held := held + added;
            ELSE
                PERFORM query_feed_emit(ids[i], order_ids[i], documents[i]);
            END IF;
        END LOOP;
    END IF;
    PERFORM pg_notify('query_views', gen::text);
    RETURN held;
END $fn$;

-- Past the bound: for every fact held for at least `wait_ms` (in held order), appends the first
-- fact of its chain of held causes (itself, unless its cause is held too), its document marked
-- with the CloudEvents extension attribute "causalgap":"true" (its cause did not reach the feed
-- in time), then, unmarked, everything that waited for it. The number of facts marked.
CREATE OR REPLACE FUNCTION query_feed_release(wait_ms DOUBLE PRECISION) RETURNS INTEGER
LANGUAGE plpgsql AS $fn$
DECLARE
    overdue RECORD;
    root RECORD;
    seen TEXT[];
    released INTEGER := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fact_feed_held
                   WHERE held_at <= clock_timestamp() - make_interval(secs => wait_ms / 1000)) THEN
        RETURN 0;  -- the common case, without taking the feed lock
    END IF;
    PERFORM pg_advisory_xact_lock(4539208);
    FOR overdue IN SELECT event_id FROM fact_feed_held
                   WHERE held_at <= clock_timestamp() - make_interval(secs => wait_ms / 1000)
                   ORDER BY held_seq LOOP
        SELECT event_id, order_id, cause_id, document INTO root FROM fact_feed_held WHERE event_id = overdue.event_id;
        CONTINUE WHEN NOT FOUND;  -- already sent after an earlier one released here
        seen := ARRAY[root.event_id];
        LOOP  -- up the chain of held causes (`seen` stops at a cycle of corrupt causation data)
            EXIT WHEN root.cause_id = ANY(seen)
                   OR NOT EXISTS (SELECT 1 FROM fact_feed_held WHERE event_id = root.cause_id);
            SELECT event_id, order_id, cause_id, document INTO root FROM fact_feed_held WHERE event_id = root.cause_id;
            seen := seen || root.event_id;
        END LOOP;
        -- The document is a compact JSON object: the attribute goes before its closing brace.
        PERFORM query_feed_emit(root.event_id, root.order_id, (left(root.document::text, -1) || ',"causalgap":"true"}')::json);
        released := released + 1;
    END LOOP;
    IF released > 0 THEN
        PERFORM pg_notify('query_views', 'feed');
    END IF;
    RETURN released;
END $fn$;

-- The first generation is created by services.query.generations.bootstrap_sql (it needs the
-- consumer-name prefix from the settings).

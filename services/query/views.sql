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
DROP FUNCTION IF EXISTS query_create_generation_schema(TEXT);
CREATE OR REPLACE FUNCTION query_create_generation(gen INTEGER) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    target TEXT := format('views_g%s', gen);
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
    PERFORM query_create_generation_writer(gen);
END $fn$;

-- A generation's batch writer, `views_g<N>.apply_batch`: the whole write of a consumer batch in
-- one round trip. One function per generation, its tables written in: its statements are static
-- SQL, whose plans plpgsql caches (dynamic SQL would be planned again on every call). In order:
-- - it waits while a generation switch is in progress (shared lock 4539207 =
--   generations.GENERATION_LOCK; the switch takes it exclusively), then reads the generation's
--   state (plpgsql takes a fresh snapshot for it, after the lock is held); it writes nothing
--   unless the generation is live;
-- - a building generation commits asynchronously (`synchronous_commit=off`): a crash can lose
--   its last few batches, but views and stored positions are lost together (one transaction),
--   so the consumer simply re-reads them; the switch commits synchronously, flushing everything
--   before it;
-- - it inserts the timeline rows and upserts the orders (projection.merge in SQL);
-- - a current generation appends the facts to the SSE feed (query_feed_append, which NOTIFYs).
-- `docs`: the batch's facts, a JSON array of their CloudEvents documents as the contract codec
-- writes them (the timeline rows are read from them; the feed keeps them as they are), causes
-- first when `ids` is given. `ids`, `order_ids`, `causes`: what the feed needs; null when the
-- caller expected a building generation and did not put the facts causes first: a current one
-- then writes nothing and answers held = null, and the caller sends the batch again with them.
-- Answers the state and how many facts the feed held back (0 when not current).
CREATE OR REPLACE FUNCTION query_create_generation_writer(gen INTEGER) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($writer$
        CREATE OR REPLACE FUNCTION %1$I.apply_batch(docs JSON, orders JSON, ids TEXT[], order_ids TEXT[],
                                                    causes TEXT[], OUT state TEXT, OUT held INTEGER)
        LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(4539207);
            SELECT g.state INTO state FROM view_generations g WHERE g.generation = %2$s;
            IF state IS DISTINCT FROM 'current' AND state IS DISTINCT FROM 'building'
               OR state = 'current' AND ids IS NULL THEN
                RETURN;
            END IF;
            IF state = 'building' THEN
                PERFORM set_config('synchronous_commit', 'off', true);
            END IF;
            WITH timeline AS (
                INSERT INTO %1$I.timeline (order_id, event_id, type, source, subject, time, sequence,
                                           correlation_id, causation_id, schema_version, data, causation_type)
                SELECT f.data->>'order_id', f.id, f.type, f.source, f.subject, f.time, f.sequence,
                       f.correlationid, f.causationid, f.schemaversion, f.data, nullif(f.causationtype, '')
                FROM json_to_recordset(docs) AS f(id text, type text, source text, subject text,
                     time timestamptz, sequence int, correlationid text, causationid text,
                     causationtype text, schemaversion int, data json)
            )
            INSERT INTO %1$I.orders AS o (order_id, customer_id, items, total_cents, currency, placed_at,
                   status, reason, status_version, version, payment_id, payment_status, payment_version,
                   shipment_id, shipment_status, shipment_version, payment_currency, captured_cents,
                   refunded_cents, updated_at)
            SELECT u.order_id, u.customer_id, u.items, u.total_cents, u.currency, u.placed_at,
                   u.status, u.reason, u.status_version, u.version, u.payment_id, u.payment_status,
                   u.payment_version, u.shipment_id, u.shipment_status, u.shipment_version,
                   u.payment_currency, u.captured_cents, u.refunded_cents, u.updated_at
            FROM json_to_recordset(orders) AS u(order_id text, customer_id text, items json,
                 total_cents bigint, currency text, placed_at timestamptz, status text, reason text,
                 status_version int, version int, payment_id text, payment_status text,
                 payment_version int, shipment_id text, shipment_status text, shipment_version int,
                 payment_currency text, captured_cents bigint, refunded_cents bigint,
                 updated_at timestamptz)
            -- projection.merge, in SQL: o = the stored row, excluded = the batch's merged patch.
            ON CONFLICT (order_id) DO UPDATE SET
                customer_id      = coalesce(o.customer_id, excluded.customer_id),
                items            = coalesce(o.items, excluded.items),
                total_cents      = coalesce(o.total_cents, excluded.total_cents),
                currency         = coalesce(o.currency, excluded.currency),
                placed_at        = coalesce(o.placed_at, excluded.placed_at),
                status           = CASE WHEN excluded.status_version > o.status_version
                                        THEN excluded.status ELSE o.status END,
                reason           = CASE WHEN excluded.status_version > o.status_version
                                        THEN excluded.reason ELSE o.reason END,
                status_version   = greatest(o.status_version, excluded.status_version),
                version          = greatest(o.version, excluded.version),
                payment_id       = coalesce(o.payment_id, excluded.payment_id),
                payment_status   = CASE WHEN excluded.payment_version > o.payment_version
                                        THEN excluded.payment_status ELSE o.payment_status END,
                payment_version  = greatest(o.payment_version, excluded.payment_version),
                shipment_id      = coalesce(o.shipment_id, excluded.shipment_id),
                shipment_status  = CASE WHEN excluded.shipment_version > o.shipment_version
                                        THEN excluded.shipment_status ELSE o.shipment_status END,
                shipment_version = greatest(o.shipment_version, excluded.shipment_version),
                payment_currency = coalesce(o.payment_currency, excluded.payment_currency),
                captured_cents   = greatest(o.captured_cents, excluded.captured_cents),
                refunded_cents   = greatest(o.refunded_cents, excluded.refunded_cents),
                updated_at       = greatest(o.updated_at, excluded.updated_at);
            held := 0;
            IF state = 'current' THEN
                held := query_feed_append(%2$s, docs, ids, order_ids, causes);
            END IF;
        END $body$
    $writer$, format('views_g%s', gen), gen);
END $fn$;

-- Generations created before the timeline kept `causation_type` get the column (null in old rows);
-- every generation gets this version's batch writer.
DO $migrate$
DECLARE
    target TEXT;
    gen INTEGER;
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
    FOR gen IN
        SELECT g.generation FROM view_generations g JOIN pg_namespace n ON n.nspname = format('views_g%s', g.generation)
        WHERE g.state <> 'dropped'
    LOOP
        PERFORM query_create_generation_writer(gen);
    END LOOP;
END $migrate$;
DROP FUNCTION IF EXISTS query_batch_begin(INTEGER);  -- the writer above took over its job

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

-- Adds facts (causes first) to the SSE feed, or holds back those whose cause is not in it yet;
-- wakes /stream and min_version readers ('query_views' = store.VIEWS_CHANNEL). `docs`: a JSON
-- array of the CloudEvents documents; `ids`, `order_ids`, `causes`: theirs, in the same order.
DROP FUNCTION IF EXISTS query_feed_append(INTEGER, TEXT[], TEXT[], JSON[]);
DROP FUNCTION IF EXISTS query_feed_append(INTEGER, TEXT[], TEXT[], TEXT[], JSON[]);
CREATE OR REPLACE FUNCTION query_feed_append(gen INTEGER, docs JSON, ids TEXT[], order_ids TEXT[], causes TEXT[])
RETURNS INTEGER
LANGUAGE plpgsql AS $fn$
DECLARE
    documents JSON[];
    held INTEGER := 0;
    added INTEGER;
    changed TEXT;
BEGIN
    IF cardinality(ids) > 0 THEN
        PERFORM pg_advisory_xact_lock(4539208);
    END IF;
    -- The common case, set-based: every cause is in the feed or earlier in this batch, and
    -- nothing held waits for a fact of the batch. Then the batch is appended as it is.
    IF cardinality(ids) > 0
       AND NOT EXISTS (SELECT 1 FROM unnest(causes) AS c(id)
                       WHERE c.id IS NOT NULL AND NOT c.id = ANY(ids)
                         AND NOT EXISTS (SELECT 1 FROM fact_feed f WHERE f.event_id = c.id))
       AND NOT EXISTS (SELECT 1 FROM fact_feed_held WHERE cause_id = ANY(ids)) THEN
        DELETE FROM fact_feed_held WHERE event_id = ANY(ids);  -- held before, sendable now
        INSERT INTO fact_feed (event_id, order_id, document)
        SELECT ids[e.n], order_ids[e.n], e.doc FROM json_array_elements(docs) WITH ORDINALITY AS e(doc, n)
        ON CONFLICT (event_id) DO NOTHING;
    ELSIF cardinality(ids) > 0 THEN
        SELECT array_agg(e.doc ORDER BY e.n) INTO documents FROM json_array_elements(docs) WITH ORDINALITY AS e(doc, n);
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
    -- The payload names the batch's orders (notify.changed_orders), so a `min_version` waiter
    -- re-reads only for its own order; too many for a payload (< 8000 bytes): the generation.
    changed := array_to_json(ARRAY(SELECT DISTINCT o FROM unnest(order_ids) AS o))::text;
    PERFORM pg_notify('query_views', CASE WHEN octet_length(changed) < 7900 THEN changed ELSE gen::text END);
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

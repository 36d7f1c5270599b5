-- The kernel's tables, identical in every service database. Applied idempotently at start-up.

-- The append-only event log: the truth. Positions are assigned at insert (not commit) time,
-- which is why publication goes through the outbox below instead of tailing positions.
CREATE TABLE IF NOT EXISTS events (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    version         INTEGER     NOT NULL CHECK (version > 0),
    type            TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL DEFAULT 1 CHECK (schema_version > 0),
    occurred_at     TIMESTAMPTZ NOT NULL,
    correlation_id  TEXT        NOT NULL,
    causation_id    TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    UNIQUE (stream_id, version)
);
-- The type of the message that caused the fact (NULL: an HTTP request, or written before it was
-- kept), so a fact published again is the same envelope as the first time.
ALTER TABLE events ADD COLUMN IF NOT EXISTS causation_type TEXT;

-- Knowledge only grows: the database itself refuses UPDATE, DELETE and TRUNCATE of facts.
CREATE OR REPLACE FUNCTION events_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

DROP TRIGGER IF EXISTS events_append_only ON events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_mutation();
DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_mutation();
REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON events FROM CURRENT_USER;

-- Messages committed with the facts that caused them, waiting for the relay to publish them.
CREATE TABLE IF NOT EXISTS outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    value       BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- A doorbell, not a notification per commit: NOTIFY takes a database-wide lock held through
-- commit, which would serialise every writer's commit (no group commit). Writers ring only
-- while the relay is idle and listening; a busy relay keeps fetching and needs no bell.
CREATE TABLE IF NOT EXISTS outbox_relay_state (
    id         INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    listening  BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO outbox_relay_state (id, listening) VALUES (1, false) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_relay_state WHERE listening) THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS outbox_wake_relay ON outbox;
CREATE TRIGGER outbox_wake_relay AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Messages a consumer has handled, written in the same transaction as the handler's effects.
CREATE TABLE IF NOT EXISTS inbox (
    consumer     TEXT        NOT NULL,
    message_id   TEXT        NOT NULL,
    handled_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome      TEXT        NOT NULL DEFAULT 'handled',
    PRIMARY KEY (consumer, message_id)
);
-- A message the consumer dead-lettered ('dead_lettered'): its failed attempts over every handling
-- and the record it was last read from. The same id arriving from another record (a replay from
-- the DLQ) is handled again; a redelivery of that record is a duplicate.
ALTER TABLE inbox
    ADD COLUMN IF NOT EXISTS failed_attempts    INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS first_failed_at    TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS last_failed_at     TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS dead_letter_origin TEXT;

-- Each consumer's next Kafka offset per partition, committed with its effects.
CREATE TABLE IF NOT EXISTS consumer_positions (
    consumer     TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    next_offset  BIGINT  NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);

-- A consumer batch written in one statement (shared/batch_write.py) ends with this check: false
-- aborts the whole statement (nothing of it is written) with a code the runner recognises.
CREATE OR REPLACE FUNCTION batch_precondition(ok BOOLEAN) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'the batch''s preconditions do not hold' USING ERRCODE = 'EF409';
    END IF;
    RETURN true;
END $$;

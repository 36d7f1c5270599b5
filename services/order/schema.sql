-- The order service's own tables (next to the kernel's events / outbox / inbox).
-- Applied idempotently at start-up by shared.db.migrate.

-- POST /orders with an Idempotency-Key: the key's row is inserted first in the transaction
-- that places the order, so of two concurrent requests with one key exactly one places it;
-- the other waits on the unique key, then reads the row back and compares the body hash.
-- A key is scoped to its customer (the token's subject): unique per (customer_id, key).
CREATE TABLE IF NOT EXISTS order_idempotency_keys (
    customer_id      TEXT        NOT NULL DEFAULT '',
    idempotency_key  TEXT        NOT NULL,
    body_sha256      TEXT        NOT NULL,
    order_id         TEXT        NOT NULL,
    response         JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A database from before the scoping (key alone was the primary key) gets the column and the
-- scoped unique key; its old rows keep customer '' and so bind no customer's key.
-- Only when the scoped key is missing: an ALTER TABLE locks the table exclusively even when
-- it changes nothing, and replicas already running write to it while another one starts.
DO $$
BEGIN
    IF to_regclass('order_idempotency_keys_scoped') IS NULL THEN
        ALTER TABLE order_idempotency_keys ADD COLUMN IF NOT EXISTS customer_id TEXT NOT NULL DEFAULT '';
        ALTER TABLE order_idempotency_keys DROP CONSTRAINT IF EXISTS order_idempotency_keys_pkey;
        CREATE UNIQUE INDEX order_idempotency_keys_scoped ON order_idempotency_keys (customer_id, idempotency_key);
    END IF;
END $$;

-- One row per saga, inserted with the order.
-- Every saga transaction locks its row first (SELECT … FOR UPDATE), so the consumer, the
-- cancel endpoint and the deadline scheduler of any number of replicas take turns per saga
-- (the saga stream's optimistic version check stays the safety net).
-- `deadline` mirrors the saga's `state.deadline` (its SagaDeadlineSet facts are the truth;
-- this is an index for the scheduler), NULL when nothing is awaited. A saga in the log without
-- a row (a log restored without this index) gets its row when a reply or a cancel reaches it.
CREATE TABLE IF NOT EXISTS saga_deadlines (
    order_id      TEXT        PRIMARY KEY,
    deadline      TIMESTAMPTZ NULL,
    saga_version  INTEGER     NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS saga_deadlines_due ON saga_deadlines (deadline) WHERE deadline IS NOT NULL;

-- Erasure (services/order/customers.py) looks up a customer's orders by their placement.
CREATE INDEX IF NOT EXISTS events_placed_by_customer ON events ((data->>'customer_id')) WHERE type = 'order.placed';

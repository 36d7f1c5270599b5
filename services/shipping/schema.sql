-- The shipping service's own tables, next to the kernel's (shared/schema.sql). Applied
-- idempotently at start-up.

-- Which shipments an order has, written in the transaction that creates the shipment, so
-- `GET /shipments?order_id=` is an index lookup that answers for any shipment id (ids are
-- usually derived from the order id, but the contract only promises `order_id` in the data).
CREATE TABLE IF NOT EXISTS shipment_by_order (
    stream_id   TEXT        PRIMARY KEY,
    order_id    TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS shipment_by_order_order_id ON shipment_by_order (order_id, created_at);

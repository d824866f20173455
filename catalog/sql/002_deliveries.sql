-- Receipts of deliveries: written the moment a delivery is taken from the inbox, updated by each stage.
CREATE TABLE IF NOT EXISTS landsurf.deliveries (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    path         text NOT NULL,
    checksum     text NOT NULL,
    size         bigint NOT NULL,
    status       text NOT NULL DEFAULT 'received'
                 CHECK (status IN ('received', 'processing', 'published', 'quarantined', 'duplicate', 'failed')),
    reason       text,
    product_id   text,
    collection   text,
    attempts     int NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS deliveries_checksum_idx ON landsurf.deliveries (checksum);
CREATE INDEX IF NOT EXISTS deliveries_status_idx ON landsurf.deliveries (status, received_at DESC);
CREATE INDEX IF NOT EXISTS deliveries_product_idx ON landsurf.deliveries (product_id);

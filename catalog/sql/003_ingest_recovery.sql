-- Ingest that never strands a delivery (issue 9): more receipt statuses, what a receipt was taken from, when it
-- last changed; the inbox watcher's heartbeat and state, read by /health and /metrics (catalog/operations.py).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'deliveries_status_check'
                   AND pg_get_constraintdef(oid) LIKE '%returned%') THEN
        ALTER TABLE landsurf.deliveries DROP CONSTRAINT IF EXISTS deliveries_status_check;
        ALTER TABLE landsurf.deliveries ADD CONSTRAINT deliveries_status_check CHECK (status IN (
            'received', 'processing', 'retrying', 'published', 'quarantined', 'duplicate', 'failed', 'returned'));
    END IF;
END $$;
ALTER TABLE landsurf.deliveries ADD COLUMN IF NOT EXISTS source text;      -- where it was taken from
ALTER TABLE landsurf.deliveries ADD COLUMN IF NOT EXISTS signature text;   -- size:mtime (or tree digest) when taken
ALTER TABLE landsurf.deliveries ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS deliveries_open_idx ON landsurf.deliveries (updated_at)
    WHERE status IN ('received', 'processing', 'retrying');

CREATE OR REPLACE FUNCTION landsurf.deliveries_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS deliveries_touch ON landsurf.deliveries;
CREATE TRIGGER deliveries_touch BEFORE UPDATE ON landsurf.deliveries
    FOR EACH ROW EXECUTE FUNCTION landsurf.deliveries_touch();

-- One row per running (or last run) `landsurf ingest watch`, refreshed at every scan.
CREATE TABLE IF NOT EXISTS landsurf.inbox_watchers (
    id                   text PRIMARY KEY,                     -- host:pid
    inbox                text NOT NULL,
    host                 text NOT NULL,
    pid                  int NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    heartbeat_at         timestamptz NOT NULL DEFAULT now(),
    stopped_at           timestamptz,                          -- set by a clean stop; a dead watcher leaves NULL
    untaken              int NOT NULL DEFAULT 0,               -- inbox entries not taken yet
    oldest_untaken_since timestamptz,                          -- when the oldest of them was first seen
    taken                bigint NOT NULL DEFAULT 0,            -- deliveries taken since start
    refused              bigint NOT NULL DEFAULT 0,            -- links, FIFOs, devices… refused since start
    last_error           text,
    last_error_at        timestamptz
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgstac_ingest') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON landsurf.inbox_watchers TO pgstac_ingest;
        GRANT SELECT, INSERT, UPDATE ON landsurf.deliveries TO pgstac_ingest;
    END IF;
END $$;

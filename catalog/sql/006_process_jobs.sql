-- Jobs of the processes API (processing/processes_api.py, OGC API – Processes): one row per execution asked
-- through the API — who asked, for what (the request key: the product it publishes), the queue job doing it
-- (NULL when the product already existed and the answer was immediate) and its last known outcome.
-- Several rows may share one queue job: two users asking for the same product each get their own job.
CREATE TABLE IF NOT EXISTS landsurf.process_jobs (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    process      text NOT NULL,
    request_key  text NOT NULL,
    inputs       jsonb NOT NULL,
    requested_by text NOT NULL,
    queue_job_id bigint,
    status       text NOT NULL CHECK (status IN ('accepted', 'running', 'successful', 'failed', 'dismissed')),
    item_id      text,
    collection   text,
    reason       text,
    created      timestamptz NOT NULL DEFAULT now(),
    started      timestamptz,
    updated      timestamptz NOT NULL DEFAULT now(),
    finished     timestamptz
);
CREATE INDEX IF NOT EXISTS process_jobs_requester_idx ON landsurf.process_jobs (requested_by, created DESC);
CREATE INDEX IF NOT EXISTS process_jobs_live_idx ON landsurf.process_jobs (requested_by)
    WHERE status IN ('accepted', 'running');
CREATE INDEX IF NOT EXISTS process_jobs_created_idx ON landsurf.process_jobs (created DESC);
-- the API writes jobs through its writer pool (the ingest role, a member of pgstac_ingest)
GRANT SELECT, INSERT, UPDATE ON landsurf.process_jobs TO pgstac_ingest;

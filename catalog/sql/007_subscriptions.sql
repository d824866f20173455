-- Subscriptions (catalog/subscriptions.py): a saved search (collections, area, CQL2-JSON filter) of one token
-- name, read as an Atom feed of the items it matches that were published or updated after `created`.
-- The id is a 128-bit random capability: whoever knows it may read the feed (feed readers send no tokens);
-- listing and deleting need the owner's token.
CREATE TABLE IF NOT EXISTS landsurf.subscriptions (
    id      text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    owner   text NOT NULL,
    title   text NOT NULL DEFAULT '' CHECK (length(title) <= 200),
    search  jsonb NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscriptions_owner_idx ON landsurf.subscriptions (owner, created);
-- the API reads through its read pool (pgstac_read) and writes through its writer pool (pgstac_ingest)
GRANT SELECT ON landsurf.subscriptions TO pgstac_read;
GRANT SELECT, INSERT, DELETE ON landsurf.subscriptions TO pgstac_ingest;

-- Monthly mosaics (catalog/mosaics.py, processing/mosaics.py): the precomputed overview COG of each
-- collection-month's registered search, which the tiler uses for the small zooms (z <= max_zoom) of that search.
-- One row per collection-month, replaced in one statement when a rebuild is finished (the file it names is
-- already in place): a reader sees the old overview or the new one, never a half-written one.
CREATE TABLE IF NOT EXISTS landsurf.mosaic_overviews (
    collection       text NOT NULL,
    month            text NOT NULL CHECK (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    search_hash      text NOT NULL,
    path             text NOT NULL,          -- store-relative: mosaics/<collection>/<YYYY-MM>/<file>.tif
    bands            text[] NOT NULL,        -- the item assets held, band k = bands[k]
    max_zoom         integer NOT NULL CHECK (max_zoom BETWEEN 0 AND 24),
    inputs_signature text NOT NULL,          -- the items, versions and checksums it was made from
    items            integer NOT NULL,
    built_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, month)
);
CREATE INDEX IF NOT EXISTS mosaic_overviews_search_idx ON landsurf.mosaic_overviews (search_hash);
-- the tiler reads through the api role (pgstac_read); the builder (a worker, the CLI) writes as ingest
GRANT SELECT ON landsurf.mosaic_overviews TO pgstac_read;
GRANT SELECT, INSERT, UPDATE, DELETE ON landsurf.mosaic_overviews TO pgstac_ingest;

-- The login roles of a landsurf database on a PostgreSQL of its own (Docker Compose, Kubernetes, a
-- managed server): the split of the embedded default, each service with only the role it needs.
--   landsurf_admin   migrations (`landsurf db migrate`); owns the database; CREATEROLE, as pgSTAC's
--                    migration runs CREATE ROLE even for roles that exist
--   landsurf_ingest  publication, the job queue, the API's transactions
--   landsurf_api     the API's reads and the tiler: pgstac_read only
-- Run as a superuser, in the landsurf database, passwords as psql variables (never in this file):
--   psql -v ON_ERROR_STOP=1 -d landsurf -v admin_password=… -v ingest_password=… -v api_password=… \
--        -f landsurf-roles.sql
-- Idempotent: run it again to change the passwords. Then, with the three URLs set,
-- `landsurf db migrate` creates pgSTAC and landsurf's schema and grants each role its share.
\set ON_ERROR_STOP on
\if :{?admin_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'admin_password is not set: psql -v admin_password=...'; END $$;
\endif
\if :{?ingest_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'ingest_password is not set: psql -v ingest_password=...'; END $$;
\endif
\if :{?api_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'api_password is not set: psql -v api_password=...'; END $$;
\endif
SELECT :'admin_password' = '' OR :'ingest_password' = '' OR :'api_password' = '' AS empty_password \gset
\if :empty_password
DO $$ BEGIN RAISE EXCEPTION 'a landsurf role password is empty'; END $$;
\endif

-- PostGIS is not a trusted extension: only a superuser creates it
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE EXTENSION IF NOT EXISTS unaccent;

SELECT format('CREATE ROLE %I', name)
  FROM unnest(ARRAY['pgstac_admin', 'pgstac_ingest', 'pgstac_read',
                    'landsurf_admin', 'landsurf_ingest', 'landsurf_api']) AS name
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) \gexec

ALTER ROLE landsurf_admin LOGIN NOSUPERUSER CREATEROLE PASSWORD :'admin_password';
ALTER ROLE landsurf_ingest LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'ingest_password';
ALTER ROLE landsurf_api LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'api_password';
GRANT pgstac_admin, pgstac_ingest, pgstac_read TO landsurf_admin;
GRANT pgstac_ingest, pgstac_read TO landsurf_ingest;
GRANT pgstac_read TO landsurf_api;
ALTER ROLE landsurf_admin SET statement_timeout = '10s';
ALTER ROLE landsurf_ingest SET statement_timeout = '10s';
ALTER ROLE landsurf_api SET statement_timeout = '10s';

-- the owner creates pgSTAC's schema and, in `public` (owned by pg_database_owner), the job queue
SELECT format('ALTER DATABASE %I OWNER TO landsurf_admin', current_database()) \gexec

#!/bin/sh
# Run by the postgis image on the first start of an empty data directory (docker-entrypoint-initdb.d):
# the three landsurf roles, with the passwords compose passes to the db service.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v admin_password="$LANDSURF_ADMIN_DB_PASSWORD" \
    -v ingest_password="$LANDSURF_INGEST_DB_PASSWORD" \
    -v api_password="$LANDSURF_API_DB_PASSWORD" \
    -f /landsurf/landsurf-roles.sql

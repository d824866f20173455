#!/bin/sh
# Writes infra/.env for docker-compose.yml: a random password for each secret it requires, mode 0600.
# Never overwrites: the database keeps the passwords it was created with (to change one later, run
# db-init/landsurf-roles.sql again with the new values, then edit infra/.env).
set -eu
cd "$(dirname "$0")"
if [ -e .env ]; then
    echo "infra/.env exists: keep it (edit it), or remove it and the pgdata volume to start afresh" >&2
    exit 1
fi
umask 077
set -C  # and should it appear meanwhile, the redirection below fails rather than overwrite it
gen() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }  # hex: safe inside a URL
{
    echo "# written by infra/make-env.sh; keep it out of git and readable by you only"
    for var in POSTGRES_PASSWORD LANDSURF_ADMIN_DB_PASSWORD LANDSURF_INGEST_DB_PASSWORD \
               LANDSURF_API_DB_PASSWORD GRAFANA_ADMIN_PASSWORD; do
        echo "$var=$(gen)"
    done
} > .env
echo "wrote infra/.env"

#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks: PostgreSQL 15 server and PostGIS 3, GDAL's command-line tools,
# npm (the viewer's build) and chromium (its tests).
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/postgis.control ] || need+=(postgresql-15-postgis-3)
command -v runuser >/dev/null || need+=(util-linux)
[ -x /usr/bin/gdalinfo ] || need+=(gdal-bin)  # Debian's GDAL 3.6 (QGIS's): the STACIT client test
[ -x /usr/sbin/nginx ] || need+=(nginx-light)  # the reverse-proxy tests (infra/nginx), started by the tests
command -v npm >/dev/null || need+=(npm)  # `make viewer`: npm ci of MapLibre GL (catalog/viewer)
command -v chromium >/dev/null || need+=(chromium)  # the viewer's browser tests (Playwright drives it)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} — run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null
fi

"""infra/db-init/landsurf-roles.sql on a real PostgreSQL, then `landsurf db migrate` with one URL per role:
what Docker Compose and Kubernetes deployments get. Each role can do its job and nothing more."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from catalog.settings import CatalogSettings
from catalog.embedded import EmbeddedCluster
from processing.setup import prepare_database
from tests.conftest import ROOT, settings_for

ROLES_SQL = ROOT / "infra" / "db-init" / "landsurf-roles.sql"
PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"


def _run_roles_sql(superuser_url: str, passwords: dict[str, str]) -> subprocess.CompletedProcess:
    args = [PSQL, "-X", "-q", "-d", superuser_url, "-f", str(ROLES_SQL)]
    for role, password in passwords.items():
        args[1:1] = ["-v", f"{role}_password={password}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def deployed():
    """A bare PostgreSQL (no embedded bootstrap), its roles made by the SQL, migrated over three URLs."""
    home = Path(tempfile.mkdtemp(prefix="landsurf-roles-", dir="/tmp"))
    cluster = EmbeddedCluster(settings_for(home / "server"))
    cluster.start()
    superuser = cluster.superuser_url()
    with psycopg.connect(superuser.rsplit("/", 1)[0] + "/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE DATABASE landsurf")
    passwords = {role: secrets.token_hex(16) for role in ("admin", "ingest", "api")}
    proc = _run_roles_sql(superuser, passwords)
    assert proc.returncode == 0, proc.stderr
    base = f"127.0.0.1:{cluster.port}/landsurf"
    urls = {role: f"postgresql://landsurf_{role}:{pw}@{base}" for role, pw in passwords.items()}
    settings = CatalogSettings(home=home / "app", database_url=urls["admin"],
                                 database_ingest_url=urls["ingest"], database_api_url=urls["api"])
    prepare_database(settings)
    yield cluster, superuser, urls
    cluster.destroy()
    shutil.rmtree(home, ignore_errors=True)


def test_the_migration_runs_as_a_role_that_is_not_superuser(deployed):
    _, superuser, urls = deployed
    with psycopg.connect(superuser, connect_timeout=5) as conn:
        rows = dict(conn.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'landsurf_%'").fetchall())
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'landsurf'").fetchone()
    assert rows == {"landsurf_admin": False, "landsurf_ingest": False, "landsurf_api": False}
    assert owner == ("landsurf_admin",)
    with psycopg.connect(urls["admin"], connect_timeout=5) as conn:
        assert conn.execute("SELECT pgstac.get_version()").fetchone()[0]


def test_api_role_reads_and_cannot_write(deployed):
    _, _, urls = deployed
    with psycopg.connect(urls["api"], autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM pgstac.collections").fetchone()[0] > 0
        conn.execute("SELECT count(*) FROM landsurf.api_tokens")
        conn.execute("SELECT count(*) FROM landsurf.deliveries")
        for statement in ("DELETE FROM pgstac.collections",
                          "INSERT INTO landsurf.api_tokens (token_sha256, name, role) VALUES ('x', 'x', 'admin')",
                          "INSERT INTO landsurf.deliveries (name, path, checksum, size) VALUES ('x', 'x', 'x', 0)",
                          "DELETE FROM procrastinate_jobs",
                          "CREATE TABLE public.intruder (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_ingest_role_writes_deliveries_and_jobs_but_no_tokens(deployed):
    _, _, urls = deployed
    with psycopg.connect(urls["ingest"], connect_timeout=5) as conn:
        conn.execute("INSERT INTO landsurf.deliveries (name, path, checksum, size) VALUES ('x', 'x', 'x', 0)")
        conn.execute("SELECT count(*) FROM procrastinate_jobs")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO landsurf.api_tokens (token_sha256, name, role) VALUES ('x', 'x', 'admin')")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE intruder")


def test_roles_sql_is_idempotent_and_changes_passwords(deployed):
    _, superuser, urls = deployed
    new = {role: secrets.token_hex(16) for role in ("admin", "ingest", "api")}
    proc = _run_roles_sql(superuser, new)
    assert proc.returncode == 0, proc.stderr
    api_url = urls["api"].replace(urls["api"].split(":")[2].split("@")[0], new["api"])
    with psycopg.connect(api_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("landsurf_api",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(urls["api"], connect_timeout=5)
    proc = _run_roles_sql(superuser, {**new, "api": ""})
    assert proc.returncode != 0 and "empty" in proc.stderr
    proc = _run_roles_sql(superuser, {k: v for k, v in new.items() if k != "ingest"})
    assert proc.returncode != 0 and "ingest_password is not set" in proc.stderr

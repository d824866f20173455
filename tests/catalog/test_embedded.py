"""The embedded PostgreSQL: idempotent start, crash recovery, and one-line errors for bad set-ups."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from catalog.database import check_schema, migrate, session
from catalog.embedded import EmbeddedCluster
from catalog.errors import SchemaMismatch
from catalog.settings import CatalogSettings
from tests.conftest import ApiServer, env_for, free_port, make_home, run_cli, settings_for


@pytest.fixture(scope="module")
def scratch() -> CatalogSettings:
    """A second cluster of our own, so that crashing it disturbs nothing else."""
    settings = settings_for(make_home("landsurf-scratch-"), statement_timeout_ms=3000)
    cluster = EmbeddedCluster(settings)
    assert cluster.start() is True
    migrate(settings)
    yield settings
    cluster.stop()
    shutil.rmtree(settings.home, ignore_errors=True)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_start_twice_is_a_no_op(scratch):
    cluster = EmbeddedCluster(scratch)
    pid = cluster.status().pid
    assert cluster.start() is False
    assert cluster.status().pid == pid
    proc = run_cli("db", "start", env=env_for(scratch))
    assert proc.returncode == 0 and "already running" in proc.stdout
    with session(scratch) as conn:
        assert check_schema(conn) == conn.execute("SELECT pgstac.get_version()").fetchone()[0]


def test_roles_are_separated(scratch):
    cluster = EmbeddedCluster(scratch)
    with psycopg.connect(cluster.url("api"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pgstac.collections").fetchone()[0] >= 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM pgstac.collections")
        timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
        assert timeout == "3s"


def test_recovers_after_kill_9_of_the_postmaster(scratch):
    cluster = EmbeddedCluster(scratch)
    with session(scratch) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.crash_probe (v int)")
        conn.execute("INSERT INTO public.crash_probe VALUES (42)")
    pid = cluster.status().pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.status().running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not cluster.status().running
    proc = run_cli("db", "start", env=env_for(scratch))
    assert proc.returncode == 0, proc.stderr
    assert cluster.status().running and cluster.status().pid != pid
    with session(scratch) as conn:
        assert conn.execute("SELECT v FROM public.crash_probe").fetchone()[0] == 42


def test_port_in_use_is_named():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        settings = settings_for(make_home("landsurf-port-"), pg_port=port)
        proc = run_cli("db", "start", env=env_for(settings, LANDSURF_PG_PORT=str(port)))
        line = _one_line_error(proc)
    assert f"port {port}" in line and "in use" in line and "LANDSURF_PG_PORT" in line
    shutil.rmtree(settings.home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the data directory to another user needs root")
def test_data_directory_owned_by_someone_else(scratch):
    home = make_home("landsurf-owner-")
    data = home / "pg" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    shutil.copy(Path(scratch.home) / "pg" / "landsurf.json", home / "pg" / "landsurf.json")
    proc = run_cli("db", "start", env=env_for(settings_for(home)))
    line = _one_line_error(proc)
    assert "owned by 'nobody'" in line and "chown" in line
    shutil.rmtree(home, ignore_errors=True)


def test_wrong_database_url_is_one_line(scratch):
    bad = f"postgresql://nobody:wrong@127.0.0.1:{free_port()}/landsurf"
    env = env_for(scratch, LANDSURF_DATABASE_URL=bad)
    for args in (("db", "migrate"), ("sample",)):
        line = _one_line_error(run_cli(*args, env=env))
        assert "cannot connect" in line and "***" in line and "wrong" not in line
        assert "LANDSURF_DATABASE_URL" in line
    line = _one_line_error(run_cli("db", "migrate", env=env_for(scratch, LANDSURF_DATABASE_URL="mysql://x/y")))
    assert "not a PostgreSQL URL" in line


def test_external_database_url_is_used_as_is(scratch):
    """With LANDSURF_DATABASE_URL, nothing embedded is started and the same code runs on that URL."""
    url = EmbeddedCluster(scratch).url("admin")
    other = settings_for(make_home("landsurf-external-"), database_url=url)
    proc = run_cli("db", "migrate", env=env_for(other))
    assert proc.returncode == 0, proc.stderr
    assert not (Path(other.home) / "pg").exists()
    proc = run_cli("db", "status", "--json", env=env_for(other))
    assert proc.returncode == 0 and '"reachable": true' in proc.stdout
    shutil.rmtree(other.home, ignore_errors=True)


def test_schema_version_mismatch_is_refused(scratch):
    with session(scratch) as conn:
        conn.execute("INSERT INTO pgstac.migrations (version, datetime) VALUES ('0.9.99', now() + interval '1 day')")
    try:
        with session(scratch) as conn, pytest.raises(SchemaMismatch, match="landsurf db migrate"):
            check_schema(conn)
        server = ApiServer(scratch, free_port())
        with pytest.raises(RuntimeError, match="pgSTAC 0.9.99"):
            server.start()
        server.stop()
    finally:
        with session(scratch) as conn:
            conn.execute("DELETE FROM pgstac.migrations WHERE version = '0.9.99'")


def _postgres_without_postgis(root: Path) -> Path:
    """A real PostgreSQL installation whose share directory lacks PostGIS.

    PostgreSQL finds its share and lib directories relative to its own binary, so a copy of the
    binaries beside a pruned copy of the share directory is a server on which PostGIS is missing.
    """
    src_bin = Path("/usr/lib/postgresql/15/bin")
    bindir = root / "lib/postgresql/15/bin"
    bindir.mkdir(parents=True)
    for name in ("postgres", "initdb", "pg_ctl"):
        shutil.copy2(src_bin / name, bindir / name)
    (root / "lib/postgresql/15/lib").symlink_to("/usr/lib/postgresql/15/lib")
    share = root / "share/postgresql/15"
    shutil.copytree("/usr/share/postgresql/15", share, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n.startswith("postgis")])
    for p in root.rglob("*"):
        p.chmod(p.stat().st_mode | 0o055) if not p.is_symlink() else None
    return bindir


def test_missing_postgis_is_named():
    home = make_home("landsurf-nopostgis-")
    bindir = _postgres_without_postgis(home / "pginstall")
    env = env_for(settings_for(home), LANDSURF_PG_BINDIR=str(bindir))
    proc = run_cli("db", "start", env=env, timeout=180)
    line = _one_line_error(proc)
    assert "PostGIS is not installed" in line and "postgresql-15-postgis-3" in line
    run_cli("db", "stop", env=env)
    shutil.rmtree(home, ignore_errors=True)


def test_db_status_and_url(scratch):
    proc = run_cli("db", "status", "--json", env=env_for(scratch))
    assert proc.returncode == 0 and '"running": true' in proc.stdout
    proc = run_cli("db", "url", "--role", "api", env=env_for(scratch))
    assert proc.stdout.startswith("postgresql://landsurf_api:")
    with psycopg.connect(proc.stdout.strip()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_api_without_database_gives_a_clear_error(scratch):
    settings = settings_for(make_home("landsurf-nodb-"), database_url=f"postgresql://a:b@127.0.0.1:{free_port()}/x")
    server = ApiServer(settings, free_port())
    with pytest.raises(RuntimeError, match="cannot reach its database|cannot connect"):
        server.start()
    server.stop()
    shutil.rmtree(settings.home, ignore_errors=True)

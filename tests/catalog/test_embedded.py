"""The embedded PostgreSQL: idempotent start, crash recovery, private homes and secrets, one-line errors."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from catalog.database import check_schema, migrate, session
from catalog.embedded import SERVER_BASE, EmbeddedCluster
from catalog.errors import SchemaMismatch
from catalog.settings import CatalogSettings
from tests.conftest import ROOT, ApiServer, env_for, free_port, run_cli, settings_for

WATCH = Path(__file__).with_name("creation_watch.py")


def private_home(prefix: str) -> Path:
    """A temporary home as mkdtemp makes it: mode 0700, like a checkout under /root."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def discard(settings: CatalogSettings) -> None:
    """Stop and delete the cluster (its server directory may live outside the home), then the home."""
    if (Path(settings.home) / "pg" / "landsurf.json").exists():
        EmbeddedCluster(settings).destroy()
    shutil.rmtree(settings.home, ignore_errors=True)


@pytest.fixture(scope="module")
def scratch() -> CatalogSettings:
    """A second cluster of our own, so that crashing it disturbs nothing else."""
    home = private_home("landsurf-scratch-")
    home.chmod(0o755)  # reachable by the server's user: its directory stays inside the home
    settings = settings_for(home, statement_timeout_ms=3000)
    cluster = EmbeddedCluster(settings)
    assert cluster.start() is True
    migrate(settings)
    yield settings
    discard(settings)


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
        settings = settings_for(private_home("landsurf-port-"), pg_port=port)
        proc = run_cli("db", "start", env=env_for(settings, LANDSURF_PG_PORT=str(port)))
        line = _one_line_error(proc)
    assert f"port {port}" in line and "in use" in line and "LANDSURF_PG_PORT" in line
    discard(settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the data directory to another user needs root")
def test_data_directory_owned_by_someone_else(scratch):
    home = private_home("landsurf-owner-")
    home.chmod(0o755)  # a server directory inside the home, as homes made before the split have
    data = home / "server" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    state = json.loads((Path(scratch.home) / "pg" / "landsurf.json").read_text())
    (home / "pg").mkdir(mode=0o700)
    (home / "pg" / "landsurf.json").write_text(json.dumps(state | {"server_dir": str(home / "server")}))
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
    other = settings_for(private_home("landsurf-external-"), database_url=url)
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
    install = Path(tempfile.mkdtemp(prefix="landsurf-pginstall-", dir="/tmp"))
    install.chmod(0o755)  # binaries the server user runs
    bindir = _postgres_without_postgis(install)
    settings = settings_for(private_home("landsurf-nopostgis-"), pg_bindir=bindir)
    env = env_for(settings, LANDSURF_PG_BINDIR=str(bindir))
    proc = run_cli("db", "start", env=env, timeout=180)
    line = _one_line_error(proc)
    assert "PostGIS is not installed" in line and "postgresql-15-postgis-3" in line
    discard(settings)
    shutil.rmtree(install, ignore_errors=True)


def test_db_status_and_url(scratch):
    proc = run_cli("db", "status", "--json", env=env_for(scratch))
    assert proc.returncode == 0 and '"running": true' in proc.stdout
    proc = run_cli("db", "url", "--role", "api", env=env_for(scratch))
    assert proc.stdout.startswith("postgresql://landsurf_api:")
    with psycopg.connect(proc.stdout.strip()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_api_without_database_gives_a_clear_error(scratch):
    settings = settings_for(private_home("landsurf-nodb-"), database_url=f"postgresql://a:b@127.0.0.1:{free_port()}/x")
    server = ApiServer(settings, free_port())
    with pytest.raises(RuntimeError, match="cannot reach its database|cannot connect"):
        server.start()
    server.stop()
    shutil.rmtree(settings.home, ignore_errors=True)


# -- a private checkout (issue 8.6), secrets at creation (14.3), a stale PID after a crash (14.5) ----------

class Checkout:
    """A checkout inside a 0700 directory, where `landsurf db start` ran with LANDSURF_HOME unset."""

    def __init__(self) -> None:
        self.parent = private_home("landsurf-private-")
        self.dir = self.parent / "checkout"
        self.dir.mkdir(mode=0o700)
        self.home = self.dir / ".landsurf"  # the default LANDSURF_HOME, relative to where one runs
        self.settings = settings_for(self.home)
        self.creations_log = self.parent / "creations.jsonl"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LANDSURF_")} | {"PYTHONPATH": str(ROOT)}

    def cli(self, *args: str, watch: bool = False, umask: int = 0o022) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(WATCH)] if watch else [sys.executable, "-m", "processing.cli"]
        env = self.env | ({"LANDSURF_TEST_CREATIONS": str(self.creations_log)} if watch else {})
        return subprocess.run([*cmd, *args], cwd=self.dir, env=env, umask=umask, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)

    def creations(self) -> list[dict]:
        return [json.loads(line) for line in self.creations_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def checkout() -> Checkout:
    """The first command of a newcomer: `landsurf db start` in a private checkout, with a umask of 000."""
    co = Checkout()
    proc = co.cli("db", "start", watch=True, umask=0)
    assert proc.returncode == 0, proc.stderr
    co.start_output = proc.stdout
    yield co
    discard(co.settings)
    shutil.rmtree(co.parent, ignore_errors=True)


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_a_reachable_home_keeps_its_server_directory(scratch):
    """The server's user can enter the home: data, socket and log stay in it, recorded relative to it."""
    cluster = EmbeddedCluster(scratch)
    assert cluster.server_dir == Path(scratch.home).resolve() / "pg-server"
    assert cluster.state()["server_dir"] == "pg-server"
    assert cluster.status().running and _mode(cluster.server_dir) == 0o700


def test_first_command_from_a_private_checkout(checkout):
    assert _mode(checkout.parent) == 0o700 and _mode(checkout.dir) == 0o700
    assert "started" in checkout.start_output
    cluster = EmbeddedCluster(checkout.settings)
    assert (checkout.home / "pg" / "landsurf.json").exists()
    if os.geteuid() == 0:
        # the server's user cannot enter the checkout: its files live where it can, owned by it
        assert cluster.server_dir.parent == SERVER_BASE
        assert (cluster.server_dir / "home").read_text().strip() == str(checkout.home)
        assert pwd.getpwuid(cluster.data_dir.stat().st_uid).pw_name == checkout.settings.pg_system_user
    status = json.loads(checkout.cli("db", "status", "--json").stdout)
    assert status["running"] and status["reachable"] and status["data_dir"] == str(cluster.data_dir)
    url = checkout.cli("db", "url", "--role", "api").stdout.strip()
    assert url.startswith("postgresql://landsurf_api:")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM pgstac.collections").fetchone()[0] > 0


def test_secrets_are_private_from_their_first_byte(checkout):
    """Recorded at the instant of creation, under a umask of 000: a create-then-chmod would show 0666."""
    created = checkout.creations()
    assert created and all(c["umask"] == 0 for c in created)
    cluster = EmbeddedCluster(checkout.settings)
    secrets_dir = checkout.home / "pg"
    state = [c for c in created if Path(c["path"]).parent == secrets_dir]  # the state file (and its lock)
    pwfile = [c for c in created if "pwfile" in Path(c["path"]).name]
    assert state and pwfile
    for c in state + pwfile:
        assert c["mode"] == 0o600, c
        assert c["folder_mode"] == 0o700, c
    assert all(c["folder_uid"] == os.geteuid() for c in state)
    assert all(c["folder_uid"] == pwd.getpwnam(cluster.system_user).pw_uid for c in pwfile)
    for c in created:
        path = Path(c["path"])
        if path.is_relative_to(checkout.home) or path.is_relative_to(cluster.server_dir):
            assert c["mode"] & 0o077 == 0, c


def _readable_by_others(top: Path) -> list[str]:
    """Files and folders below `top` that another user could read (sockets aside: they are meant to be)."""
    found = []
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if not stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o077:
                found.append(f"{path} {oct(st.st_mode & 0o777)}")
    return found


def test_no_file_of_the_home_is_readable_by_others(checkout):
    cluster = EmbeddedCluster(checkout.settings)
    assert _mode(checkout.home / "pg") == 0o700
    assert _readable_by_others(checkout.home) == []
    assert _mode(cluster.server_dir) == 0o700 and _readable_by_others(cluster.server_dir) == []


def test_a_leftover_database_of_an_earlier_home_is_named():
    """A home deleted and made again at the same path: its old database is not silently reused or dropped."""
    settings = settings_for(private_home("landsurf-leftover-"))
    cluster = EmbeddedCluster(settings)
    (cluster.data_dir).mkdir(parents=True)
    (cluster.data_dir / "PG_VERSION").write_text("15\n")
    try:
        line = _one_line_error(run_cli("db", "start", env=env_for(settings)))
        assert "state file" in line and "missing" in line and f"remove {cluster.server_dir}" in line
    finally:
        shutil.rmtree(cluster.server_dir, ignore_errors=True)
        shutil.rmtree(settings.home, ignore_errors=True)


def _name_pid_in_lock_files(cluster: EmbeddedCluster, pid: int) -> None:
    for lock in [cluster.data_dir / "postmaster.pid", *cluster.socket_dir.glob(".s.PGSQL.*.lock")]:
        lines = lock.read_text().splitlines()
        lock.write_text("\n".join([str(pid), *lines[1:]]) + "\n")


def test_a_stale_pid_of_another_process_after_a_crash(checkout):
    """kill -9, then the PID in postmaster.pid belongs to someone else: start works, stop spares that process."""
    cluster = EmbeddedCluster(checkout.settings)
    postmaster = cluster.status().pid
    assert postmaster
    os.kill(postmaster, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.status().running and time.monotonic() < deadline:
        time.sleep(0.1)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        _name_pid_in_lock_files(cluster, bystander.pid)
        assert not cluster.status().running
        proc = checkout.cli("db", "stop")
        assert proc.returncode == 0 and "not running" in proc.stdout, proc.stderr
        assert bystander.poll() is None
        proc = checkout.cli("db", "start")
        assert proc.returncode == 0, proc.stderr
        assert "started" in proc.stdout and "already running" not in proc.stdout
        status = cluster.status()
        assert status.running and status.pid not in (postmaster, bystander.pid)
        with session(checkout.settings, "api") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proc = checkout.cli("db", "stop")
        assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stderr
        assert bystander.poll() is None and not cluster.status().running
    finally:
        bystander.kill()
        bystander.wait()


def _as_user(user: str, fn) -> dict:
    """Run `fn` in a forked child that became `user` (no exec: the interpreter may live where `user` cannot read)."""
    pw = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            signal.alarm(150)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.umask(0)
            os.write(write_end, json.dumps(fn()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    return json.loads(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="run as a regular user, every other test here already is one")
def test_runs_as_a_regular_user_from_a_private_home():
    """Not root: the server runs as the user, from the home's own 0700 `pg/` folder."""
    home = private_home("landsurf-user-")
    os.chown(home, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    settings = settings_for(home)

    def lifecycle() -> dict:
        os.chdir(home)
        cluster = EmbeddedCluster(settings)
        started = cluster.start()
        status = cluster.status()
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=5):
            pass
        again = cluster.start()
        stopped = cluster.stop()
        return {"started": started, "running": status.running, "data_dir": str(status.data_dir),
                "again": again, "stopped": stopped, "running_after": cluster.status().running}

    try:
        result = _as_user("nobody", lifecycle)
        assert "error" not in result, result
        assert result == {"started": True, "running": True, "data_dir": str(home / "pg-server" / "data"),
                          "again": False, "stopped": True, "running_after": False}
        assert _mode(home / "pg") == 0o700 and _readable_by_others(home) == []
    finally:
        cluster = EmbeddedCluster(settings)
        if cluster.state_file.exists() and cluster.status().running:
            os.kill(cluster.status().pid, signal.SIGTERM)
        shutil.rmtree(home, ignore_errors=True)

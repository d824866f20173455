"""The embedded PostgreSQL cluster: one data directory under $LANDSURF_HOME, started on demand.

initdb and postgres refuse to run as root, so when invoked as root the launcher creates a
dedicated system user and runs the server as that user (`runuser`). The cluster listens on
127.0.0.1 (a free port chosen at init and kept) and on a unix socket inside the home.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import ConfigurationError, EmbeddedDatabaseError
from catalog.settings import CatalogSettings

DATABASE = "landsurf"
SUPERUSER = "postgres"


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path


def _find_bindir(settings: CatalogSettings) -> Path:
    candidates = [settings.pg_bindir] if settings.pg_bindir else []
    candidates += [Path("/usr/lib/postgresql/15/bin")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    for c in candidates:
        if c and (c / "postgres").exists() and (c / "initdb").exists():
            return c
    raise ConfigurationError(
        "PostgreSQL server binaries (initdb, postgres) not found",
        "install them with `apt-get install postgresql-15 postgresql-15-postgis-3` or set LANDSURF_PG_BINDIR",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (this sandbox's PID 1 does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


class EmbeddedCluster:
    """Lifecycle of the project's own PostgreSQL: init, start, stop, status, credentials."""

    def __init__(self, settings: CatalogSettings) -> None:
        self.settings = settings
        self.root = settings.home_dir / "pg"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "log" / "postgres.log"
        self.state_file = self.root / "landsurf.json"
        self.as_root = os.geteuid() == 0
        self.system_user = settings.pg_system_user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    # -- state -------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self.state_file.exists()

    def state(self) -> dict:
        if not self.state_file.exists():
            raise EmbeddedDatabaseError(
                f"no embedded cluster in {self.root}", "run `landsurf db start` to create one"
            )
        return json.loads(self.state_file.read_text())

    @property
    def port(self) -> int:
        return int(self.settings.pg_port or self.state()["port"])

    def url(self, role: str = "admin") -> str:
        st = self.state()
        user, password = st["roles"][role]
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def superuser_url(self) -> str:
        st = self.state()
        return f"postgresql://{SUPERUSER}:{st['superuser_password']}@127.0.0.1:{self.port}/{DATABASE}"

    # -- privileges -------------------------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        cmd = (["runuser", "-u", self.system_user, "--"] if self.as_root else []) + args
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise EmbeddedDatabaseError(
                f"`{' '.join(args[:2])}` failed: {detail[-1] if detail else proc.returncode}",
                f"see {self.log_file}" if self.log_file.exists() else None,
            )
        return proc

    def _ensure_system_user(self) -> None:
        if not self.as_root:
            return
        try:
            pwd.getpwnam(self.system_user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", self.system_user],
                check=True, capture_output=True, timeout=30,
            )

    def _check_traversable(self) -> None:
        """The server user must reach its data directory through every parent."""
        if not self.as_root:
            return
        for parent in list(self.root.parents)[::-1]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ConfigurationError(
                    f"{parent} is not traversable by the database user {self.system_user!r}",
                    f"set LANDSURF_HOME to a directory outside it, or `chmod o+x {parent}`",
                )

    def _own(self, path: Path) -> None:
        if self.as_root:
            pw = pwd.getpwnam(self.system_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _check_ownership(self) -> None:
        if not self.data_dir.exists():
            return
        owner = self.data_dir.stat().st_uid
        expected = pwd.getpwnam(self.system_user).pw_uid
        if owner != expected:
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = str(owner)
            raise EmbeddedDatabaseError(
                f"data directory {self.data_dir} is owned by {name!r}, not by {self.system_user!r}",
                f"run landsurf as the owner, or `chown -R {self.system_user} {self.data_dir}`, "
                "or point LANDSURF_HOME elsewhere",
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> bool:
        """Create the cluster if absent. Returns True when it was created now."""
        if self.initialized:
            return False
        bindir = _find_bindir(self.settings)
        self._ensure_system_user()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._check_traversable()
        if self.data_dir.exists() and any(self.data_dir.iterdir()) and not (self.data_dir / "PG_VERSION").exists():
            raise EmbeddedDatabaseError(
                f"{self.data_dir} exists, is not empty and is not a PostgreSQL data directory",
                "remove it or point LANDSURF_HOME elsewhere",
            )
        for d in (self.data_dir, self.socket_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
            self._own(d)
        self._check_ownership()
        os.chmod(self.data_dir, 0o700)
        state = {
            "port": self.settings.pg_port or _free_port(),
            "superuser_password": secrets.token_urlsafe(24),
            "roles": {
                "admin": ["landsurf_admin", secrets.token_urlsafe(24)],
                "ingest": ["landsurf_ingest", secrets.token_urlsafe(24)],
                "api": ["landsurf_api", secrets.token_urlsafe(24)],
            },
        }
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = self.root / ".pwfile"
            pwfile.write_text(state["superuser_password"] + "\n")
            os.chmod(pwfile, 0o600)
            self._own(pwfile)
            try:
                self._run([
                    str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                ])
            finally:
                pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# landsurf embedded settings\n"
                "include_if_exists = 'landsurf.conf'\n"
            )
        self._write_conf(state["port"])
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.state_file)
        return True

    def _write_conf(self, port: int) -> None:
        path = self.data_dir / "landsurf.conf"
        path.write_text(
            f"listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            f"shared_buffers = {self.settings.pg_shared_buffers}\n"
            "max_connections = 200\n"
            "jit = off\n"
            "random_page_cost = 1.1\n"
            "log_min_duration_statement = 2000\n"
        )
        self._own(path)

    def status(self) -> ClusterStatus:
        pid = self._postmaster_pid()
        port = None
        if self.state_file.exists():
            port = self.port
        running = pid is not None and _pid_alive(pid)
        return ClusterStatus(running=running, pid=pid if running else None, port=port, data_dir=self.data_dir)

    def _postmaster_pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None

    def _clear_stale_locks(self) -> None:
        """After a crash (kill -9), remove lock files whose owner is dead or a zombie."""
        pid = self._postmaster_pid()
        if pid is None or _pid_alive(pid):
            return
        # orphaned backends notice the postmaster's death and exit; give them a moment
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._orphans():
            time.sleep(0.2)
        for orphan in self._orphans():
            try:
                os.kill(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
        for sock in self.socket_dir.glob(".s.PGSQL.*"):
            sock.unlink(missing_ok=True)

    def _orphans(self) -> list[int]:
        """Live postgres processes still attached to this data directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                exe = os.readlink(entry / "exe")
            except (OSError, PermissionError):
                continue
            if exe.endswith("/postgres") and _pid_alive(int(entry.name)):
                # backends have a rewritten cmdline; map them through their cwd = data dir
                try:
                    if Path(os.readlink(entry / "cwd")) == self.data_dir:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def start(self) -> bool:
        """Start the cluster (creating it first if needed). Returns False when it was already up."""
        self.init()
        self._check_ownership()
        if self.status().running:
            return False
        port = self.port
        if self.settings.pg_port and self.settings.pg_port != self.state()["port"]:
            self._write_conf(port)
        self._clear_stale_locks()
        if _port_in_use(port):
            raise EmbeddedDatabaseError(
                f"port {port} on 127.0.0.1 is already in use by another program",
                "stop that program or choose another port with LANDSURF_PG_PORT",
            )
        bindir = _find_bindir(self.settings)
        self._run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start"],
            timeout=90,
        )
        if not self.status().running:
            raise EmbeddedDatabaseError("PostgreSQL did not stay up", f"see {self.log_file}")
        return True

    def stop(self) -> bool:
        """Stop the cluster (fast shutdown). Returns False when it was not running."""
        if not self.data_dir.exists() or not self.status().running:
            return False
        bindir = _find_bindir(self.settings)
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                  timeout=90)
        return True

"""The embedded PostgreSQL cluster of one landsurf home, started on demand.

The secrets and the server live apart, so that neither needs the other's permissions:
- `$LANDSURF_HOME/pg/` (0700, the invoking user) holds `landsurf.json`, the state file with the port
  and the generated passwords, 0600 from its first byte.
- the server directory (data, socket, log; 0700, the server's user) is `$LANDSURF_HOME/pg-server/`.
  initdb and postgres refuse root, so as root the server runs as a dedicated system user (`runuser`);
  when that user cannot reach the home (a checkout under `/root`, mode 700: the usual first run), the
  server directory is `/var/lib/landsurf-pg/<hash of the home>` instead, and no chmod is needed.
The state file records where the server directory is (relative to the home when inside it, so a
moved home keeps its database). Homes made before this split keep their data in `pg/data`.

The cluster listens on 127.0.0.1 (a free port chosen at init and kept) and on a unix socket in the
server directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from catalog.errors import ConfigurationError, EmbeddedDatabaseError
from catalog.private_files import private_dir, write_private
from catalog.settings import CatalogSettings

DATABASE = "landsurf"
SUPERUSER = "postgres"
SERVER_DIR = "pg-server"  # inside the home
SERVER_BASE = Path("/var/lib/landsurf-pg")  # one server directory per home its user cannot reach


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


def _postgres_in(pid: int, data_dir: Path) -> bool:
    """Is `pid` a live PostgreSQL process working in `data_dir` (its executable and its cwd)?

    A PID read from a lock file left by a crash may belong to any process by now.
    """
    if not _pid_alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")  # binary upgraded under it
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone, or another user's process: not ours either way
        return False
    return Path(exe).name == "postgres" and Path(cwd) == data_dir


class EmbeddedCluster:
    """Lifecycle of the project's own PostgreSQL: init, start, stop, status, credentials."""

    def __init__(self, settings: CatalogSettings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.root = self.home / "pg"
        self.state_file = self.root / "landsurf.json"
        self.as_root = os.geteuid() == 0
        self.system_user = settings.pg_system_user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self._lock_depth = 0
        self._server_dir: Path | None = None

    # -- where things are --------------------------------------------------------------------
    def _server_user_reaches(self, path: Path) -> bool:
        """Can the server's user traverse to `path` (every parent, ACLs included)? Asked, not guessed."""
        if not self.as_root:
            return True
        proc = subprocess.run(["runuser", "-u", self.system_user, "--", "test", "-x", str(path)],
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        return proc.returncode == 0

    def _new_server_dir(self) -> Path:
        """Inside the home when the server's user can reach it, else a directory of its own under SERVER_BASE."""
        if self._server_user_reaches(self.home):
            return self.home / SERVER_DIR
        return SERVER_BASE / hashlib.sha256(str(self.home).encode()).hexdigest()[:16]

    @property
    def server_dir(self) -> Path:
        """Data, socket and log: where the state file says, else where a new cluster would go."""
        if self._server_dir is None:
            st = self._read_state()
            if st is None:
                self._server_dir = self._new_server_dir()
            else:  # homes made before the split: the secrets folder was the server directory
                self._server_dir = self.home / st["server_dir"] if "server_dir" in st else self.root
        return self._server_dir

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.server_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.server_dir / "log" / "postgres.log"

    # -- state -------------------------------------------------------------------------------
    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise EmbeddedDatabaseError(
                f"{self.state_file} (the database passwords) is not readable by this user",
                "run landsurf as the user who created this home, or set LANDSURF_HOME to a home of your own",
            ) from exc

    @property
    def initialized(self) -> bool:
        return self.state_file.exists() and (self.data_dir / "PG_VERSION").exists()

    def state(self) -> dict:
        st = self._read_state()
        if st is None:
            raise EmbeddedDatabaseError(
                f"no embedded cluster in {self.root}", "run `landsurf db start` to create one"
            )
        return st

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
        """The server's user must reach its data directory through every parent."""
        if self._server_user_reaches(self.data_dir):
            return
        blocking = next((p for p in [*reversed(self.data_dir.parents), self.data_dir]
                         if not self._server_user_reaches(p)), self.data_dir)
        raise ConfigurationError(
            f"{blocking} is not traversable by the database user {self.system_user!r}",
            f"`chmod o+x {blocking}`, or start afresh with a new LANDSURF_HOME (its database then lives under "
            f"{SERVER_BASE} when that user cannot reach the home)",
        )

    def _server_owner(self) -> str | None:
        return self.system_user if self.as_root else None

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

    @contextmanager
    def _locked(self, timeout: float = 180) -> Iterator[None]:
        """One lifecycle command at a time per home (two `db start` must not both run initdb)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            private_dir(self.root, tighten=False)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except PermissionError as exc:
            raise EmbeddedDatabaseError(
                f"{self.root} belongs to another user",
                "run landsurf as the user who created this home, or set LANDSURF_HOME to a home of your own",
            ) from exc
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise EmbeddedDatabaseError(
                            f"another landsurf command holds {self.root / '.lock'}",
                            "wait for it to finish, or stop it",
                        ) from exc
                    time.sleep(0.2)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> bool:
        """Create the cluster if absent. Returns True when it was created now."""
        with self._locked():
            return self._init()

    def _init(self) -> bool:
        if self.initialized:
            return False
        bindir = _find_bindir(self.settings)
        self._ensure_system_user()
        previous = self._read_state()
        private_dir(self.root)
        if previous and "server_dir" in previous:  # the state survived its data: same place again
            server_dir = self.home / previous["server_dir"]
        else:
            server_dir = self._new_server_dir()
        self._server_dir = server_dir
        data_dir = server_dir / "data"
        if data_dir.exists() and any(data_dir.iterdir()):
            if not (data_dir / "PG_VERSION").exists():
                raise EmbeddedDatabaseError(
                    f"{data_dir} exists, is not empty and is not a PostgreSQL data directory",
                    "remove it or point LANDSURF_HOME elsewhere",
                )
            raise EmbeddedDatabaseError(
                f"{data_dir} holds a database whose state file {self.state_file} (its passwords) is missing "
                f"(left by an earlier home at {self.home}?)",
                f"restore the state file, or remove {server_dir} to start afresh "
                "(stop the postgres running from it first, if any)",
            )
        if server_dir.is_relative_to(SERVER_BASE):
            SERVER_BASE.mkdir(mode=0o755, exist_ok=True)
            os.chmod(SERVER_BASE, 0o711)  # traversable by the server's user; nothing listed
        private_dir(server_dir, self._server_owner())
        write_private(server_dir / "home", f"{self.home}\n")  # whose directory this is, for operators
        for d in (data_dir, server_dir / "sock", server_dir / "log"):
            private_dir(d, self._server_owner())
        state = {
            "port": self.settings.pg_port or _free_port(),
            "server_dir": str(server_dir.relative_to(self.home) if server_dir.is_relative_to(self.home)
                              else server_dir),
            "superuser_password": secrets.token_urlsafe(24),
            "roles": {
                "admin": ["landsurf_admin", secrets.token_urlsafe(24)],
                "ingest": ["landsurf_ingest", secrets.token_urlsafe(24)],
                "api": ["landsurf_api", secrets.token_urlsafe(24)],
            },
        }
        # readable by the server user, who runs initdb; in its own 0700 directory, gone right after
        pwfile = server_dir / ".pwfile"
        write_private(pwfile, state["superuser_password"] + "\n", self._server_owner())
        try:
            self._run([
                str(bindir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
            ])
        finally:
            pwfile.unlink(missing_ok=True)
        with (data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# landsurf embedded settings\ninclude_if_exists = 'landsurf.conf'\n")
        write_private(self.state_file, json.dumps(state, indent=2))
        self._write_conf(state["port"])
        return True

    def _write_conf(self, port: int) -> None:
        write_private(
            self.data_dir / "landsurf.conf",
            f"listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            f"shared_buffers = {self.settings.pg_shared_buffers}\n"
            "max_connections = 200\n"
            "jit = off\n"
            "random_page_cost = 1.1\n"
            "log_min_duration_statement = 2000\n",
            self._server_owner(),
        )

    def status(self) -> ClusterStatus:
        pid = self._postmaster_pid()
        port = self.port if self.state_file.exists() else None
        running = pid is not None and _postgres_in(pid, self.data_dir.resolve())
        return ClusterStatus(running=running, pid=pid if running else None, port=port, data_dir=self.data_dir)

    def _postmaster_pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None

    def _clear_stale_locks(self) -> None:
        """After a crash (kill -9, power loss), remove the lock files of a postmaster that is gone.

        The PID they name may be dead, a zombie, or by now any other process: PostgreSQL refuses to
        start while that PID is alive, so they go unless they name our own live postmaster.
        """
        if self.status().running:
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
        """Live postgres processes still attached to this data directory (backends: cwd = data dir)."""
        data_dir = self.data_dir.resolve()
        return [int(e.name) for e in Path("/proc").iterdir()
                if e.name.isdigit() and _postgres_in(int(e.name), data_dir)]

    def start(self) -> bool:
        """Start the cluster (creating it first if needed). Returns False when it was already up."""
        with self._locked():
            self._init()
            if not (self.as_root and self.server_dir == self.root):
                private_dir(self.root)  # homes made before the split: the secrets folder becomes 0700
            self._check_traversable()
            self._check_ownership()
            if self.status().running:
                return False
            port = self.port
            self._write_conf(port)  # the port may be overridden, the home may have moved (socket path)
            self._clear_stale_locks()
            if _port_in_use(port):
                raise EmbeddedDatabaseError(
                    f"port {port} on 127.0.0.1 is already in use by another program",
                    "stop that program or choose another port with LANDSURF_PG_PORT",
                )
            bindir = _find_bindir(self.settings)
            self._run(
                [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                 "start"],
                timeout=90,
            )
            if not self.status().running:
                raise EmbeddedDatabaseError("PostgreSQL did not stay up", f"see {self.log_file}")
            return True

    def stop(self) -> bool:
        """Stop the cluster (fast shutdown). Returns False when it was not running.

        Only our own postmaster is signalled: pg_ctl would signal whatever PID a stale lock file names.
        """
        with self._locked():
            if not self.data_dir.exists() or not self.status().running:
                return False
            bindir = _find_bindir(self.settings)
            self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                      timeout=90)
            return True

    def destroy(self) -> None:
        """Stop the cluster and delete it: its server directory (wherever it is) and its state file."""
        with self._locked():
            if self.state_file.exists():
                self.stop()
                if self.server_dir == self.root:  # homes made before the split
                    for d in ("data", "sock", "log"):
                        shutil.rmtree(self.root / d, ignore_errors=True)
                else:
                    shutil.rmtree(self.server_dir, ignore_errors=True)
                self.state_file.unlink(missing_ok=True)

"""The HTTP servers of the catalog benchmark: each its own uvicorn process (1 worker, access log off) on
loopback, all on one embedded cluster.

- landsurf as checked out (`landsurf serve`), optionally on another database of the cluster;
- the peer, stock stac-fastapi-pgstac from the installed package, with its default settings or tuned with
  its own documented knob (`USE_API_HYDRATE=true`);
- landsurf at an older commit (a detached `git worktree` outside the repository, served by the same venv),
  for "same run" comparisons with the code before a change.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
READY_S = 120


@dataclass
class Server:
    """One running API: its name in the results, its base URL, its process and its log."""

    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_database(url: str, database: str) -> str:
    """The same PostgreSQL URL pointing at another database of the cluster."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _clean_env(*drop: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LANDSURF_", "PG", *drop))}


def _wait_ready(server: Server, path: str) -> Server:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {READY_S} s: {server.log.read_text()[-3000:]}")


def _spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, logs: Path, port: int) -> Server:
    log = logs / f"{name}.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd)
    return Server(name, f"http://127.0.0.1:{port}", proc, log)


def start_landsurf(name: str, home: Path, logs: Path, *, database_url: str | None = None,
                   checkout: Path = ROOT, port: int | None = None, gc_stats: Path | None = None,
                   gc_freeze: bool = False) -> Server:
    """`landsurf serve` of `checkout` (its own `catalog` package first on sys.path), on the embedded cluster of
    `home`, or on `database_url` (every pool of the app then uses that one URL). With `gc_stats`, the same app
    is served by `bench.catalog_gcserve` (the garbage collector's cost measured; `gc_freeze`: the built app's
    heap frozen out of it)."""
    port = port or free_port()
    env = _clean_env() | {
        "LANDSURF_HOME": str(home), "LANDSURF_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LANDSURF_STATEMENT_TIMEOUT_MS": "120000", "LANDSURF_DB_MAX_CONN": "10", "LANDSURF_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(checkout),
    }
    if database_url:
        env["LANDSURF_DATABASE_URL"] = database_url
    imported = subprocess.run([sys.executable, "-c", "import catalog; print(catalog.__file__)"], env=env,
                              cwd=checkout, capture_output=True, text=True, timeout=60)
    if not imported.stdout.strip().startswith(str(checkout)):
        raise RuntimeError(f"{name}: `catalog` is imported from {imported.stdout.strip() or imported.stderr[-500:]}, "
                           f"not from {checkout}")
    cmd = [sys.executable, "-m", "processing.cli", "serve", "--port", str(port)]
    if gc_stats is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(ROOT)])
        cmd = [sys.executable, "-m", "bench.catalog_gcserve", "--port", str(port), "--stats", str(gc_stats)]
        cmd += ["--freeze"] if gc_freeze else []
    return _wait_ready(_spawn(name, cmd, env, checkout, logs, port), "/health")


def start_peer(name: str, database_url: str, logs: Path, *, api_hydrate: bool) -> Server:
    """Stock stac-fastapi-pgstac (`uvicorn stac_fastapi.pgstac.app:create_app --factory`) with its defaults;
    `api_hydrate` sets its documented `USE_API_HYDRATE=true` (items merged with their collection's base item in
    Python instead of in PostgreSQL). Its pool is 1..10 connections by default, like landsurf's here."""
    port = free_port()
    parts = urlsplit(database_url)
    env = _clean_env("USE_API", "DB_", "ENABLE_") | {
        "PGUSER": parts.username or "", "PGPASSWORD": parts.password or "", "PGHOST": parts.hostname or "",
        "PGPORT": str(parts.port or 5432), "PGDATABASE": parts.path.lstrip("/"),
    }
    if api_hydrate:
        env["USE_API_HYDRATE"] = "true"
    cmd = [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return _wait_ready(_spawn(name, cmd, env, logs, logs, port), "/_mgmt/ping")


def _git(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextmanager
def checkout_of(commit: str) -> Iterator[Path]:
    """A detached worktree of `commit` outside the repository, removed on exit (never committed)."""
    resolved = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if resolved.returncode != 0:
        raise RuntimeError(f"commit {commit!r} is not in this repository: {resolved.stderr.strip()}")
    sha = resolved.stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"landsurf-{sha[:7]}-", dir="/tmp"))
    path.rmdir()  # git creates it
    added = _git("worktree", "add", "--detach", str(path), sha)
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add failed: {added.stderr.strip()}")
    try:
        yield path
    finally:
        _git("worktree", "remove", "--force", str(path))
        _git("worktree", "prune")

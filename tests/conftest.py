"""Session fixtures: one real embedded PostgreSQL + pgSTAC, one real API on a loopback port.

Nothing is mocked: the cluster is initdb'd into a temporary home (as a dedicated system user
when the tests run as root), synthetic MUSCATE deliveries are generated and published by the
real ingest pipeline (the one product path: the API tests read what the pipeline wrote), and the
API runs in its own uvicorn process exactly as `landsurf serve` runs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from catalog.collections import S2_L2A
from catalog.database import session
from catalog.embedded import EmbeddedCluster
from catalog.settings import CatalogSettings
from processing.setup import prepare_database

ROOT = Path(__file__).resolve().parents[1]
# Derived products are planned automatically in production; the suite's other tests publish L2As for their own
# purposes, so planning is off unless a test turns it on (tests/processing/test_derive.py does).
os.environ.setdefault("LANDSURF_PROCESSING_AUTO_DERIVE", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(prefix: str) -> Path:
    """A temporary home, private (0700) as a newcomer's checkout usually is: the embedded launcher copes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def settings_for(home: Path, **extra) -> CatalogSettings:
    return CatalogSettings(home=home, **extra)


def env_for(settings: CatalogSettings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANDSURF_")}
    if "LANDSURF_PROCESSING_AUTO_DERIVE" in os.environ:  # the suite's choice (above) holds in child processes
        env["LANDSURF_PROCESSING_AUTO_DERIVE"] = os.environ["LANDSURF_PROCESSING_AUTO_DERIVE"]
    env |= {"LANDSURF_HOME": str(settings.home), "LANDSURF_STATEMENT_TIMEOUT_MS": str(settings.statement_timeout_ms)}
    if settings.public_url:
        env["LANDSURF_PUBLIC_URL"] = settings.public_url
    if settings.database_url:
        env["LANDSURF_DATABASE_URL"] = settings.database_url
    return env | extra


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processing.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT)


class ApiServer:
    """`landsurf serve` in a child process; stopped at the end of the session."""

    def __init__(self, settings: CatalogSettings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(settings.home) / f"api-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, **env: str) -> "ApiServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processing.cli", "serve", "--port", str(self.port)],
            env=env_for(self.settings, **env), stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"API did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def catalog_settings() -> CatalogSettings:
    home = make_home("landsurf-test-")
    port = free_port()
    settings = settings_for(home, public_url=f"http://127.0.0.1:{port}", port=port, statement_timeout_ms=3000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    prepare_database(settings)
    yield settings
    if os.environ.get("LANDSURF_TEST_KEEP"):  # keep the home (logs, store) to debug a failure
        cluster.stop()
    else:  # the server files may live outside the home (/var/lib/landsurf-pg/…): destroy removes them too
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


# Six synthetic L2A deliveries of tile 31TCH, 5 days apart (SENTINEL2A/B alternating), 512 px a side.
SERIES = dict(tile="31TCH", start="2024-06-03", end="2024-06-28", every_days=5, size=512, seed=1)


@pytest.fixture(scope="session")
def published(catalog_settings: CatalogSettings, tmp_path_factory) -> list:
    """The series generated as zips and ingested by the real pipeline (receipt → COGs → item → publication)."""
    from datetime import date

    from ingest.generate import iter_series
    from ingest.inbox import take
    from ingest.pipeline import process
    from ingest.settings import IngestSettings

    out = tmp_path_factory.mktemp("deliveries")
    ingest_settings = IngestSettings()
    products = []
    for product in iter_series(out, SERIES["tile"], date.fromisoformat(SERIES["start"]),
                               date.fromisoformat(SERIES["end"]), SERIES["every_days"], size=SERIES["size"],
                               seed=SERIES["seed"], truth_dir=out / "truth"):
        outcome = process(catalog_settings, ingest_settings,
                          take(catalog_settings, ingest_settings, product.path).receipt_id)
        assert outcome.status == "published", outcome
        products.append(product)
    return products


@pytest.fixture(scope="session")
def api(catalog_settings: CatalogSettings, published: list) -> ApiServer:
    server = ApiServer(catalog_settings, catalog_settings.port).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def published_items(api: ApiServer, published: list) -> list[dict]:
    """The published items as the API serves them (hrefs rendered), in acquisition order."""
    items = []
    for product in published:
        r = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{product.product_id}", timeout=10)
        assert r.status_code == 200, r.text
        items.append(r.json())
    return items


@pytest.fixture(scope="session")
def admin_token(catalog_settings: CatalogSettings) -> str:
    from catalog.auth import create_token

    with session(catalog_settings) as conn:
        return create_token(conn, "tests-admin", "admin")


@pytest.fixture(scope="session")
def operator_token(catalog_settings: CatalogSettings) -> str:
    from catalog.auth import create_token

    with session(catalog_settings) as conn:
        return create_token(conn, "tests-operator", "operator")

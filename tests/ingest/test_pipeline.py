"""A delivery dropped in the inbox becomes searchable COGs — through the real queue, worker, database and API."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from datetime import datetime, timezone

import httpx
import pytest
from rio_cogeo.cogeo import cog_validate

from catalog.collections import S2_L2A
from catalog.database import session
from catalog.embedded import EmbeddedCluster
from ingest import receipts
from ingest.errors import TransientIngestError
from ingest.generate import generate_l2a
from ingest.inbox import Inbox, take
from ingest.pipeline import process
from ingest.settings import IngestSettings
from processing.queue import create_queue, defer, run_worker
from tests.conftest import ROOT, env_for, make_home

WHEN = datetime(2024, 3, 10, 10, 40, 21, 123000, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ingest_settings(catalog_settings) -> IngestSettings:
    return IngestSettings(stable_seconds=0.2, poll_seconds=0.1)


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """Small synthetic deliveries (512 px at 10 m), written outside the inbox."""
    out = tmp_path_factory.mktemp("deliveries")

    def make(when=WHEN, version="1-0", seed=0, tile="31TCH", **kw):
        return generate_l2a(out / f"{seed}-{version}-{when:%Y%m%d%H%M}", tile=tile, when=when, seed=seed, size=512,
                            version=version, **kw)

    return make


def _search(api, **params) -> list[dict]:
    r = httpx.get(api.url + "/search", params={"limit": 100, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["features"]


def test_inbox_queue_worker_publish_end_to_end(api, catalog_settings, ingest_settings, factory, operator_token):
    product = factory()
    inbox = Inbox(catalog_settings, ingest_settings)
    inbox.inbox.mkdir(parents=True, exist_ok=True)
    partial = inbox.inbox / (product.path.name + ".part")
    shutil.copy(product.path, partial)
    assert inbox.scan() == []  # an upload in progress is not a delivery
    partial.rename(inbox.inbox / product.path.name)
    assert inbox.scan() == []  # seen once: not yet known to be stable
    time.sleep(ingest_settings.stable_seconds + 0.1)
    taken = inbox.scan()
    assert [d.name for d in taken] == [product.path.name]
    assert not (inbox.inbox / product.path.name).exists()
    assert receipts.get(catalog_settings, taken[0].receipt_id).status == "received"

    queue = create_queue(catalog_settings, ingest_settings)
    with queue.open():
        assert defer(queue, taken[0]) > 0
        assert defer(queue, taken[0]) == -1  # the same receipt is never queued twice
    run_worker(create_queue(catalog_settings, ingest_settings), once=True)

    receipt = receipts.get(catalog_settings, taken[0].receipt_id)
    assert receipt.status == "published", receipt.reason
    assert receipt.product_id == product.product_id and receipt.latency_s is not None
    item = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{product.product_id}", timeout=30).json()
    assert item["properties"]["grid:code"] == "MGRS-31TCH"
    assert item["properties"]["eo:cloud_cover"] == pytest.approx(product.cloud_percent, abs=1)
    for key in ("FRE_B4", "SRE_B11", "CLM_R2", "MG2_R1"):
        asset = item["assets"][key]
        body = httpx.get(asset["href"], timeout=30).content
        assert "1220" + hashlib.sha256(body).hexdigest() == asset["file:checksum"]
        assert len(body) == asset["file:size"]
    local = catalog_settings.store_dir / item["assets"]["FRE_B4"]["href"].split("/download/", 1)[1]
    assert cog_validate(str(local))[0]
    operator = {"Authorization": f"Bearer {operator_token}"}
    statuses = json.loads(httpx.get(api.url + "/deliveries", headers=operator).text)
    assert statuses["deliveries"][0]["status"] == "published"


def test_same_delivery_twice_is_a_duplicate(catalog_settings, ingest_settings, factory, api):
    product = factory(seed=1, when=WHEN.replace(day=11))
    first = process(catalog_settings, ingest_settings, take(catalog_settings, ingest_settings, product.path).receipt_id)
    assert first.status == "published"
    before = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{product.product_id}").json()
    again = process(catalog_settings, ingest_settings, take(catalog_settings, ingest_settings, product.path).receipt_id)
    assert again.status == "duplicate" and "already published" in again.reason
    after = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{product.product_id}").json()
    assert after["properties"]["updated"] == before["properties"]["updated"]


def test_newer_version_becomes_current_and_the_older_stays_as_history(catalog_settings, ingest_settings,
                                                                      factory, api):
    when = WHEN.replace(day=15)
    v1 = factory(seed=2, when=when, version="1-0")
    v2 = factory(seed=2, when=when, version="1-1")
    for p in (v1, v2):
        assert process(catalog_settings, ingest_settings,
                       take(catalog_settings, ingest_settings, p.path).receipt_id).status == "published"
    day = when.strftime("%Y-%m-%d")
    ids = [f["id"] for f in _search(api, datetime=f"{day}T00:00:00Z/{day}T23:59:59Z")]
    assert ids == [v2.product_id]  # one current version, history out of default searches
    new = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{v2.product_id}").json()
    old = httpx.get(f"{api.url}/collections/{S2_L2A}-history/items/{v1.product_id}").json()
    assert old["properties"]["deprecated"] is True
    assert any(ln["rel"] == "latest-version" and ln["href"].endswith(v2.product_id) for ln in old["links"])
    assert any(ln["rel"] == "predecessor-version" and ln["href"].endswith(v1.product_id) for ln in new["links"])
    # an even older version arriving late goes straight to history
    v0 = factory(seed=2, when=when, version="0-9")
    late = process(catalog_settings, ingest_settings, take(catalog_settings, ingest_settings, v0.path).receipt_id)
    assert late.status == "published" and late.collection == f"{S2_L2A}-history"
    assert [f["id"] for f in _search(api, datetime=f"{day}T00:00:00Z/{day}T23:59:59Z")] == [v2.product_id]


@pytest.mark.parametrize("kind,needle", [
    ("not-a-zip", "not a zip"),
    ("zip-slip", ".."),
    ("empty-folder", "empty"),
])
def test_bad_deliveries_end_in_quarantine_with_their_reason(catalog_settings, ingest_settings, tmp_path, kind,
                                                             needle, api):
    if kind == "not-a-zip":
        bad = tmp_path / "SENTINEL2A_20240301-104021-000_L2A_T31TCH_C_V1-0.zip"
        bad.write_text("this is not a zip")
    elif kind == "zip-slip":
        bad = tmp_path / "SENTINEL2A_20240302-104021-000_L2A_T31TCH_C_V1-0.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("../../evil.txt", "escape")
    else:
        bad = tmp_path / "SENTINEL2A_20240303-104021-000_L2A_T31TCH_C_V1-0"
        bad.mkdir()
    outcome = process(catalog_settings, ingest_settings, take(catalog_settings, ingest_settings, bad).receipt_id)
    assert outcome.status == "quarantined" and needle in outcome.reason.lower()
    qdir = ingest_settings.quarantine_dir(catalog_settings)
    assert (qdir / f"{outcome.receipt_id}-{bad.name}").exists()
    note = json.loads((qdir / f"{outcome.receipt_id}-{bad.name}.reason.json").read_text())
    assert note["reason"] == outcome.reason
    assert not list(catalog_settings.store_dir.glob("**/evil.txt"))
    assert not (tmp_path.parent / "evil.txt").exists()


def test_database_down_during_publication_retries_and_nothing_is_half_published(factory, tmp_path):
    """Stop PostgreSQL while the COGs are being written: the job fails, nothing is visible; restarted, it publishes."""
    from processing.setup import prepare_database
    from tests.conftest import settings_for

    settings = settings_for(make_home("landsurf-dbdown-"), statement_timeout_ms=5000, connect_timeout_s=2)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    prepare_database(settings)
    try:
        ingest_settings = IngestSettings()
        product = factory(seed=5, when=WHEN.replace(day=20))
        delivery = take(settings, ingest_settings, product.path)
        staging = settings.store_dir / ".staging" / str(delivery.receipt_id)
        result: dict = {}

        def run() -> None:
            try:
                result["outcome"] = process(settings, ingest_settings, delivery.receipt_id)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                result["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while not staging.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.stop()
        worker.join(120)
        assert isinstance(result.get("error"), TransientIngestError), result
        assert "retried" in str(result["error"])
        assert not list(settings.store_dir.glob(f"{S2_L2A}/**/{product.product_id}"))  # no files in place
        assert delivery.path.exists()  # the delivery is kept for the retry
        cluster.start()
        outcome = process(settings, ingest_settings, delivery.receipt_id)
        assert outcome.status == "published"
        with session(settings) as conn:
            assert conn.execute("SELECT count(*) FROM pgstac.items WHERE id = %s",
                                (product.product_id,)).fetchone()[0] == 1
        assert list(settings.store_dir.glob(f"{S2_L2A}/**/{product.product_id}/*FRE_B4*"))
    finally:
        cluster.stop()
        shutil.rmtree(settings.home, ignore_errors=True)


def test_two_workers_never_process_a_delivery_twice(catalog_settings, ingest_settings, factory):
    products = [factory(seed=10 + i, when=WHEN.replace(day=1 + i, month=5)) for i in range(4)]
    queue = create_queue(catalog_settings, ingest_settings)
    ids = []
    with queue.open():
        for p in products:
            d = take(catalog_settings, ingest_settings, p.path)
            ids.append(d.receipt_id)
            defer(queue, d)
    env = env_for(catalog_settings)
    workers = [subprocess.Popen([sys.executable, "-m", "processing.cli", "worker", "--once"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
               for _ in range(2)]
    for w in workers:
        w.wait(300)
        assert w.returncode == 0, w.stdout.read().decode()[-2000:]
    for rid in ids:
        rec = receipts.get(catalog_settings, rid)
        assert rec.status == "published" and rec.attempts == 1, rec


def test_ingest_status_cli_lists_receipts(catalog_settings):
    proc = subprocess.run([sys.executable, "-m", "processing.cli", "ingest", "status", "--json"],
                          env=env_for(catalog_settings), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {"published", "quarantined", "duplicate"} <= {r["status"] for r in rows}
    assert all(r["latency_s"] is not None for r in rows if r["status"] == "published")


@pytest.mark.parametrize("fault,needle", [
    ("missing-mtd", "mtd_all.xml"),
    ("missing-band", "fre_b11"),
    ("truncated", "truncated"),
])
def test_faulty_products_are_quarantined_and_nothing_is_visible(catalog_settings, ingest_settings, tmp_path,
                                                                 fault, needle, api):
    when = WHEN.replace(month=7, day={"missing-mtd": 1, "missing-band": 2, "truncated": 3}[fault])
    made = generate_l2a(tmp_path / "gen", tile="31TCH", when=when, seed=20, size=256, as_zip=False)
    root = made.path
    if fault == "missing-mtd":
        next(root.glob("*_MTD_ALL.xml")).unlink()
    elif fault == "missing-band":
        next(root.glob("*_FRE_B11.tif")).unlink()
    else:
        band = next(root.glob("*_FRE_B4.tif"))
        band.write_bytes(band.read_bytes()[: band.stat().st_size // 2])
    outcome = process(catalog_settings, ingest_settings, take(catalog_settings, ingest_settings, root).receipt_id)
    assert outcome.status == "quarantined" and needle in outcome.reason.lower(), outcome.reason
    assert receipts.get(catalog_settings, outcome.receipt_id).reason == outcome.reason
    day = when.strftime("%Y-%m-%d")
    assert _search(api, datetime=f"{day}T00:00:00Z/{day}T23:59:59Z") == []
    assert not list(catalog_settings.store_dir.glob(f"**/{made.product_id}"))


def test_metrics_export_production_and_latency(api, operator_token):
    text = httpx.get(api.url + "/metrics", timeout=30, headers={"Authorization": f"Bearer {operator_token}"}).text
    assert 'landsurf_deliveries{status="published"}' in text
    assert 'landsurf_delivery_to_searchable_seconds{quantile="p95"}' in text
    published = [ln for ln in text.splitlines() if ln.startswith("landsurf_products_published_24h ")]
    assert published and float(published[0].split()[1]) >= 1


def test_a_receipt_left_by_a_crash_before_the_rename_is_taken_up_again(catalog_settings, ingest_settings, factory):
    from ingest.inbox import checksum
    from ingest.model import Delivery

    product = factory(seed=30, when=WHEN.replace(month=8, day=1))
    inbox = ingest_settings.inbox_dir(catalog_settings)
    inbox.mkdir(parents=True, exist_ok=True)
    dropped = inbox / product.path.name
    shutil.copy(product.path, dropped)
    digest, size = checksum(dropped)
    orphan = receipts.record(catalog_settings, Delivery(dropped, dropped.name, digest, size),
                             source=str(dropped))  # then "crash"
    taken = take(catalog_settings, ingest_settings, dropped)
    assert taken.receipt_id == orphan
    assert process(catalog_settings, ingest_settings, taken.receipt_id).status == "published"


def test_a_system_fault_is_retried_by_the_queue_with_backoff(catalog_settings, ingest_settings, factory, tmp_path):
    """A worker whose store cannot be written fails the job; the queue retries it later, and it publishes."""
    product = factory(seed=40, when=WHEN.replace(month=9, day=1))
    queue = create_queue(catalog_settings, ingest_settings)
    with queue.open():
        delivery = take(catalog_settings, ingest_settings, product.path)
        defer(queue, delivery)
    not_a_dir = tmp_path / "store-is-a-file"
    not_a_dir.write_text("")
    broken = subprocess.run([sys.executable, "-m", "processing.cli", "worker", "--once"], cwd=ROOT, timeout=300,
                            env=env_for(catalog_settings, LANDSURF_STORE=str(not_a_dir)), capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    assert broken.returncode == 0, broken.stderr[-2000:]
    failed = receipts.get(catalog_settings, delivery.receipt_id)
    assert failed.status == "retrying" and failed.attempts == 1 and "store-is-a-file" in failed.reason
    assert "retried automatically" in failed.reason
    assert delivery.path.exists()  # kept for the retry
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        subprocess.run([sys.executable, "-m", "processing.cli", "worker", "--once"], cwd=ROOT, timeout=300,
                       env=env_for(catalog_settings), capture_output=True, stdin=subprocess.DEVNULL)
        if receipts.get(catalog_settings, delivery.receipt_id).status == "published":
            break
        time.sleep(1)
    done = receipts.get(catalog_settings, delivery.receipt_id)
    assert done.status == "published" and done.attempts == 2, done

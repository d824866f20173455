"""Crash-safe jobs: a worker killed with -9 is replaced, a receipt without a job is queued again, every fault ends
classified (and an operator's retry starts it again); publication never removes a live file early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from catalog.collections import S2_L2A
from catalog.database import session
from ingest import receipts
from ingest.generate import generate_l2a
from ingest.inbox import take
from ingest.pipeline import process
from ingest.settings import IngestSettings
from processing.queue import defer, job_states, opened, stranded
from tests.conftest import ROOT
from tests.ingest.conftest import leftovers, published_item

FAST = {"LANDSURF_INGEST_HEARTBEAT_SECONDS": "0.5", "LANDSURF_INGEST_STALLED_SECONDS": "2",
        "LANDSURF_INGEST_SWEEP_SECONDS": "0.5", "LANDSURF_INGEST_POLL_SECONDS": "0.2",
        "LANDSURF_INGEST_RETRY_WAIT_SECONDS": "0", "LANDSURF_INGEST_RETRY_EXPONENTIAL": "0",
        "LANDSURF_LOG_LEVEL": "WARNING"}


def cli(private_catalog, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processing.cli", *args], cwd=ROOT, timeout=timeout,
                          env=private_catalog.env(**(FAST | env)), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def worker(private_catalog, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "processing.cli", "worker"], cwd=ROOT,
                            env=private_catalog.env(**(FAST | env)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)


def queued(private_catalog, product) -> int:
    settings = IngestSettings()
    with opened(private_catalog.settings, settings) as app:
        delivery = take(private_catalog.settings, settings, product.path)
        defer(app, delivery)
    return delivery.receipt_id


def wait_status(private_catalog, receipt_id: int, statuses: tuple[str, ...], timeout: float = 90) -> receipts.Receipt:
    deadline = time.monotonic() + timeout
    while True:
        rec = receipts.get(private_catalog.settings, receipt_id)
        if rec.status in statuses:
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"receipt {receipt_id} still {rec.status}: {rec.reason}")
        time.sleep(0.1)


def test_a_worker_killed_while_writing_cogs_is_replaced(private_catalog, tmp_path):
    catalog = private_catalog.settings
    made = generate_l2a(tmp_path, "31TCH", datetime(2023, 8, 1, 10, 40, 21, 123000, tzinfo=timezone.utc), seed=200,
                        size=768)
    rid = queued(private_catalog, made)
    staging = IngestSettings.staging_dir(catalog) / str(rid)
    first = worker(private_catalog)
    try:
        deadline = time.monotonic() + 60
        while not (staging.exists() and len(list(staging.iterdir())) >= 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert staging.exists(), "the worker never started writing COGs"
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
        rec = receipts.get(catalog, rid)
        assert rec.status == "processing" and job_states(catalog, [rid]) == {rid: "doing"}
        second = worker(private_catalog)
        try:
            done = wait_status(private_catalog, rid, ("published",))
            recovery_s = time.monotonic() - killed_at
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0  # a clean stop
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert done.attempts == 2 and recovery_s < 30
    published_item(catalog, made.product_id)
    assert not leftovers(catalog, IngestSettings())
    assert job_states(catalog, [rid]) == {}


def test_an_unexpected_error_is_failed_visible_and_retried_by_the_operator(private_catalog, factory_256):
    catalog = private_catalog.settings
    made = factory_256(seed=201)
    rid = queued(private_catalog, made)
    broken = cli(private_catalog, "worker", "--once", LANDSURF_INGEST_COMPRESS="lzw")  # a configuration error
    assert broken.returncode == 0, broken.stderr[-2000:]
    rec = receipts.get(catalog, rid)
    assert rec.status == "failed" and rec.reason.startswith("unexpected error (ValueError): compress must be one of")
    assert f"landsurf ingest retry {rid}" in rec.reason
    assert Path(rec.path).exists()  # kept for the retry
    status = cli(private_catalog, "ingest", "status", "--json", "--status", "failed")
    assert status.returncode == 0 and rid in [r["id"] for r in json.loads(status.stdout)]
    retried = cli(private_catalog, "ingest", "retry", str(rid))
    assert retried.returncode == 0 and f"receipt {rid}: queued" in retried.stdout, retried.stdout + retried.stderr
    assert cli(private_catalog, "worker", "--once").returncode == 0
    rec = wait_status(private_catalog, rid, ("published",), 10)
    assert rec.attempts == 1  # an operator's retry starts the count again
    published_item(catalog, made.product_id)


def test_a_system_fault_that_persists_ends_failed_then_retry_failed_publishes(private_catalog, factory_256, tmp_path):
    catalog = private_catalog.settings
    made = factory_256(seed=202)
    rid = queued(private_catalog, made)
    not_a_dir = tmp_path / "store-is-a-file"
    not_a_dir.write_text("")
    for _ in range(2):
        run = cli(private_catalog, "worker", "--once", LANDSURF_STORE=str(not_a_dir), LANDSURF_INGEST_MAX_ATTEMPTS="2")
        assert run.returncode == 0, run.stderr[-2000:]
        time.sleep(0.2)
    rec = receipts.get(catalog, rid)
    assert rec.status == "failed" and rec.reason.startswith("system fault, gave up after 2 attempts: ")
    assert "store-is-a-file" in rec.reason and job_states(catalog, [rid]) == {}
    retried = cli(private_catalog, "ingest", "retry", "--failed")
    assert f"receipt {rid}: queued" in retried.stdout, retried.stdout + retried.stderr
    assert cli(private_catalog, "worker", "--once").returncode == 0
    assert wait_status(private_catalog, rid, ("published",), 10).status == "published"


def test_a_receipt_left_without_a_job_is_queued_again(private_catalog, factory_256):
    """A process that died between the receipt and the job (or inside a direct `process()` call)."""
    catalog = private_catalog.settings
    made = factory_256(seed=203)
    delivery = take(catalog, IngestSettings(), made.path)  # … and no job: the caller is "killed" here
    time.sleep(2.2)
    assert delivery.receipt_id in [r.id for r in stranded(catalog)]
    status = cli(private_catalog, "ingest", "status")
    assert "without a job" in status.stderr and str(delivery.receipt_id) in status.stderr
    assert cli(private_catalog, "worker", "--once").returncode == 0  # its sweep queues it, then it runs
    assert wait_status(private_catalog, delivery.receipt_id, ("published",), 10).attempts == 1
    published_item(catalog, made.product_id)


def test_a_delivery_whose_worker_dies_every_time_ends_failed(private_catalog, tmp_path):
    catalog = private_catalog.settings
    made = generate_l2a(tmp_path, "31TCH", datetime(2023, 8, 5, 10, 40, 21, 123000, tzinfo=timezone.utc), seed=204,
                        size=768)
    rid = queued(private_catalog, made)
    staging = IngestSettings.staging_dir(catalog) / str(rid)
    for attempt in (1, 2):
        w = worker(private_catalog, LANDSURF_INGEST_MAX_ATTEMPTS="2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                receipts.get(catalog, rid).attempts == attempt and staging.exists()):  # this attempt's COGs
            time.sleep(0.01)
        os.killpg(w.pid, signal.SIGKILL)
        w.wait(10)
        time.sleep(2.5)  # its heartbeat goes stale
    run = cli(private_catalog, "worker", "--once", LANDSURF_INGEST_MAX_ATTEMPTS="2")
    assert run.returncode == 0
    rec = wait_status(private_catalog, rid, ("failed",), 10)
    assert rec.reason.startswith("gave up after 2 attempts; the last: the worker stopped while processing it")
    assert not staging.exists()

# ---------------------------------------------------------------------------------------------- publication


def test_a_redelivered_history_version_is_a_duplicate_and_its_files_stay(catalog_settings, factory_256, tmp_path):
    settings = IngestSettings()
    when = datetime(2023, 9, 1, 10, 40, 21, 123000, tzinfo=timezone.utc)
    v1, v2 = factory_256(seed=210, when=when), factory_256(seed=210, when=when, version="1-1")
    for p in (v1, v2):
        assert process(catalog_settings, settings, take(catalog_settings, settings, p.path).receipt_id).status \
            == "published"
    old = published_item(catalog_settings, v1.product_id)
    assert old["collection"] == f"{S2_L2A}-history"
    files = {k: (catalog_settings.store_dir / a["href"]).stat() for k, a in old["assets"].items()}
    again = generate_l2a(tmp_path, "31TCH", when, seed=210, size=256, as_zip=False)  # same product, as a folder
    outcome = process(catalog_settings, settings, take(catalog_settings, settings, again.path).receipt_id)
    assert outcome.status == "duplicate", outcome
    assert outcome.reason.startswith(f"{v1.product_id} version 1.0 is already published as history")
    assert f"in {S2_L2A}-history with the same files" in outcome.reason
    after = published_item(catalog_settings, v1.product_id)
    assert after["properties"]["updated"] == old["properties"]["updated"]
    for key, st in files.items():
        now = (catalog_settings.store_dir / after["assets"][key]["href"]).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), key
    with session(catalog_settings) as conn:  # version links are stored root-relative
        links = conn.execute("SELECT content->'links' FROM pgstac.items WHERE id = %s", (v1.product_id,)).fetchone()[0]
    assert {"rel": "latest-version", "href": f"/collections/{S2_L2A}/items/{v2.product_id}",
            "type": "application/geo+json"} in links


def test_a_conflicting_history_version_is_quarantined_and_the_live_files_untouched(catalog_settings, factory_256):
    settings = IngestSettings()
    when = datetime(2023, 9, 2, 10, 40, 21, 123000, tzinfo=timezone.utc)
    for p in (factory_256(seed=211, when=when), factory_256(seed=211, when=when, version="1-1")):
        assert process(catalog_settings, settings, take(catalog_settings, settings, p.path).receipt_id).status \
            == "published"
    other = factory_256(seed=213, when=when)  # the id of the history version, other pixels
    old = published_item(catalog_settings, other.product_id)
    outcome = process(catalog_settings, settings, take(catalog_settings, settings, other.path).receipt_id)
    assert outcome.status == "quarantined"
    assert f"is already published as history (an older version than the current one) in {S2_L2A}-history with " \
           "different content" in outcome.reason
    assert published_item(catalog_settings, other.product_id) == old


def test_files_left_by_a_killed_publication_are_replaced_only_after_the_commit(catalog_settings, factory_256):
    from catalog.store import product_prefix

    settings = IngestSettings()
    made = factory_256(seed=212)
    final = catalog_settings.store_dir / product_prefix(S2_L2A, "31TCH", made.acquired, made.product_id)
    final.mkdir(parents=True)
    (final / "orphan.tif").write_bytes(b"left by an attempt killed between its rename and its commit")
    outcome = process(catalog_settings, settings, take(catalog_settings, settings, made.path).receipt_id)
    assert outcome.status == "published"
    published_item(catalog_settings, made.product_id)
    assert not (final / "orphan.tif").exists()
    assert not list(IngestSettings.staging_dir(catalog_settings).glob("*.replaced"))


# ------------------------------------------------------------------------------------------------ the CLI


def test_one_shot_exit_codes_and_queue_only(private_catalog, factory_256, tmp_path):
    good, queued_only = factory_256(seed=400), factory_256(seed=401)
    bad = tmp_path / "SENTINEL2A_20230601-104021-123_L2A_T31TCH_C_V1-0.zip"
    bad.write_bytes(b"<html>not a zip</html>")
    run = cli(private_catalog, "ingest", "add", str(good.path), str(bad))
    assert run.returncode == 6, run.stdout + run.stderr
    assert f"{good.path.name} (receipt " in run.stdout and "published" in run.stdout
    assert f"{bad.name} (receipt " in run.stderr and "quarantined" in run.stderr and "not a zip" in run.stderr
    missing = cli(private_catalog, "ingest", str(tmp_path / "missing.zip"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    only = cli(private_catalog, "ingest", "add", "--queue", str(queued_only.path))
    assert only.returncode == 0 and "queued" in only.stdout
    rid = int(only.stdout.split("(receipt ")[1].split(")")[0])
    assert receipts.get(private_catalog.settings, rid).status == "received"
    assert job_states(private_catalog.settings, [rid]) == {rid: "todo"}
    status = json.loads(cli(private_catalog, "ingest", "status", "--json").stdout)
    assert next(r for r in status if r["id"] == rid)["job"] == "todo"
    assert cli(private_catalog, "worker", "--once").returncode == 0
    assert receipts.get(private_catalog.settings, rid).status == "published"


def test_a_quarantine_whose_receipt_was_not_updated_is_recorded_by_the_retry(catalog_settings, tmp_path):
    """The database went away between the move to quarantine and the receipt's update: the retry finds the
    delivery in quarantine with its reason and records it, instead of looking for it in vain."""
    from ingest.pipeline import quarantine

    settings = IngestSettings()
    bad = tmp_path / "SENTINEL2A_20230701-104021-123_L2A_T31TCH_C_V1-0.zip"
    bad.write_bytes(b"not a zip")
    delivery = take(catalog_settings, settings, bad)
    quarantine(catalog_settings, settings, delivery.receipt_id, delivery.path, "not a zip archive (recorded late)")
    assert receipts.get(catalog_settings, delivery.receipt_id).status == "received"
    outcome = process(catalog_settings, settings, delivery.receipt_id)
    assert (outcome.status, outcome.reason) == ("quarantined", "not a zip archive (recorded late)")

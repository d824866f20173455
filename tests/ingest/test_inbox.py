"""An inbox that never stops: whatever lies in it (links, FIFOs, sockets, devices, files that vanish, uploads that
stall), however many processes watch it, and whatever happens to the database. On a catalog of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from catalog.database import resolve_urls, session
from catalog.operations import inbox_gauges, inbox_state
from ingest import receipts
from ingest.inbox import CLAIM_PREFIX, Inbox, recover_claims
from ingest.pipeline import process
from ingest.settings import IngestSettings
from ingest.watch import Watcher
from processing.queue import defer, job_states, opened
from tests.conftest import ROOT
from tests.ingest.conftest import leftovers, published_item


@pytest.fixture
def ingest_settings(private_catalog) -> IngestSettings:
    """A fresh inbox per test; completeness after 0.2 s."""
    settings = IngestSettings(stable_seconds=0.2, poll_seconds=0.1, sweep_seconds=1, stalled_seconds=2)
    shutil.rmtree(settings.inbox_dir(private_catalog.settings), ignore_errors=True)
    settings.inbox_dir(private_catalog.settings).mkdir(parents=True)
    return settings


def scan_until_quiet(inbox: Inbox, passes: int = 5) -> list:
    found = []
    for _ in range(passes):
        found += inbox.scan()
        time.sleep(inbox.settings.stable_seconds + 0.05)
    return found


def scan_in_thread(inbox: Inbox) -> list:
    """A scan that would block on a special file must not: it runs in a thread with a deadline."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("found", scan_until_quiet(inbox, 2)), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the scan blocked"
    return result["found"]


def refused_once(private_catalog, ingest_settings, name: str, needle: str) -> receipts.Receipt:
    inbox = Inbox(private_catalog.settings, ingest_settings)
    found = scan_in_thread(inbox)
    assert [(d.name, d.status) for d in found] == [(name, "quarantined")]
    rec = receipts.get(private_catalog.settings, found[0].receipt_id)
    assert rec.status == "quarantined" and needle in rec.reason, rec.reason
    assert not os.path.lexists(inbox.inbox / name)  # moved to quarantine: seen once
    assert scan_until_quiet(inbox, 2) == []
    assert not leftovers(private_catalog.settings, ingest_settings)
    return rec


def test_a_dangling_symlink_is_refused_once(private_catalog, ingest_settings):
    link = ingest_settings.inbox_dir(private_catalog.settings) / "dangling.zip"
    link.symlink_to("/nonexistent/product.zip")
    rec = refused_once(private_catalog, ingest_settings, "dangling.zip", "symbolic link (to /nonexistent/product.zip)")
    moved = ingest_settings.quarantine_dir(private_catalog.settings) / f"{rec.id}-dangling.zip"
    assert moved.is_symlink() and os.readlink(moved) == "/nonexistent/product.zip"


def test_a_symlink_to_a_good_delivery_is_refused_once_and_its_target_left_alone(private_catalog, ingest_settings,
                                                                                 factory_256):
    made = factory_256(seed=100)
    before = made.path.read_bytes()
    link = ingest_settings.inbox_dir(private_catalog.settings) / made.path.name
    link.symlink_to(made.path)
    refused_once(private_catalog, ingest_settings, made.path.name, "links are not followed")
    assert made.path.read_bytes() == before


def test_a_fifo_is_refused_without_being_opened(private_catalog, ingest_settings):
    os.mkfifo(ingest_settings.inbox_dir(private_catalog.settings) / "pipe.zip")
    refused_once(private_catalog, ingest_settings, "pipe.zip",
                 "the delivery is a FIFO, neither a zip file nor a folder")


def test_a_socket_is_refused(private_catalog, ingest_settings, monkeypatch):
    monkeypatch.chdir(ingest_settings.inbox_dir(private_catalog.settings))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        refused_once(private_catalog, ingest_settings, "sock", "the delivery is a socket")


def test_a_device_is_refused_without_being_read(private_catalog, ingest_settings):
    try:
        os.mknod(ingest_settings.inbox_dir(private_catalog.settings) / "zero.zip", stat.S_IFCHR | 0o600,
                 os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (CI runs as root)")
    refused_once(private_catalog, ingest_settings, "zero.zip", "the delivery is a device")


def test_files_that_vanish_while_the_inbox_is_scanned_never_stop_it(private_catalog, ingest_settings):
    settings = ingest_settings.model_copy(update={"stable_seconds": 0.0})
    inbox = Inbox(private_catalog.settings, settings)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            path = inbox.inbox / f"v{i % 7}.zip"
            try:
                path.write_bytes(b"x" * 1000)
                path.unlink()
            except OSError:
                pass
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    taken = []
    try:
        for _ in range(300):
            taken += inbox.scan()  # raises nothing, whatever disappears when
    finally:
        stop.set()
        thread.join(10)
    for d in taken:  # what was taken has a receipt and lies where the receipt says
        rec = receipts.get(private_catalog.settings, d.receipt_id)
        assert Path(rec.path).exists() and rec.path == str(d.path)
    assert not [p for p in leftovers(private_catalog.settings, settings)
                if Path(p).name.startswith(CLAIM_PREFIX)]


def test_an_unreadable_entry_is_reported_and_the_others_are_taken(private_catalog, ingest_settings, factory_256):
    inbox_dir = ingest_settings.inbox_dir(private_catalog.settings)
    locked = inbox_dir / "locked"
    locked.mkdir()
    (locked / "x").write_bytes(b"")
    locked.chmod(0)
    try:
        made = factory_256(seed=101)
        shutil.copy(made.path, inbox_dir / made.path.name)
        inbox = Inbox(private_catalog.settings, ingest_settings)
        found = scan_until_quiet(inbox, 3)
        if os.geteuid() != 0:  # root reads anything: then the folder is simply a delivery like any other
            assert "locked" in inbox.problems
            assert [d.name for d in found] == [made.path.name]
        else:
            assert made.path.name in [d.name for d in found]
    finally:
        (inbox_dir / "locked").chmod(0o755) if (inbox_dir / "locked").exists() else None


def test_two_watching_processes_write_one_receipt_per_delivery(private_catalog, ingest_settings, factory_256):
    products = [factory_256(seed=110 + i) for i in range(4)]
    env = private_catalog.env(LANDSURF_INGEST_STABLE_SECONDS="0.3", LANDSURF_INGEST_POLL_SECONDS="0.05",
                              LANDSURF_LOG_LEVEL="WARNING")
    watchers = [subprocess.Popen([sys.executable, "-m", "processing.cli", "ingest", "watch"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
                for _ in range(2)]
    inbox_dir = ingest_settings.inbox_dir(private_catalog.settings)
    try:
        time.sleep(1.0)
        for p in products:
            shutil.copy(p.path, inbox_dir / f".{p.path.name}.part")
            os.rename(inbox_dir / f".{p.path.name}.part", inbox_dir / p.path.name)
        deadline = time.monotonic() + 60
        while any(inbox_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(inbox_dir.iterdir())
    finally:
        for w in watchers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=30)[0] for w in watchers]
    assert [w.returncode for w in watchers] == [0, 0], outputs
    names = [p.path.name for p in products]
    with session(private_catalog.settings) as conn:
        rows = conn.execute("SELECT id, name FROM landsurf.deliveries WHERE name = ANY(%s)", (names,)).fetchall()
        stopped = conn.execute("SELECT count(*) FROM landsurf.inbox_watchers WHERE stopped_at IS NOT NULL "
                               "AND stopped_at > now() - interval '1 minute'").fetchone()[0]
    assert sorted(name for _, name in rows) == sorted(names)  # one receipt each
    assert set(job_states(private_catalog.settings, [i for i, _ in rows]).values()) == {"todo"}  # each queued
    assert stopped == 2  # SIGTERM is a clean stop


def test_the_watcher_rides_out_a_database_outage(private_catalog, ingest_settings, factory_256):
    catalog = private_catalog.settings

    def enqueue(deliveries) -> None:
        with opened(catalog, ingest_settings) as queue:
            for d in deliveries:
                defer(queue, d)

    watcher = Watcher(catalog, ingest_settings, enqueue)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    inbox_dir = ingest_settings.inbox_dir(catalog)
    first, second = factory_256(seed=120), factory_256(seed=121)
    try:
        shutil.copy(first.path, inbox_dir / first.path.name)
        wait_for(lambda: not (inbox_dir / first.path.name).exists(), "the first delivery to be taken")
        private_catalog.cluster.stop()
        shutil.copy(second.path, inbox_dir / second.path.name)
        wait_for(lambda: watcher.last_error is not None and "DatabaseUnavailable" in watcher.last_error,
                 "the watcher to notice the outage")
        time.sleep(1.5)
        assert thread.is_alive()
        assert (inbox_dir / second.path.name).exists()  # nothing taken without a receipt
        assert not [p for p in leftovers(catalog, ingest_settings) if CLAIM_PREFIX in p]
        private_catalog.cluster.start()
        wait_for(lambda: not (inbox_dir / second.path.name).exists(), "the watcher to take up where it was", 60)
        wait_for(lambda: not watcher.pending, "the delivery to be queued")
    finally:
        watcher.stop.set()
        thread.join(30)
    with session(catalog) as conn:
        rows = conn.execute("SELECT id FROM landsurf.deliveries WHERE name = %s", (second.path.name,)).fetchall()
        row = conn.execute("SELECT stopped_at IS NOT NULL, last_error FROM landsurf.inbox_watchers WHERE id = %s",
                           (watcher.id,)).fetchone()
    assert len(rows) == 1 and job_states(catalog, [rows[0][0]]) == {rows[0][0]: "todo"}
    assert row[0] and "DatabaseUnavailable" in row[1]


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_stalled_upload_goes_back_to_the_inbox_and_publishes_once_complete(private_catalog, factory_256):
    """Half a zip, then nothing for longer than the stable window: it is taken and found corrupt; re-checked
    before the quarantine, it has grown — back to the inbox, taken again once complete, published."""
    catalog = private_catalog.settings
    settings = IngestSettings(stable_seconds=1.0, poll_seconds=0.1)
    made = factory_256(seed=130)
    data = made.path.read_bytes()
    inbox = Inbox(catalog, settings)
    inbox.inbox.mkdir(parents=True, exist_ok=True)
    upload = open(inbox.inbox / made.path.name, "wb")  # noqa: SIM115 - the uploader keeps writing
    upload.write(data[: len(data) // 2])
    upload.flush()
    taken = []
    deadline = time.monotonic() + 30
    while not taken and time.monotonic() < deadline:
        taken = inbox.scan()
        time.sleep(0.1)
    assert [d.name for d in taken] == [made.path.name]

    def finish_upload() -> None:
        time.sleep(0.3)  # the pipeline has found the zip corrupt and is re-checking
        upload.write(data[len(data) // 2:])
        upload.close()

    writer = threading.Thread(target=finish_upload)
    writer.start()
    first = process(catalog, settings, taken[0].receipt_id)
    writer.join()
    assert first.status == "returned" and "still in progress" in first.reason, first
    assert (inbox.inbox / made.path.name).stat().st_size == len(data)
    assert not list(settings.quarantine_dir(catalog).glob(f"*{made.path.name}"))
    again = []
    deadline = time.monotonic() + 30
    while not again and time.monotonic() < deadline:
        again = inbox.scan()
        time.sleep(0.1)
    second = process(catalog, settings, again[0].receipt_id)
    assert second.status == "published", second
    published_item(catalog, made.product_id)
    assert receipts.get(catalog, first.receipt_id).status == "returned"


def test_a_claim_left_by_a_killed_taking_goes_back_or_is_finished(private_catalog, ingest_settings, factory_256):
    catalog = private_catalog.settings
    work = ingest_settings.work_dir(catalog)
    made = factory_256(seed=131)
    orphan = work / f"{CLAIM_PREFIX}dead"
    orphan.mkdir(parents=True)
    shutil.copy(made.path, orphan / made.path.name)
    assert recover_claims(catalog, ingest_settings, older_than_s=0) == [
        f"{orphan.name}: {made.path.name} back in the inbox"]
    assert (ingest_settings.inbox_dir(catalog) / made.path.name).exists() and not orphan.exists()
    # killed after its receipt was written: the taking is finished instead
    claimed = work / f"{CLAIM_PREFIX}dead2"
    claimed.mkdir()
    os.rename(ingest_settings.inbox_dir(catalog) / made.path.name, claimed / made.path.name)
    from ingest.model import Delivery

    rid = receipts.record(catalog, Delivery(claimed / made.path.name, made.path.name, "1220ab", 1),
                          source=str(ingest_settings.inbox_dir(catalog) / made.path.name))
    assert recover_claims(catalog, ingest_settings, older_than_s=0) == [f"{claimed.name}: receipt {rid} taken"]
    assert receipts.get(catalog, rid).path == str(work / str(rid) / made.path.name)
    shutil.rmtree(work / str(rid))
    receipts.finish(catalog, rid, "failed", reason="test cleanup")


def test_concurrent_one_shot_ingests_of_one_file(private_catalog, factory_256):
    made = factory_256(seed=140)
    env = private_catalog.env(LANDSURF_LOG_LEVEL="WARNING")
    procs = [subprocess.Popen([sys.executable, "-m", "processing.cli", "ingest", str(made.path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    with session(private_catalog.settings) as conn:
        rows = conn.execute("SELECT id, status, reason FROM landsurf.deliveries WHERE name = %s ORDER BY id",
                            (made.path.name,)).fetchall()
    statuses = [s for _, s, _ in rows]
    assert statuses in (["published"], ["published", "duplicate"]), rows  # joined, or a plain re-delivery
    assert job_states(private_catalog.settings, [rid for rid, _, _ in rows]) == {}  # no stray job left behind
    published_item(private_catalog.settings, made.product_id)
    assert made.path.exists()
    work = IngestSettings().work_dir(private_catalog.settings)
    assert not any((work / str(rid)).exists() for rid, _, _ in rows)
    assert not [p for p in leftovers(private_catalog.settings, IngestSettings()) if CLAIM_PREFIX in p]


def test_inbox_state_for_health_and_metrics(private_catalog, ingest_settings):
    catalog = private_catalog.settings
    inbox_dir = ingest_settings.inbox_dir(catalog)
    slow = ingest_settings.model_copy(update={"stable_seconds": 3600.0})
    watcher = Watcher(catalog, slow, lambda ds: None)
    (inbox_dir / "uploading.zip").write_bytes(b"PK")
    watcher.step()
    time.sleep(1.1)
    watcher.step()

    async def state() -> dict:
        conn = await asyncpg.connect(resolve_urls(catalog).api)
        try:
            return await inbox_state(conn)
        finally:
            await conn.close()

    running = asyncio.run(state())
    w = running["watcher"]
    assert w["state"] == "running" and w["running"] and w["heartbeat_age_s"] < 5
    assert w["untaken"] == 1 and w["oldest_untaken_age_s"] >= 1.0 and w["inbox"] == str(inbox_dir)
    gauges = inbox_gauges(running)
    assert gauges["landsurf_inbox_watcher_up"] == 1 and gauges["landsurf_inbox_untaken"] == 1
    assert gauges["landsurf_inbox_oldest_untaken_seconds"] >= 1.0
    assert set(running["deliveries"]) >= {"counts", "open", "oldest_open_age_s", "failed", "stranded"}
    assert isinstance(running["deliveries"]["stranded"], int)  # the API role may read the job table
    with session(catalog) as conn:  # the watcher dies without a word: its heartbeat ages
        conn.execute("UPDATE landsurf.inbox_watchers SET heartbeat_at = now() - interval '10 minutes' "
                     "WHERE id = %s", (watcher.id,))
    dead = asyncio.run(state())
    assert dead["watcher"]["state"] == "dead" and not dead["ok"] and dead["watcher"]["heartbeat_age_s"] > 500
    assert inbox_gauges(dead)["landsurf_inbox_watcher_up"] == 0
    watcher._stopped()
    assert asyncio.run(state())["watcher"]["state"] == "stopped"
    (inbox_dir / "uploading.zip").unlink()
    from ingest.model import Delivery  # a receipt without a job: stranded, and the state says so

    rid = receipts.record(catalog, Delivery(inbox_dir / "lost.zip", "lost.zip", "1220ff", 1))

    async def strict() -> dict:
        conn = await asyncpg.connect(resolve_urls(catalog).api)
        try:
            return await inbox_state(conn, stranded_after_s=0)
        finally:
            await conn.close()

    lost = asyncio.run(strict())
    assert lost["deliveries"]["stranded"] >= 1 and not lost["ok"]
    assert inbox_gauges(lost)["landsurf_deliveries_stranded"] >= 1
    receipts.finish(catalog, rid, "failed", reason="test: no delivery behind it")


def test_folder_deliveries_through_the_inbox(private_catalog, ingest_settings, tmp_path):
    """A folder with its `.done` marker is taken and published; one holding a link is refused, moved aside whole."""
    from datetime import datetime, timezone

    from ingest.generate import generate_l2a

    catalog = private_catalog.settings
    inbox_dir = ingest_settings.inbox_dir(catalog)
    good = generate_l2a(tmp_path / "a", "31TCH", datetime(2023, 10, 1, 10, 40, 21, 123000, tzinfo=timezone.utc),
                        seed=150, size=128, as_zip=False)
    bad = generate_l2a(tmp_path / "b", "31TCH", datetime(2023, 10, 2, 10, 40, 21, 123000, tzinfo=timezone.utc),
                       seed=151, size=128, as_zip=False)
    (bad.path / "MASKS" / "escape").symlink_to("/etc/passwd")
    shutil.copytree(good.path, inbox_dir / good.path.name)
    (inbox_dir / f"{good.path.name}.done").write_text("")
    shutil.copytree(bad.path, inbox_dir / bad.path.name, symlinks=True)
    inbox = Inbox(catalog, ingest_settings)
    found = {d.name: d for d in scan_until_quiet(inbox, 3)}
    assert found[good.path.name].status == "received" and found[bad.path.name].status == "quarantined"
    assert not any(inbox_dir.iterdir())  # marker removed with its folder
    rec = receipts.get(catalog, found[bad.path.name].receipt_id)
    assert rec.reason.startswith("the delivery holds a symbolic link: MASKS/escape")
    assert (ingest_settings.quarantine_dir(catalog) / f"{rec.id}-{bad.path.name}" / "MASKS" / "escape").is_symlink()
    outcome = process(catalog, ingest_settings, found[good.path.name].receipt_id)
    assert outcome.status == "published", outcome
    published_item(catalog, good.product_id)

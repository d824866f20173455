"""The crash test (issue 9): deliveries through real workers that are killed with -9 while extracting, while writing
COGs, while publishing, and at random moments, and restarted. Every delivery ends published exactly once or
quarantined with a reason; no receipt stays open, no job is left, nothing is left behind, and every published item
is complete with checksums that verify. 10 deliveries in the default run, 100 under `pytest -m bench`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from catalog.collections import S2_L2A
from catalog.database import session
from ingest import receipts
from ingest.generate import generate_l2a
from ingest.inbox import take
from ingest.settings import IngestSettings
from processing.queue import defer, job_states, opened, stranded
from tests.conftest import ROOT
from tests.ingest.conftest import leftovers, published_item

FAST = {"LANDSURF_INGEST_HEARTBEAT_SECONDS": "0.5", "LANDSURF_INGEST_STALLED_SECONDS": "2",
        "LANDSURF_INGEST_SWEEP_SECONDS": "0.5", "LANDSURF_INGEST_POLL_SECONDS": "0.2",
        "LANDSURF_INGEST_RETRY_WAIT_SECONDS": "0", "LANDSURF_INGEST_RETRY_EXPONENTIAL": "0",
        "LANDSURF_INGEST_MAX_ATTEMPTS": "50", "LANDSURF_LOG_LEVEL": "WARNING"}
FILES = 34  # 32 rasters, the quicklook and the MTD: a complete staging directory, about to be published
STAGES = ("extracting", "writing COGs", "publishing")


class Workers:
    def __init__(self, private_catalog, count: int) -> None:
        self.env = private_catalog.env(**FAST)
        self.procs = [self._start() for _ in range(count)]

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "processing.cli", "worker"], cwd=ROOT, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def kill(self, index: int | None = None) -> None:
        """kill -9 one worker (or all), then start its replacement at once."""
        for i in range(len(self.procs)) if index is None else [index]:
            os.killpg(self.procs[i].pid, signal.SIGKILL)
            self.procs[i].wait(10)
            self.procs[i] = self._start()

    def stop(self) -> list[int]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return [p.wait(60) for p in self.procs]

    def kill_all_for_good(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def stage(catalog, ingest) -> str | None:
    """What some worker is doing now, seen from the files: a staging directory being filled or complete, or an
    extraction without staging yet."""
    staging = ingest.staging_dir(catalog)
    dirs = [d for d in staging.iterdir() if d.name.isdigit()] if staging.exists() else []
    for d in dirs:
        try:
            n = len(os.listdir(d))
        except FileNotFoundError:
            continue
        return "publishing" if n >= FILES else "writing COGs"
    work = ingest.work_dir(catalog)
    if work.exists() and any(p.name.endswith(".extract") for p in work.iterdir()):
        return "extracting"
    return None


def crash_run(private_catalog, out: Path, count: int, random_kills: int, first_day: datetime,
              rng_seed: int, timeout: float) -> dict:
    catalog, ingest = private_catalog.settings, IngestSettings()
    products = [generate_l2a(out, "31TCH", first_day + timedelta(days=i), seed=i, size=256)
                for i in range(count - 1)]
    bad = out / f"SENTINEL2A_{first_day:%Y%m%d}-000000-000_L2A_T31TCH_C_V1-0.zip"
    bad.write_bytes(b"not a zip at all")
    ids = []
    with opened(catalog, ingest) as app:
        for path in [p.path for p in products] + [bad]:
            delivery = take(catalog, ingest, path)
            defer(app, delivery)
            ids.append(delivery.receipt_id)
    rng = random.Random(rng_seed)
    kills = dict.fromkeys(STAGES, 0) | {"random": 0}
    targets = list(STAGES)
    workers = Workers(private_catalog, 2)
    deadline = time.monotonic() + timeout
    try:
        next_random = None
        target_deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with session(catalog, "ingest") as conn:
                open_left = conn.execute("SELECT count(*) FROM landsurf.deliveries WHERE id = ANY(%s) AND status IN "
                                         "('received', 'processing', 'retrying')", (ids,)).fetchone()[0]
            if not open_left:
                break
            for _ in range(40):  # watch the files closely between two database polls
                now = stage(catalog, ingest)
                if targets and now == targets[0]:
                    workers.kill()  # every worker at once: whichever was in that stage
                    kills[targets.pop(0)] += 1
                    target_deadline = time.monotonic() + 20
                    break
                if targets and time.monotonic() > target_deadline:
                    targets.pop(0)  # not seen in time (a fast machine): go on with the others
                if not targets and kills["random"] < random_kills:
                    next_random = next_random or time.monotonic() + rng.uniform(0.2, 1.5)
                    if time.monotonic() >= next_random:
                        workers.kill(rng.randrange(len(workers.procs)))
                        kills["random"] += 1
                        next_random = None
                time.sleep(0.005)
        assert workers.stop() == [0, 0]
    finally:
        workers.kill_all_for_good()
    return {"products": products, "bad": bad, "ids": ids, "kills": kills}


def check_invariants(private_catalog, run: dict) -> None:
    catalog, ingest = private_catalog.settings, IngestSettings()
    recs = [receipts.get(catalog, i) for i in run["ids"]]
    by_name = {r.name: r for r in recs}
    assert len(by_name) == len(recs)  # one receipt per delivery
    open_ = [(r.id, r.status, r.reason) for r in recs if r.status not in ("published", "quarantined")]
    assert not open_, open_
    bad = by_name[run["bad"].name]
    assert bad.status == "quarantined" and "not a zip archive" in bad.reason
    with session(catalog) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM pgstac.items").fetchall()]
    for product in run["products"]:
        rec = by_name[product.path.name]
        assert rec.status == "published" and rec.product_id == product.product_id, rec
        published_item(catalog, product.product_id)  # exactly one item, every file there, every checksum right
    assert {p.product_id for p in run["products"]} <= set(ids)
    assert stranded(catalog) == [] and job_states(catalog, run["ids"]) == {}
    assert not leftovers(catalog, ingest)
    on_disk = {p.name for p in (catalog.store_dir / S2_L2A).glob("*/*/*/*")}
    assert on_disk == set(ids)  # no product directory without its item
    assert sum(run["kills"].values()) >= 3 and max(r.attempts for r in recs) >= 2, run["kills"]


def test_workers_killed_at_random_moments_lose_nothing(private_catalog, tmp_path):
    run = crash_run(private_catalog, tmp_path, count=10, random_kills=4,
                    first_day=datetime(2022, 5, 1, 10, 40, 21, 123000, tzinfo=timezone.utc), rng_seed=9, timeout=240)
    check_invariants(private_catalog, run)
    print("kills:", run["kills"], "attempts:", sorted(receipts.get(private_catalog.settings, i).attempts
                                                      for i in run["ids"]))
    assert run["kills"]["writing COGs"] == 1, run["kills"]


@pytest.mark.bench
def test_a_hundred_deliveries_through_killed_workers(private_catalog, tmp_path):
    run = crash_run(private_catalog, tmp_path, count=100, random_kills=25,
                    first_day=datetime(2021, 1, 1, 10, 40, 21, 123000, tzinfo=timezone.utc), rng_seed=99, timeout=1500)
    check_invariants(private_catalog, run)

"""Orchestration by lineage, end to end on a private catalog (its own embedded PostgreSQL, nothing mocked): a small
season of a mountain tile dropped into the inbox and drained by a worker ends in published snow maps and L3As
with lineage, with no command typed; a re-delivered L2A cascades to new versions of what it fed (old ones kept as
history, one current); derived items pass the offline STAC schemas; a request for what exists answers at once."""

from __future__ import annotations

import os
import shutil
import time
from datetime import date, datetime, timezone

import pytest

from catalog.collections import S2_L2A, S2_L3A, S2_SCD, S2_SNOW
from catalog.database import session
from catalog.errors import BadRequest
from catalog.store import api_path
from tests import schemas

TILE = "31TCH"  # Pyrenees: the generator's landscape has snow above the snowline
SIZE = 256
SEED = 5
# one L2A every 8 days, 25 Jan – 13 Mar 2024: the 13 March L2A completes the window of February (23 Jan – 9 Mar),
# the 10 February one that of January (23 Dec – 7 Feb); March's window (21 Feb – 7 Apr) stays open
DATES = [date(2024, 1, 25), date(2024, 2, 2), date(2024, 2, 10), date(2024, 2, 18), date(2024, 2, 26),
         date(2024, 3, 5), date(2024, 3, 13)]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A private catalog, the tile's DEM registered, an inbox."""
    from catalog.embedded import EmbeddedCluster
    from ingest.settings import IngestSettings
    from processing.setup import prepare_database
    from tests.conftest import free_port, make_home, settings_for

    port = free_port()
    settings = settings_for(make_home("landsurf-derive-"), public_url=f"http://127.0.0.1:{port}", port=port,
                            statement_timeout_ms=10000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    planning = os.environ.get("LANDSURF_PROCESSING_AUTO_DERIVE")
    os.environ["LANDSURF_PROCESSING_AUTO_DERIVE"] = "true"  # the production default (the suite turns it off)
    debounce = os.environ.get("LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S")
    os.environ["LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S"] = "0"  # the months' overview builds run in the same drain
    try:
        prepare_database(settings)
        yield settings, IngestSettings(stable_seconds=0, retry_wait_seconds=0), tmp_path_factory.mktemp("season")
    finally:
        if planning is None:
            os.environ.pop("LANDSURF_PROCESSING_AUTO_DERIVE", None)
        else:
            os.environ["LANDSURF_PROCESSING_AUTO_DERIVE"] = planning
        if debounce is None:
            os.environ.pop("LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S", None)
        else:
            os.environ["LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S"] = debounce
        cluster.destroy()
        shutil.rmtree(settings.home, ignore_errors=True)


def _drop_and_drain(settings, ingest, products) -> None:
    """Deliveries dropped into the inbox, taken by the watcher, and every job drained by a worker."""
    from ingest.watch import Watcher
    from processing.queue import create_queue, defer, opened, run_worker

    inbox = ingest.inbox_dir(settings)
    inbox.mkdir(parents=True, exist_ok=True)
    for p in products:
        shutil.copy(p.path, inbox / p.path.name)

    def enqueue(deliveries) -> None:
        with opened(settings, ingest) as app:
            for d in deliveries:
                defer(app, d)

    watcher = Watcher(settings, ingest, enqueue)
    for _ in range(3):
        watcher.step()
    assert not any(inbox.iterdir()), "the watcher took every delivery"
    run_worker(create_queue(settings, ingest), once=True)


def _items(settings, collection: str) -> list[dict]:
    with session(settings) as conn:
        rows = conn.execute("SELECT pgstac.get_item(id, collection) FROM pgstac.items WHERE collection = %s "
                            "ORDER BY datetime, id", (collection,)).fetchall()
    return [r[0] for r in rows]


def _derived_from(item: dict) -> set[str]:
    return {ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"}


@pytest.fixture(scope="module")
def season(box):
    from ingest.generate import generate_l2a
    from processing.dem import register_dem

    settings, ingest, out = box
    made = [generate_l2a(out / "v1", TILE, d, seed=SEED, size=SIZE, truth_dir=out / "truth") for d in DATES]
    dem = register_dem(settings, TILE, made[0].dem_path)
    assert dem.outcome == "published"
    _drop_and_drain(settings, ingest, made)
    return made, dem


def test_a_season_dropped_in_the_inbox_ends_in_snow_maps_and_l3as_with_lineage(box, season):
    settings, _, _ = box
    made, dem = season
    l2as = {i["id"]: i for i in _items(settings, S2_L2A)}
    assert set(l2as) == {p.product_id for p in made}
    snows = _items(settings, S2_SNOW)
    assert len(snows) == len(made)
    dem_link = api_path("collections", "dem", "items", dem.item_id)
    for snow, l2a in zip(snows, made):
        assert snow["properties"]["datetime"] == l2as[l2a.product_id]["properties"]["datetime"]
        assert _derived_from(snow) == {api_path("collections", S2_L2A, "items", l2a.product_id), dem_link}
        assert snow["properties"]["landsurf:pass1_only"] is False
        assert snow["properties"]["version"] == "1.0"
        assert set(snow["assets"]) == {"SNW_R2", "metadata", "thumbnail"}
        assert snow["properties"]["renders"]["snow"]["colormap_name"] == "landsurf_snow"
    assert any(s["properties"]["eo:snow_cover"] > 0 for s in snows), "a winter in the Pyrenees has snow"
    import rasterio

    with rasterio.open(settings.store_dir / snows[0]["assets"]["SNW_R2"]["href"]) as ds:  # the item says the truth
        assert snows[0]["assets"]["SNW_R2"]["raster:bands"][0]["nodata"] == ds.nodata == 254
    l3as = {i["properties"]["datetime"][:10]: i for i in _items(settings, S2_L3A)}
    assert set(l3as) == {"2024-01-15", "2024-02-15"}, "January and February complete; March still open"
    feb = l3as["2024-02-15"]
    in_window = {p.product_id for p in made if date(2024, 1, 23) <= p.acquired.date() <= date(2024, 3, 9)}
    assert _derived_from(feb) == {api_path("collections", S2_L2A, "items", i) for i in in_window}
    assert feb["properties"]["landsurf:window"] == ["2024-01-23", "2024-03-09"]
    for item in snows + list(l3as.values()):
        software = item["properties"]["processing:software"]
        assert software["landsurf"] and any(k.startswith("landsurf-params-") for k in software)
        assert item["properties"]["processing:version"].endswith("+" + item["properties"]["landsurf:params"]["hash"])
        for asset in item["assets"].values():  # the files are in the store with the size the item says
            path = settings.store_dir / asset["href"]
            assert path.is_file() and path.stat().st_size == asset["file:size"]
    with session(settings) as conn:
        left = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')").fetchone()[0]
        failed = conn.execute("SELECT key, reason FROM landsurf.derived_requests WHERE status = 'failed'").fetchall()
        overviews = conn.execute("SELECT month, items FROM landsurf.mosaic_overviews ORDER BY month").fetchall()
    assert left == 0 and failed == []
    assert overviews == [("2024-01", 1), ("2024-02", 1)]  # each month's mosaic overview, built in the same drain


def test_a_request_for_a_published_product_answers_at_once(box, season):
    from processing.derive import DerivedRequest, request_product

    settings, _, _ = box
    made, _ = season
    for req in (DerivedRequest("snow", l2a_id=made[3].product_id), DerivedRequest("l3a", tile="T31TCH",
                                                                                   month="2024-02")):
        request_product(settings, req)  # warm
        started = time.perf_counter()
        outcome = request_product(settings, req, requested_by="tests")
        elapsed = time.perf_counter() - started
        assert outcome.status == "published" and outcome.job_id is None
        assert outcome.collection == req.collection
        assert outcome.item_id in {i["id"] for i in _items(settings, req.collection)}
        assert elapsed < 0.5, f"{elapsed:.3f} s"


def test_an_scd_on_demand_is_queued_once_followed_and_published_with_lineage(box, season):
    from processing.derive import DerivedRequest, request_product, request_status
    from processing.queue import create_queue, run_worker

    settings, ingest, _ = box
    req = DerivedRequest("scd", tile="31TCH", start=date(2024, 2, 1), stop=date(2024, 2, 29))
    first = request_product(settings, req, requested_by="tests")
    again = request_product(settings, req, requested_by="tests")
    assert first.status == "queued" and first.job_id is not None
    assert again.job_id == first.job_id, "one job per product (the queueing lock is the request key)"
    assert request_status(settings, first.job_id).status == "queued"
    run_worker(create_queue(settings, ingest), once=True)
    done = request_status(settings, first.job_id)
    assert done.status == "published" and done.collection == S2_SCD, done
    item = _items(settings, S2_SCD)[0]
    assert item["id"] == done.item_id
    assert item["properties"]["start_datetime"] == "2024-02-01T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2024-02-29T23:59:59Z"
    used = {s["id"] for s in _items(settings, S2_SNOW)
            if date(2024, 1, 17) <= date.fromisoformat(s["properties"]["datetime"][:10]) <= date(2024, 3, 15)}
    assert _derived_from(item) == {api_path("collections", S2_SNOW, "items", i) for i in used}
    assert item["assets"]["thumbnail"]["type"] == "image/png"
    assert request_product(settings, req).status == "published"


def test_a_redelivered_l2a_cascades_to_new_versions_with_the_old_ones_in_history(box, season):
    from ingest.generate import generate_l2a
    from processing.derive import DerivedRequest, current_product

    from processing.derive import request_product
    from processing.queue import create_queue, run_worker

    settings, ingest, out = box
    made, _ = season
    old = made[3]  # 18 February: in the windows of February and March, and in the SCD of February
    feb = DerivedRequest("scd", tile="31TCH", start=date(2024, 2, 1), stop=date(2024, 2, 29))
    if request_product(settings, feb).status != "published":  # made by the on-demand test when it ran first
        run_worker(create_queue(settings, ingest), once=True)
    new = generate_l2a(out / "v2", TILE, old.acquired, seed=SEED + 1, size=SIZE, version="1-1",
                       truth_dir=out / "truth-v2")
    _drop_and_drain(settings, ingest, [new])
    snows = [s for s in _items(settings, S2_SNOW) if s["properties"]["datetime"][:10] == "2024-02-18"]
    assert len(snows) == 1, "one current snow map of the date"
    snow = snows[0]
    assert snow["properties"]["version"] == "1.1" and snow["id"].endswith("_V1-1")
    assert api_path("collections", S2_L2A, "items", new.product_id) in _derived_from(snow)
    history = {i["id"]: i for i in _items(settings, S2_SNOW + "-history")}
    previous = snow["id"].replace("_V1-1", "_V1-0")
    assert set(history) == {previous}
    assert any(ln["rel"] == "latest-version" for ln in history[previous]["links"])
    # the L3A of February was made again from the new L2A; January's (outside its window) was not
    l3as = {i["properties"]["datetime"][:10]: i for i in _items(settings, S2_L3A)}
    assert l3as["2024-02-15"]["properties"]["version"] == "1.1"
    assert api_path("collections", S2_L2A, "items", new.product_id) in _derived_from(l3as["2024-02-15"])
    assert l3as["2024-01-15"]["properties"]["version"] == "1.0"
    assert [i["properties"]["datetime"][:10] for i in _items(settings, S2_L3A + "-history")] == ["2024-02-15"]
    # and the SCD fed by the snow map
    scd = _items(settings, S2_SCD)
    assert len(scd) == 1 and scd[0]["properties"]["version"] == "1.1"
    assert api_path("collections", S2_SNOW, "items", snow["id"]) in _derived_from(scd[0])
    # the cascade ended: nothing waits, and asking again changes nothing
    with session(settings) as conn:
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                            ).fetchone()[0] == 0
    req = DerivedRequest("snow", l2a_id=new.product_id)
    assert current_product(settings, req)["id"] == snow["id"]


def test_derived_items_pass_the_offline_stac_schemas_as_served(box, season):
    import httpx

    from tests.conftest import ApiServer

    settings, _, _ = box
    stored = [i for c in (S2_SNOW, S2_L3A, S2_SCD, "dem")
              for i in _items(settings, c) + _items(settings, c + "-history")]
    assert {i["collection"] for i in stored} == {S2_SNOW, S2_L3A, S2_SCD, "dem", S2_SNOW + "-history",
                                                 S2_L3A + "-history", S2_SCD + "-history"}
    server = ApiServer(settings, settings.port).start()
    try:
        served = []
        for item in stored:
            r = httpx.get(f"{server.url}/collections/{item['collection']}/items/{item['id']}", timeout=30)
            assert r.status_code == 200, r.text
            served.append(r.json())
    finally:
        server.stop()
    problems = [e for item in served for e in schemas.errors(item)]
    assert problems == [], "\n".join(problems)
    snow = served[0]
    lineage = [ln["href"] for ln in snow["links"] if ln["rel"] == "derived_from"]
    assert lineage and all(h.startswith(server.url + "/collections/") for h in lineage), "rendered like every link"
    assert snow["assets"]["SNW_R2"]["href"].startswith(server.url + "/download/")


def test_run_request_makes_nothing_when_the_inputs_are_unchanged(box, season):
    from processing.derive import DerivedRequest, run_request

    settings, _, _ = box
    made, _ = season
    before = {i["id"] for i in _items(settings, S2_SNOW + "-history")}
    outcome = run_request(settings, DerivedRequest("snow", l2a_id=made[0].product_id))
    assert outcome.status == "published" and outcome.reason == "already made from these inputs and parameters"
    assert {i["id"] for i in _items(settings, S2_SNOW + "-history")} == before


def test_one_run_of_a_product_at_a_time_wherever_it_runs(box, season):
    """A shell's `landsurf process` and a worker's job of the same product never run at once: the second waits."""
    import threading

    from processing.derive import DerivedRequest, product_lock, run_request

    settings, _, _ = box
    made, _ = season
    req = DerivedRequest("snow", l2a_id=made[0].product_id)
    told, results = threading.Event(), []
    with product_lock(settings, req.key):
        runner = threading.Thread(target=lambda: results.append(run_request(settings, req, waiting=told.set)))
        runner.start()
        assert told.wait(15), "the second run was told it waits"
        time.sleep(0.5)
        assert runner.is_alive() and results == []
    runner.join(60)
    assert results and results[0].status == "published"


@pytest.mark.parametrize("args, what", [
    (dict(kind="ndvi", tile="31TCH"), "unknown product kind"),
    (dict(kind="l3a", tile="31TCH", month="2024-13"), "not YYYY-MM"),
    (dict(kind="l3a", tile="99XXX", month="2024-03"), "not a Sentinel-2 tile"),
    (dict(kind="snow", l2a_id="SENTINEL2A_2024_L2A"), "not a MUSCATE"),
    (dict(kind="scd", tile="31TCH", start=date(2024, 9, 1), stop=date(2024, 8, 31)), "ends before it starts"),
])
def test_bad_requests_say_what_is_wrong(args, what):
    from processing.derive import DerivedRequest

    with pytest.raises(BadRequest, match=what):
        DerivedRequest(**args).validate()


def test_request_keys_are_the_product_ids_without_version():
    from processing.derive import DerivedRequest

    l2a = "SENTINEL2B_20240218-104012-123_L2A_T31TCH_C_V1-1"
    assert DerivedRequest("snow", l2a_id=l2a).key == "SENTINEL2B_20240218-104012-123_L2B-SNOW_T31TCH_C"
    assert DerivedRequest("l3a", tile="T31TCH", month="2024-2").validate().month == "2024-02"
    assert DerivedRequest("l3a", tile="31tch", month="2024-02").key == "L3A_T31TCH_20240215"
    assert DerivedRequest("scd", tile="31TCH", start="2023-09-01", stop="2024-08-31").key == \
        "LIS_S2-SNOW_T31TCH_20230901_20240831"
    assert DerivedRequest("snow", l2a_id=l2a).datetime_range[0] == datetime(2024, 2, 18, 10, 40, 12, 123000,
                                                                            tzinfo=timezone.utc)


def test_the_worker_tick_makes_an_l3a_whose_deadline_passed_once(box, season):
    """March's window (21 Feb – 7 Apr) has no later L2A: its L3A waits for the deadline, then is made once."""
    from processing.plan import tick
    from processing.queue import create_queue, run_worker

    settings, ingest, _ = box
    assert tick(settings, today=date(2024, 4, 10)) == [], "window end + 10 days not reached"
    jobs = tick(settings, today=date(2024, 4, 30))
    assert len(jobs) == 1
    run_worker(create_queue(settings, ingest), once=True)
    march = [i for i in _items(settings, S2_L3A) if i["properties"]["datetime"].startswith("2024-03-15")]
    assert len(march) == 1 and march[0]["id"] == "SENTINEL2X_20240315-000000-000_L3A_T31TCH_C_V1-0"
    assert len(_derived_from(march[0])) == 3  # 26 Feb, 5 and 13 March
    assert tick(settings, today=date(2024, 4, 30)) == [], "made: nothing more to plan"


def test_a_snow_map_after_a_hydrological_year_closes_it_with_its_scd(box, season):
    """No SCD of 2023–2024 was asked for: the first snow map dated after 31 Aug 2024 + 15 days makes it."""
    from ingest.generate import generate_l2a

    settings, ingest, out = box
    assert not [i for i in _items(settings, S2_SCD) if i["properties"]["datetime"].startswith("2023-09-01")]
    autumn = generate_l2a(out / "autumn", TILE, date(2024, 9, 20), seed=SEED, size=SIZE, truth_dir=out / "truth")
    _drop_and_drain(settings, ingest, [autumn])
    year = [i for i in _items(settings, S2_SCD) if i["properties"]["datetime"].startswith("2023-09-01")]
    assert len(year) == 1 and year[0]["properties"]["end_datetime"] == "2024-08-31T23:59:59Z"
    snows = {s["id"]: s for s in _items(settings, S2_SNOW)}
    assert _derived_from(year[0]) == {api_path("collections", S2_SNOW, "items", i) for i, s in snows.items()
                                      if s["properties"]["datetime"] < "2024-09-16"}
    assert len(_derived_from(year[0])) == len(DATES), "the autumn map is outside the year and its margin"


def test_the_cli_makes_a_product_with_a_progress_bar_and_registers_a_dem(box, season):
    from tests.conftest import env_for, run_cli

    settings, _, _ = box
    made, dem = season
    env = env_for(settings)
    done = run_cli("process", "scd", "--tile", "31TCH", "--start", "2024-01-10", "--stop", "2024-03-20", env=env,
                   timeout=300)
    assert done.returncode == 0, done.stderr
    assert "SCD of T31TCH 2024-01-10 – 2024-03-20: published LIS_S2-SNOW_T31TCH_20240110_20240320_V1-0" in done.stdout
    period = [i for i in _items(settings, S2_SCD) if i["properties"]["datetime"].startswith("2024-01-10")]
    assert len(period) == 1 and len(_derived_from(period[0])) == len(DATES)
    year = run_cli("process", "scd", "--tile", "31TCH", "--year", "2023", "--queue", env=env)
    assert year.returncode == 0 and "SCD of T31TCH 2023-09-01 – 2024-08-31: published" in year.stdout, year.stderr
    same = run_cli("process", "l3a", "--tile", "31TCH", "--month", "2024-01", env=env)
    assert same.returncode == 0 and "(already made from these inputs and parameters)" in same.stdout, same.stderr
    again = run_cli("process", "snow", "SENTINEL2A_20240101-104000-000_L2A_T31TCH_C_V1-0", env=env)
    assert again.returncode == 6 and "no current L2A of T31TCH acquired 2024-01-01" in again.stderr
    dup = run_cli("dem", "add", "31TCH", str(made[0].dem_path), env=env)
    assert dup.returncode == 0 and dup.stdout.startswith(f"duplicate {dem.item_id}"), dup.stderr


def _bumped(before: dict[str, str], after: list[dict]) -> bool:
    """Every product of `before` is current in `after` one minor version higher."""
    now = {i["id"].rsplit("_V", 1)[0]: i["properties"]["version"] for i in after}
    if len(now) != len(before):
        return False
    for item_id, version in before.items():
        major, minor = version.split(".")
        if now.get(item_id.rsplit("_V", 1)[0]) != f"{major}.{int(minor) + 1}":
            return False
    return True


def test_a_replaced_dem_cascades_to_the_snow_maps_made_with_it_and_their_scds(box, season, tmp_path):
    """A DEM that covers only part of the products replaces the tile's: the snow maps made with the old one are
    made again, in the documented pass-1-only mode (said in the item); a covering DEM then brings them back to
    passes 1 and 2. Each time the SCDs they feed follow, and the cascade ends."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from processing.dem import register_dem
    from processing.plan import on_dem_published
    from processing.queue import create_queue, run_worker

    settings, ingest, _ = box
    made, old = season
    with rasterio.open(made[0].dem_path) as ds:
        heights, profile = ds.read(1), ds.profile
        part_profile = profile | {"width": 32, "height": 32, "transform": ds.window_transform(Window(0, 0, 32, 32))}
    part, higher = tmp_path / "T31TCH_ALT_part.tif", tmp_path / "T31TCH_ALT_R2_v2.tif"
    with rasterio.open(part, "w", **part_profile) as ds:
        ds.write(heights[:32, :32], 1)
    with rasterio.open(higher, "w", **profile) as ds:
        ds.write(np.where(heights == -32768, heights, heights + 50).astype(np.int16), 1)

    def versions(collection: str) -> dict[str, str]:
        return {i["id"]: i["properties"]["version"] for i in _items(settings, collection)}

    for dem_file, covers in ((part, False), (higher, True)):
        snows, scds = versions(S2_SNOW), versions(S2_SCD)
        dem = register_dem(settings, TILE, dem_file)
        assert dem.outcome == "published" and dem.superseded is not None
        assert len(on_dem_published(settings, TILE, dem.superseded)) == len(snows)
        run_worker(create_queue(settings, ingest), once=True)
        after = _items(settings, S2_SNOW)
        assert _bumped(snows, after), (snows, [(i["id"], i["properties"]["version"]) for i in after])
        link = api_path("collections", "dem", "items", dem.item_id)
        for snow in after:
            assert (link in _derived_from(snow)) is covers and snow["properties"]["landsurf:pass1_only"] is not covers
            lineage = snow["properties"]["processing:lineage"]
            assert ("does not cover this product: pass 1 only" in lineage) is not covers
        assert _bumped(scds, _items(settings, S2_SCD))
        with session(settings) as conn:
            assert conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                                ).fetchone()[0] == 0


def test_staging_left_by_a_killed_job_is_removed_after_a_day(tmp_path):
    import os as os_

    from catalog.settings import CatalogSettings
    from ingest.settings import IngestSettings
    from processing.plan import STAGING_MAX_AGE_S, _clean_staging

    settings = CatalogSettings(home=tmp_path)
    root = IngestSettings.staging_dir(settings)
    old, live, other = root / "derive-old", root / "derive-live", root / "42"
    for d in (old, live, other):
        (d / "part").mkdir(parents=True)
    past = time.time() - STAGING_MAX_AGE_S - 60
    os_.utime(old, (past, past))
    os_.utime(other, (past, past))
    assert _clean_staging(settings) == ["derive-old"]
    assert not old.exists() and live.exists() and other.exists(), "only derived-product staging, only when stale"


def test_a_worker_killed_while_making_a_product_leaves_nothing_half_done(box, season):
    """kill -9 of the worker while its derive job runs: the job is a stalled job, another worker's sweep retries it,
    the retry removes what the killed attempt left, and the product ends published once."""
    import signal
    import subprocess
    import sys

    from processing.derive import DerivedRequest, request_product, request_status
    from processing.queue import create_queue, run_worker, sweep_now
    from tests.conftest import ROOT, env_for

    settings, ingest, _ = box
    req = DerivedRequest("scd", tile="31TCH", start=date(2024, 1, 1), stop=date(2024, 3, 31))
    job = request_product(settings, req).job_id
    fast = {"LANDSURF_INGEST_HEARTBEAT_SECONDS": "0.5", "LANDSURF_INGEST_STALLED_SECONDS": "2",
            "LANDSURF_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "processing.cli", "worker"], cwd=ROOT,
                              env=env_for(settings, **fast), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            with session(settings, "ingest") as conn:
                status = conn.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job,)).fetchone()
            if status and status[0] == "doing":
                break
            time.sleep(0.005)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert status and status[0] == "doing", f"the job was never seen running ({status})"
    if request_status(settings, job).status == "published":
        pytest.skip("the job finished before the kill landed")  # a very fast machine: nothing was interrupted
    time.sleep(2.5)  # the dead worker's heartbeat is now older than the stalled limit
    report = sweep_now(settings, ingest.model_copy(update={"stalled_seconds": 2}))
    assert job in report.stalled
    run_worker(create_queue(settings, ingest), once=True)
    done = request_status(settings, job)
    assert done.status == "published", done
    assert [i["id"] for i in _items(settings, S2_SCD) if i["properties"]["datetime"].startswith("2024-01-01")] == [
        done.item_id]
    product_dirs = list((settings.store_dir / S2_SCD / "31TCH" / "2024" / "01").glob(req.key + "_V*"))
    assert [d.name for d in product_dirs] == [done.item_id], "one product directory, complete"
    assert list(ingest.staging_dir(settings).glob("derive-*")) == [], "nothing left behind"

"""Monthly mosaics (catalog/mosaics.py, processing/mosaics.py) against the session's real database and API.

Two L3A-shaped items of one month (tiles 31TCH and 31TDH, adjacent, overlapping by 9.8 km; the ten FRC bands as
int16 COGs at 400 m so that a small-zoom tile has real pixels to compare) are published by the one product path.
The ground truth of an overview tile is the dynamic mosaic of the same items, read through the same app by an
equivalent search that has no overview."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import PurePosixPath

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from catalog.collections import S2_L3A, STAC_VERSION
from catalog.database import session
from catalog.mosaics import MONTH_SORT, SOURCE_HEADER, month_interval
from catalog.publish import publish_product
from tests.catalog.test_viewer import VIEWPORT, Viewer, browser  # noqa: F401 - `browser` is a fixture
from tests.conftest import env_for, run_cli

MONTH = "2023-04"
PIXEL = 400.0
SIZE = 274  # 109.6 km: a whole MGRS tile
TMS = morecantile.tms.get("WebMercatorQuad")
RENDER = {"assets": ["FRC_B4", "FRC_B3", "FRC_B2"], "rescale": "0,3000", "nodata": "-10000"}


def _bands() -> list[str]:
    from processing.l3a_output import output_bands

    return [b.key for b in output_bands() if b.key.startswith("FRC_")]


def _pattern(tile: str, version: int, band: int) -> np.ndarray:
    """A field with texture at several scales, other per tile, band and version; a no-data corner."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = {"31TCH": 0, "31TDH": 2}[tile] + 3 * version + band
    field = 1200 + 700 * np.sin(cols / (9 + band) + phase) * np.cos(rows / 13 - phase) + 15 * ((rows + cols) % 5)
    if version:
        field = field + 1200  # the new version is another picture (brighter everywhere)
    out = field.astype(np.int16)
    out[:40, :40] = -10000
    return out


def _publish(settings, tile: str, version: int) -> dict:
    from ingest.settings import IngestSettings
    from ingest.synthetic.grid import tile_grid

    grid = tile_grid(tile)
    product_id = f"L3A_T{tile}_20230415_V1-{version}"
    staging = IngestSettings.staging_dir(settings) / f"mosaic-test-{uuid.uuid4().hex[:10]}"
    staging.mkdir(parents=True)
    transform = from_origin(grid.ulx, grid.uly, PIXEL, PIXEL)
    assets = {}
    for k, key in enumerate(_bands()):
        path = staging / f"{product_id}_{key}.tif"
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="int16",
                          crs=f"EPSG:{grid.epsg}", transform=transform, nodata=-10000) as ds:
                ds.write(_pattern(tile, version, k), 1)
            rasterio.shutil.copy(mem.name, str(path), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE="128",
                                 OVERVIEW_RESAMPLING="AVERAGE")
        digest = "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
        assets[key] = {"href": path.name, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "file:checksum": digest}
    w, s, e, n = transform_bounds(f"EPSG:{grid.epsg}", "EPSG:4326", grid.ulx, grid.uly - SIZE * PIXEL,
                                  grid.ulx + SIZE * PIXEL, grid.uly)
    relative = PurePosixPath(S2_L3A, tile, "2023", "04", product_id)
    for asset in assets.values():
        asset["href"] = f"{relative}/{asset['href']}"
    item = {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [], "id": product_id,
            "collection": S2_L3A, "bbox": [w, s, e, n],
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": {"datetime": "2023-04-15T00:00:00Z", "grid:code": f"MGRS-{tile}",
                           "platform": "sentinel-2x", "version": f"1-{version}"},
            "assets": assets, "links": []}
    assert publish_product(settings, item, staging, relative).outcome == "published"
    return item


@pytest.fixture(scope="module")
def month_items(catalog_settings, api):
    items = {tile: _publish(catalog_settings, tile, 0) for tile in ("31TCH", "31TDH")}
    yield items
    with session(catalog_settings, "admin") as conn:
        for collection in (S2_L3A, S2_L3A + "-history"):
            conn.execute("DELETE FROM pgstac.items WHERE collection = %s AND id LIKE %s",
                         (collection, "L3A_T31T_H_20230415%"))
        conn.execute("DELETE FROM landsurf.mosaic_overviews WHERE month = %s", (MONTH,))


def _tile_over(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    t = TMS.tile(lon, lat, z)
    return z, t.x, t.y


def _png(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    with MemoryFile(r.content) as f, f.open() as png:
        return png.read().astype(np.int16)


def _twin(api, admin_token: str, name: str) -> str:
    """The month's search registered under other metadata: same items, same order, no overview."""
    body = {"collections": [S2_L3A], "datetime": month_interval(MONTH), "sortby": MONTH_SORT,
            "metadata": {"name": name}}
    r = httpx.post(f"{api.url}/raster/searches/register", json=body, timeout=10,
                   headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _get(api, search_id: str, z: int, x: int, y: int) -> httpx.Response:
    return httpx.get(f"{api.url}/raster/searches/{search_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                     params=RENDER, timeout=30)


def _close(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of pixels where both have data that agree within 24 of 255 on every band, share of agreeing masks)."""
    both = (a[3] == 255) & (b[3] == 255)
    masks = float(((a[3] == 255) == (b[3] == 255)).mean())
    if not both.any():
        return 0.0, masks
    near = (np.abs(a[:3] - b[:3]).max(axis=0) <= 24)[both]
    return float(near.mean()), masks


def test_a_month_is_registered_listed_and_its_small_zooms_come_from_its_overview(api, catalog_settings,
                                                                               month_items, admin_token):
    from processing.mosaics import build_overview

    started = time.perf_counter()
    built = build_overview(catalog_settings, S2_L3A, MONTH)
    print(f"overview built in {time.perf_counter() - started:.2f} s")
    assert built.status == "built" and built.items == 2
    assert build_overview(catalog_settings, S2_L3A, MONTH).status == "unchanged"  # same inputs: nothing to do
    path = catalog_settings.store_dir / built.path
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == len(_bands()) and list(ds.descriptions) == _bands()
        assert ds.overviews(1), "no internal overviews"
        assert abs(ds.res[0] - TMS.matrix(7).cellSize) < 1e-6  # the z7 grid, pixel for pixel

    listed = httpx.get(f"{api.url}/raster/mosaics", params={"collection": S2_L3A}, timeout=10)
    assert listed.status_code == 200 and "max-age" not in listed.headers.get("cache-control", "")
    entry = next(m for m in listed.json()["mosaics"] if m["month"] == MONTH)
    assert entry["name"] == f"{S2_L3A} {MONTH}" and entry["search_id"] == built.search_id
    assert entry["overview"]["max_zoom"] == 7 and entry["overview"]["items"] == 2
    one = httpx.get(f"{api.url}/raster/mosaics/{S2_L3A}/{MONTH}", timeout=10)
    assert one.status_code == 200 and one.json() == entry
    assert httpx.get(f"{api.url}/raster/mosaics/{S2_L3A}/2023-13", timeout=10).status_code == 400
    assert httpx.get(f"{api.url}/raster/mosaics/{S2_L3A}/1999-01", timeout=10).status_code == 404

    template = entry["renders"]["true-colour"]["tiles"]
    lon = (month_items["31TCH"]["bbox"][2] + month_items["31TDH"]["bbox"][0]) / 2  # the overlap
    lat = (month_items["31TCH"]["bbox"][1] + month_items["31TCH"]["bbox"][3]) / 2
    twin = _twin(api, admin_token, "no overview")
    for z in (5, 6, 7):
        z, x, y = _tile_over(lon, lat, z)
        from_overview = httpx.get(template.format(z=z, x=x, y=y), timeout=30)
        assert from_overview.headers[SOURCE_HEADER] == "overview", z
        dynamic = _get(api, twin, z, x, y)
        assert dynamic.headers[SOURCE_HEADER] == "dynamic"  # a search with no overview: from the items
        a, b = _png(from_overview), _png(dynamic)
        near, masks = _close(a, b)
        print(f"z{z}: {near:.1%} of the pixels within 24/255 of the dynamic mosaic, masks agree on {masks:.1%}")
        assert masks > 0.97 and near > 0.9, (z, near, masks)
    z, x, y = _tile_over(lon, lat, 8)
    assert _get(api, built.search_id, z, x, y).headers[SOURCE_HEADER] == "dynamic"  # z >= 8: from the items
    # what the overview cannot answer the same way is answered from the items
    z, x, y = _tile_over(lon, lat, 7)
    r = httpx.get(f"{api.url}/raster/searches/{built.search_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                  params={**RENDER, "pixel_selection": "highest"}, timeout=30)
    assert r.status_code == 200 and r.headers[SOURCE_HEADER] == "dynamic"
    r = httpx.get(f"{api.url}/raster/searches/{built.search_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                  params={"assets": "FRC_B8", "expression": "b1/10", "rescale": "0,300"}, timeout=30)
    assert r.status_code == 200 and r.headers[SOURCE_HEADER] == "overview"  # an expression works on it too
    far = TMS.tile(-60.0, -30.0, 6)  # no item there
    assert _get(api, built.search_id, 6, far.x, far.y).status_code == 204


def test_a_new_version_of_an_item_queues_a_rebuild_whose_pixels_change(api, catalog_settings, month_items,
                                                                      admin_token, monkeypatch):
    from processing.derive import DerivedRequest
    from processing.mosaics import build_overview
    from processing.plan import after_derived
    from processing.queue import create_queue, run_worker

    before = build_overview(catalog_settings, S2_L3A, MONTH)
    with session(catalog_settings) as conn:
        old_row = conn.execute("SELECT path, inputs_signature, built_at FROM landsurf.mosaic_overviews "
                               "WHERE collection = %s AND month = %s", (S2_L3A, MONTH)).fetchone()
    item = month_items["31TDH"]
    lon = (item["bbox"][0] + item["bbox"][2]) / 2
    lat = (item["bbox"][1] + item["bbox"][3]) / 2
    z, x, y = _tile_over(lon, lat, 7)
    picture_before = _png(_get(api, before.search_id, z, x, y))

    newer = _publish(catalog_settings, "31TDH", 1)
    monkeypatch.setenv("LANDSURF_PROCESSING_AUTO_DERIVE", "true")
    monkeypatch.setenv("LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S", "0")
    req = DerivedRequest("l3a", "31TDH", month=MONTH)
    jobs = after_derived(catalog_settings, req, newer["id"])
    assert len(jobs) == 1
    assert after_derived(catalog_settings, req, newer["id"]) == []  # a build already waits: it sees both
    run_worker(create_queue(catalog_settings), once=True, queues=("derive",))

    with session(catalog_settings) as conn:
        row = conn.execute("SELECT path, inputs_signature, built_at, items FROM landsurf.mosaic_overviews "
                           "WHERE collection = %s AND month = %s", (S2_L3A, MONTH)).fetchone()
        status = conn.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", (jobs[0],)).fetchone()
    assert status is None or status[0] == "succeeded", status  # finished jobs are deleted
    assert row[1] != old_row[1] and row[2] > old_row[2] and row[3] == 2
    assert not (catalog_settings.store_dir / old_row[0]).exists(), "the replaced overview was left behind"

    fresh = _get(api, before.search_id, z, x, y)
    assert fresh.headers[SOURCE_HEADER] == "overview"
    picture_after = _png(fresh)
    changed = (np.abs(picture_after[:3] - picture_before[:3]).max(axis=0) > 24)[picture_after[3] == 255]
    # 31TDH east of the overlap is about 45 % of the two tiles' width: all of it brighter, 31TCH's part unchanged
    assert 0.3 < changed.mean() < 0.6, f"{changed.mean():.0%} of the pixels changed"
    twin = _twin(api, admin_token, "no overview, after the new version")
    near, masks = _close(picture_after, _png(_get(api, twin, z, x, y)))
    assert masks > 0.97 and near > 0.9, (near, masks)

    out = run_cli("mosaics", "build", "--month", MONTH, env=env_for(catalog_settings))
    assert out.returncode == 0 and f"{S2_L3A} {MONTH}: unchanged" in out.stdout, out.stdout + out.stderr


def test_without_a_readable_overview_the_tiles_come_from_the_items(api, catalog_settings, month_items):
    from processing.mosaics import build_overview

    built = build_overview(catalog_settings, S2_L3A, MONTH)
    item = month_items["31TCH"]
    z, x, y = _tile_over((item["bbox"][0] + item["bbox"][2]) / 2, (item["bbox"][1] + item["bbox"][3]) / 2, 6)
    path = catalog_settings.store_dir / built.path
    aside = path.with_name(".aside-" + path.name)
    os.replace(path, aside)
    try:
        r = _get(api, built.search_id, z, x, y)
        assert r.status_code == 200 and r.headers[SOURCE_HEADER] == "dynamic"
    finally:
        os.replace(aside, path)
    assert _get(api, built.search_id, z, x, y).headers[SOURCE_HEADER] == "overview"
    with pytest.raises(Exception, match="sentinel2-l3a"):
        build_overview(catalog_settings, "sentinel2-l2a", MONTH)



def test_the_viewer_draws_a_month_from_its_registered_mosaic(browser, api, catalog_settings, month_items):
    """The viewer's month layer is the month's search tiles (one layer), its small zooms from the overview."""
    from processing.mosaics import build_overview

    built = build_overview(catalog_settings, S2_L3A, MONTH)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        viewer = Viewer(context.new_page(), api.url + "/viewer/")
        tiles: list[tuple[str, int, str | None]] = []
        viewer.page.on("response", lambda r: "/tiles/WebMercatorQuad/" in r.url and tiles.append(
            (r.url, r.status, r.headers.get(SOURCE_HEADER.lower()))))
        viewer.page.select_option("#month", MONTH)
        viewer.wait("(m => m.getSource('l3a-0') && m.loaded() && m.areTilesLoaded())(window.landsurfViewer.map)")
        viewer.page.wait_for_timeout(300)
        assert viewer.page.evaluate("() => window.landsurfViewer.map.getSource('l3a-1')") is None  # one layer
        assert tiles and all(f"/raster/searches/{built.search_id}/tiles/" in url for url, _, _ in tiles), tiles
        assert {status for _, status, _ in tiles} <= {200, 204}, tiles
        fitted = viewer.map_pixels()
        tiles.clear()
        viewer.page.evaluate("() => window.landsurfViewer.map.jumpTo({zoom: 6.5})")  # 512 px tiles of z <= 6
        viewer.wait("(m => m.loaded() && m.areTilesLoaded())(window.landsurfViewer.map)")
        viewer.page.wait_for_timeout(300)
        assert tiles and {source for _, _, source in tiles} == {"overview"}, tiles
        for pixels in (fitted, viewer.map_pixels()):
            h, w = pixels.shape[1:]
            assert pixels[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3].std() > 10, "the month is drawn flat"
        assert viewer.problems == []
    finally:
        context.close()

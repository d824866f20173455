"""The web viewer (/viewer) in real headless Chromium — Debian's `chromium`, driven by Playwright's Python package —
against the session's real API and its six published L2A products of tile 31TCH.

Every browser test fails on any console error, page error, failed request or HTTP error answer the page met: the
strict Content-Security-Policy reports its violations there too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import zipfile
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile

from catalog.collections import S2_L2A, S2_L3A, S2_SNOW, STAC_VERSION
from catalog.database import session
from catalog.publish import publish_product
from catalog.viewer import CSP, STATIC, is_built
from tests.conftest import ApiServer, free_port

VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 20_000
# Two monthly syntheses of tile 31TCH, each from three small L2As of its month (another landscape each: another seed)
MONTHS = {"2024-03": 21, "2024-07": 22}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: run .ci/system-deps.sh (it installs the `chromium` package)"
    assert is_built(), "the viewer is not built (MapLibre GL missing from catalog/viewer/static/vendor): run `make viewer`"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


class Viewer:
    """One page of the viewer, with every problem it meets recorded."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        self.ready_s = time.perf_counter() - started

    def wait(self, predicate: str) -> None:
        # a function, not a string body: Playwright evaluates those without eval, which the page's CSP forbids
        self.page.wait_for_function(f"() => {predicate}", timeout=TIMEOUT_MS)

    def entries(self) -> list[str]:
        return self.page.eval_on_selector_all("#results li button", "bs => bs.map(b => b.dataset.id)")

    def search(self, *, limit: int = 50, expect: int | None = None, **fields: str) -> None:
        self.page.select_option("#collection", S2_L2A)
        self.page.fill("#limit", str(limit))
        for name in ("start", "end", "cloud", "tile"):
            self.page.fill(f"#{name}", fields.get(name, ""))
        self.page.click("#go")
        self.wait("/ of \\d+ products/.test(document.getElementById('status').textContent)")
        if expect is not None:
            self.wait(f"document.querySelectorAll('#results li').length === {expect}")

    def map_tiles_loaded(self, source: str) -> None:
        self.wait(f"(m => m.getSource('{source}') && m.loaded() && m.areTilesLoaded())(window.landsurfViewer.map)")
        self.page.wait_for_timeout(300)  # the frame that draws them

    def map_pixels(self) -> np.ndarray:
        with MemoryFile(self.page.locator("#map").screenshot()) as f, f.open() as png:
            return png.read()[:3].astype(np.int16)


@pytest.fixture
def viewer(browser, api) -> Iterator[Viewer]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield Viewer(context.new_page(), api.url + "/viewer/")
    finally:
        context.close()


def _post_search(api, body: dict) -> dict:
    r = httpx.post(f"{api.url}/search", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_page_is_served_under_a_strict_policy_and_linked_from_the_landing_page(api):
    r = httpx.get(f"{api.url}/viewer", timeout=10)
    assert r.status_code == 307 and r.headers["location"].endswith("/viewer/")
    page = httpx.get(f"{api.url}/viewer/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy == CSP and "script-src 'self'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert " style=" not in html and "<style" not in html, "inline style"
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', html)), "a resource from another host"
    module = httpx.get(f"{api.url}/viewer/vendor/maplibre-gl.mjs", timeout=10)
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert module.headers["content-security-policy"] == CSP
    assert httpx.get(f"{api.url}/viewer/../catalog/viewer/__init__.py", timeout=10).status_code == 404
    assert httpx.post(f"{api.url}/viewer/", timeout=10).status_code == 401  # writes denied, as everywhere
    links = httpx.get(f"{api.url}/", timeout=10).json()["links"]
    to_viewer = [link for link in links if link["rel"] == "alternate" and link["type"] == "text/html"]
    assert [link["href"] for link in to_viewer] == [f"{api.url}/viewer/"]


def test_a_search_lists_and_draws_every_footprint_page_by_page(viewer, api, published_items):
    matched = _post_search(api, {"collections": [S2_L2A], "limit": 1})["numberMatched"]
    assert matched == len(published_items)
    viewer.search(limit=4, expect=4)
    assert viewer.page.is_visible("#more")
    viewer.page.click("#more")  # the API's `next` link
    viewer.wait(f"document.querySelectorAll('#results li').length === {matched}")
    assert not viewer.page.is_visible("#more")
    assert sorted(viewer.entries()) == sorted(i["id"] for i in published_items)
    assert viewer.page.text_content("#status").startswith(f"{matched} of {matched} products")
    drawn = ("[...new Set(window.landsurfViewer.map.queryRenderedFeatures({layers: ['footprints-line']})"
             ".map(f => f.properties.id))]")
    viewer.wait(f"{drawn}.length === {matched}")  # the GeoJSON source is tiled in a worker, then drawn
    assert sorted(viewer.page.evaluate(f"() => {drawn}")) == sorted(i["id"] for i in published_items)
    assert viewer.problems == []


def test_the_search_fields_filter_as_the_api_does(viewer, published_items):
    covers = sorted(i["properties"]["eo:cloud_cover"] for i in published_items)
    limit = covers[len(covers) // 2]
    expected = sorted(i["id"] for i in published_items if i["properties"]["eo:cloud_cover"] <= limit)
    assert 0 < len(expected) < len(published_items)
    viewer.search(cloud=str(limit), expect=len(expected))
    assert sorted(viewer.entries()) == expected

    dates = sorted(i["properties"]["datetime"][:10] for i in published_items)
    start, end = dates[1], dates[3]
    expected = sorted(i["id"] for i in published_items if start <= i["properties"]["datetime"][:10] <= end)
    viewer.search(start=start, end=end, tile="31TCH", expect=len(expected))
    assert sorted(viewer.entries()) == expected and len(expected) == 3

    viewer.search(tile="32ABC")
    assert viewer.entries() == [] and viewer.page.text_content("#status").startswith("0 of 0")
    assert viewer.problems == []


def test_an_area_drawn_on_the_map_bounds_the_search(viewer, published_items):
    viewer.search(expect=len(published_items))  # the map now fits the footprints, 40 px of margin around them
    box = viewer.page.locator("#map").bounding_box()
    mouse = viewer.page.mouse

    def drag(x0: float, y0: float, x1: float, y1: float) -> None:
        viewer.page.click("#draw")
        mouse.move(box["x"] + x0, box["y"] + y0)
        mouse.down()
        mouse.move(box["x"] + x1, box["y"] + y1, steps=5)
        mouse.up()

    drag(4, 4, 30, 30)  # in the margin: outside every footprint
    assert viewer.page.text_content("#area-text") != "no area"
    viewer.search()
    assert viewer.entries() == []
    cx, cy = box["width"] / 2, box["height"] / 2
    drag(cx - 40, cy - 40, cx + 40, cy + 40)  # the middle of the tile
    viewer.search(expect=len(published_items))
    viewer.page.click("#clear-area")
    assert viewer.page.text_content("#area-text") == "no area"
    assert viewer.problems == []


def test_a_selected_product_shows_its_quicklook_and_its_tiles(viewer, published_items):
    viewer.search(expect=len(published_items))
    viewer.page.wait_for_timeout(300)
    before = viewer.map_pixels()
    clearest = min(published_items, key=lambda i: i["properties"]["eo:cloud_cover"])
    tiles: list[int] = []
    viewer.page.on("response", lambda r: "/tiles/WebMercatorQuad/" in r.url and tiles.append(r.status))
    started = time.perf_counter()
    viewer.page.click(f"#results button[data-id='{clearest['id']}']")
    viewer.map_tiles_loaded("item")
    painted_s = time.perf_counter() - started
    viewer.wait("document.getElementById('thumb').complete && document.getElementById('thumb').naturalWidth > 0")
    assert viewer.page.text_content("#detail-title") == clearest["id"]
    after = viewer.map_pixels()

    assert tiles and set(tiles) == {200}, tiles
    changed = np.abs(after - before).max(axis=0) > 24
    assert changed.mean() > 0.2, f"only {changed.mean():.1%} of the map changed"
    h, w = after.shape[1:]
    middle = after[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3]
    assert middle.std() > 10, "the tiles are flat"
    print(f"viewer: page ready {viewer.ready_s:.2f} s, selected product painted {painted_s:.2f} s "
          f"after the click ({len(tiles)} tiles)")
    assert viewer.problems == []


def test_the_time_slider_steps_through_the_tiles_products_in_date_order(viewer, published_items):
    viewer.search(tile="31TCH", expect=len(published_items))
    in_order = sorted(published_items, key=lambda i: i["properties"]["datetime"])
    viewer.page.click(f"#results button[data-id='{in_order[0]['id']}']")
    viewer.map_tiles_loaded("item")
    assert viewer.page.is_visible("#time")
    view = viewer.page.evaluate("() => window.landsurfViewer.map.getCenter().toArray()")
    pictures = {}
    for at in (0, len(in_order) - 1):
        viewer.page.locator("#time").evaluate(
            "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }", at)
        viewer.wait(f"document.getElementById('detail-title').textContent === '{in_order[at]['id']}'")
        viewer.map_tiles_loaded("item")
        assert viewer.page.text_content("#time-text").startswith(in_order[at]["properties"]["datetime"][:10])
        pictures[at] = viewer.map_pixels()
    assert viewer.page.evaluate("() => window.landsurfViewer.map.getCenter().toArray()") == view  # time moved only
    differs = np.abs(pictures[0] - pictures[len(in_order) - 1]).max(axis=0) > 24
    assert differs.mean() > 0.05, f"first and last dates differ on {differs.mean():.1%} of the map"
    assert viewer.problems == []


def _l3a_item(product, relative_dir: PurePosixPath) -> dict:
    """The item of a synthesis, as small as the catalog and the viewer need: footprint, date, tile, renders, assets
    at their store paths with checksums."""
    from rasterio.warp import transform_bounds

    from processing.colormaps import renders

    with rasterio.open(product.files["FRC_B4"].path) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [], "id": product.product_id,
        "collection": S2_L3A, "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": f"{product.date.isoformat()}T00:00:00Z", "grid:code": f"MGRS-{product.tile}",
                       "platform": "sentinel-2x", "eo:cloud_cover": product.cloud_percent,
                       "version": product.version, "renders": renders("l3a")},
        "assets": {key: {"href": f"{relative_dir}/{f.path.name}", "type": f.media_type, "roles": ["data"],
                         "file:checksum": f.checksum} for key, f in product.files.items()},
        "links": [],
    }


@pytest.fixture(scope="module")
def l3a_months(catalog_settings, api, tmp_path_factory) -> Iterator[dict[str, dict]]:
    """MONTHS synthesised by the real L3A code from generated L2As and published in the session's catalog; taken
    out again at the end, so that the other tests' catalog is what it was."""
    from ingest.cog import write_cogs
    from ingest.generate import iter_series
    from ingest.muscate import read_l2a
    from ingest.settings import IngestSettings
    from processing.l3a import L3AParams, l3a_input, synthesis_date, synthesize

    root = tmp_path_factory.mktemp("l3a-viewer")
    params = L3AParams.load()
    items: dict[str, dict] = {}
    for month, seed in MONTHS.items():
        year, number = (int(v) for v in month.split("-"))
        inputs = []
        for made in iter_series(root / month, "31TCH", date(year, number, 10), date(year, number, 20), 5,
                                seed=seed, size=256, as_zip=False):
            cogs = write_cogs(read_l2a(Path(made.path)), root / "cogs" / made.product_id, threads="1")
            inputs.append(l3a_input(made.product_id, {k: f.path for k, f in cogs.files.items()}))
        staging = IngestSettings.staging_dir(catalog_settings) / f"viewer-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        product = synthesize(inputs, synthesis_date(year, number), params, staging, scheduler="inline")
        relative = PurePosixPath(S2_L3A, product.tile, f"{year}", f"{number:02d}", product.product_id)
        item = _l3a_item(product, relative)
        assert publish_product(catalog_settings, item, product.folder, relative).outcome == "published"
        shutil.rmtree(staging, ignore_errors=True)
        items[month] = item
    yield items
    with session(catalog_settings, "admin") as conn:
        for item in items.values():
            conn.execute("SELECT pgstac.delete_item(%s, %s)", (item["id"], S2_L3A))


def _pick_month(viewer: Viewer, month: str, selector: str = "#month") -> np.ndarray:
    viewer.page.select_option(selector, month)
    target = "window.landsurfViewer.map" if selector == "#month" else "window.landsurfViewer.mapB"
    viewer.wait(f"(m => m && m.getSource('l3a-0') && m.loaded() && m.areTilesLoaded())({target})")
    viewer.page.wait_for_timeout(300)
    return viewer.map_pixels()


def test_the_month_selector_draws_each_month_and_the_swipe_shows_two(viewer, browser, api, l3a_months):
    viewer = Viewer(viewer.page, api.url + "/viewer/")  # reloaded: the months are read when the page starts
    offered = viewer.page.eval_on_selector_all("#month option", "os => os.map(o => o.value).filter(Boolean)")
    assert offered == sorted(MONTHS, reverse=True)
    started = time.perf_counter()
    march = _pick_month(viewer, "2024-03")
    first_paint_s = time.perf_counter() - started - 0.3  # less the settling pause of _pick_month
    july = _pick_month(viewer, "2024-07")
    print(f"viewer: first L3A month painted {first_paint_s:.2f} s after it was picked")
    h, w = march.shape[1:]
    for picture in (march, july):
        assert picture[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3].std() > 10, "a month drawn flat"
    differs = np.abs(march - july).max(axis=0) > 24
    assert differs.mean() > 0.2, f"switching months changed only {differs.mean():.1%} of the map"

    viewer.page.check("#compare")
    both = _pick_month(viewer, "2024-03", "#month-b")  # July left of the handle (50 %), March right of it
    left, right = slice(w // 8, w // 2 - w // 16), slice(w // 2 + w // 16, w - w // 8)
    rows = slice(h // 4, 3 * h // 4)

    def close(a: np.ndarray, b: np.ndarray) -> float:
        return float((np.abs(a - b).max(axis=0) <= 24).mean())

    assert close(both[:, rows, left], july[:, rows, left]) > 0.9
    assert close(both[:, rows, right], march[:, rows, right]) > 0.9
    assert close(both[:, rows, right], july[:, rows, right]) < 0.8, "the right side is not another month"
    assert viewer.problems == []


def test_a_link_opens_the_latest_month_and_the_search_at_once(browser, api, l3a_months, published_items):
    """What `landsurf demo` prints: the newest L3A month drawn and the products listed with no click."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        viewer = Viewer(context.new_page(), api.url + "/viewer/?month=latest&search")
        assert viewer.page.input_value("#month") == max(MONTHS)
        viewer.map_tiles_loaded("l3a-0")
        picture = viewer.map_pixels()
        h, w = picture.shape[1:]
        assert picture[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3].std() > 10, "the month is not drawn"
        viewer.wait("/ of \\d+ products/.test(document.getElementById('status').textContent)")
        assert len(viewer.entries()) >= 1
        assert viewer.problems == []
    finally:
        context.close()


def test_the_static_legends_are_those_of_the_colormaps():
    from processing.colormaps import legend

    for name in ("landsurf_snow", "landsurf_scd"):
        assert json.loads((STATIC / "legends" / f"{name}.json").read_text()) == legend(name), (
            f"catalog/viewer/static/legends/{name}.json differs from processing.colormaps.legend({name!r}): "
            "write it again from that function")


def _tile_of(item: dict, z: int) -> tuple[int, int, int]:
    """The web-mercator tile at zoom `z` over the middle of an item."""
    lon, lat = (item["bbox"][0] + item["bbox"][2]) / 2, (item["bbox"][1] + item["bbox"][3]) / 2
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, x, y


@pytest.fixture(scope="module")
def snow_item(catalog_settings, api, published) -> Iterator[dict]:
    """A snow map of the first published L2A, made by the real snow code and published with its `renders`;
    taken out again at the end."""
    from processing.colormaps import renders
    from processing.snow import SnowInputs, SnowParams, snow_map
    from ingest.settings import IngestSettings

    l2a = published[0].product_id
    folder = next(catalog_settings.store_dir.glob(f"{S2_L2A}/**/{l2a}"))
    staging = IngestSettings.staging_dir(catalog_settings) / f"viewer-{uuid.uuid4().hex[:12]}"
    product = snow_map(SnowInputs.from_product_dir(folder, l2a, None), SnowParams.load(), staging, threads="1")
    relative = PurePosixPath(S2_SNOW, *folder.relative_to(catalog_settings.store_dir / S2_L2A).parts[:-1],
                             product.product_id)
    with rasterio.open(product.files["SNW_R2"].path) as ds:
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    with session(catalog_settings) as conn:
        l2a_item = conn.execute("SELECT pgstac.get_item(%s, %s)", (l2a, S2_L2A)).fetchone()[0]
    item = {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [], "id": product.product_id,
        "collection": S2_SNOW, "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": l2a_item["properties"]["datetime"],
                       "grid:code": l2a_item["properties"]["grid:code"], "platform": l2a_item["properties"]["platform"],
                       "version": "1-0", "renders": renders("snow")},
        "assets": {key: {"href": f"{relative}/{f.path.name}", "type": f.media_type, "roles": ["data"],
                         "file:checksum": f.checksum} for key, f in product.files.items()},
        "links": [],
    }
    assert publish_product(catalog_settings, item, product.directory, relative).outcome == "published"
    yield item
    with session(catalog_settings, "admin") as conn:
        conn.execute("SELECT pgstac.delete_item(%s, %s)", (item["id"], S2_SNOW))


def test_a_snow_map_is_drawn_in_its_palette_beside_its_legend(viewer, snow_item):
    from processing.colormaps import legend

    snow = legend("landsurf_snow")
    viewer.page.select_option("#collection", S2_SNOW)
    viewer.page.fill("#limit", "10")
    viewer.page.click("#go")
    viewer.wait("document.querySelectorAll('#results li').length === 1")
    viewer.page.click(f"#results button[data-id='{snow_item['id']}']")
    viewer.map_tiles_loaded("item")
    labels = viewer.page.eval_on_selector_all("#legend-entries li", "ls => ls.map(l => l.textContent)")
    assert labels == [e["label"] for e in snow["entries"]]
    assert viewer.page.text_content("#legend-title") == snow["title"]

    pixels = viewer.map_pixels()
    h, w = pixels.shape[1:]
    middle = pixels[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(3, -1).T
    palette = {tuple(e["color"][:3]) for e in snow["entries"] if e["color"][3] == 255}
    seen = {tuple(p) for p in middle}
    in_palette = np.mean([tuple(p) in palette for p in middle])
    assert in_palette > 0.8, f"{in_palette:.0%} of the map in the snow palette; colours seen: {list(seen)[:8]}"
    assert len(palette & seen) >= 2, "one class only: not a snow map"

    # what the viewer sends for the duration maps while the tiler lacks landsurf's colormaps: intervals it accepts
    scd = legend("landsurf_scd")
    intervals = [[e["range"], e["color"]] for e in scd["entries"]]
    tile = viewer.page.evaluate("() => window.landsurfViewer.map.getSource('item').tiles[0]")
    url = urlsplit(tile.replace("{z}/{x}/{y}", "/".join(map(str, _tile_of(snow_item, 12)))))
    params = [(k, v) for k, v in parse_qsl(url.query) if k != "colormap"] + [("colormap", json.dumps(intervals))]
    r = httpx.get(url._replace(query="").geturl(), params=params, timeout=20)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG", r.text[:300]
    assert viewer.problems == []


@pytest.fixture(scope="module")
def guarded(catalog_settings, published) -> Iterator[ApiServer]:
    """The same catalog served by a second API whose downloads need a token (search and tiles stay public)."""
    port = free_port()
    server = ApiServer(catalog_settings, port).start(LANDSURF_DOWNLOADS_REQUIRE_TOKEN="true",
                                                     LANDSURF_PUBLIC_URL=f"http://127.0.0.1:{port}")
    yield server
    server.stop()


def _check_bundle(path: Path, item: dict) -> None:
    with zipfile.ZipFile(path) as bundle:
        names = bundle.namelist()
        for key, asset in item["assets"].items():
            name = asset["href"].rsplit("/", 1)[-1]
            member = next((n for n in names if n.endswith("/" + name) or n == name), None)
            assert member, f"{key} ({name}) missing from the bundle: {names}"
            if "file:checksum" in asset:
                assert "1220" + hashlib.sha256(bundle.read(member)).hexdigest() == asset["file:checksum"], key


def test_a_signed_in_user_downloads_the_selected_product(browser, guarded, catalog_settings, published_items,
                                                         tmp_path):
    from catalog.users import add_user, issue_token

    with session(catalog_settings) as conn:
        add_user(conn, "viewer-user")
        token = issue_token(conn, "viewer-user", 1)[0]
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    try:
        viewer = Viewer(context.new_page(), guarded.url + "/viewer/")
        viewer.page.click("#who")
        viewer.page.fill("#token", "lsu_not-a-token")
        viewer.page.click("#sign-in button[type=submit]")
        viewer.wait("document.getElementById('status').textContent.startsWith('sign-in refused')")
        # the refusal, and nothing else, was met (the console line of a failed load names no URL)
        assert all("401" in p for p in viewer.problems) and any("/auth/token" in p for p in viewer.problems)
        viewer.problems.clear()

        assert viewer.page.is_visible("#token")  # the form stays open after a refusal
        viewer.page.fill("#token", token)
        viewer.page.click("#sign-in button[type=submit]")
        viewer.wait("document.getElementById('who').textContent.startsWith('Signed in: viewer-user')")
        item = published_items[2]
        viewer.search(expect=len(published_items))
        viewer.page.click(f"#results button[data-id='{item['id']}']")
        viewer.wait("document.getElementById('thumb').complete && document.getElementById('thumb').naturalWidth > 0")
        with viewer.page.expect_download(timeout=TIMEOUT_MS) as started:
            viewer.page.click("#download")
        saved = tmp_path / "signed-in.zip"
        started.value.save_as(saved)
        assert started.value.suggested_filename == f"{item['id']}.zip"
        _check_bundle(saved, item)
        assert httpx.get(f"{guarded.url}/collections/{item['collection']}/items/{item['id']}/bundle.zip",
                         timeout=10).status_code == 401  # the server does ask for the token
        assert viewer.problems == []
    finally:
        context.close()


def test_without_a_token_a_public_server_streams_the_download(browser, api, published_items, tmp_path):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    try:
        viewer = Viewer(context.new_page(), api.url + "/viewer/")
        item = published_items[0]
        viewer.search(expect=len(published_items))
        viewer.page.click(f"#results button[data-id='{item['id']}']")
        with viewer.page.expect_download(timeout=TIMEOUT_MS) as started:
            viewer.page.click("#download")
        saved = tmp_path / "public.zip"
        started.value.save_as(saved)
        _check_bundle(saved, item)
        assert viewer.problems == []
    finally:
        context.close()

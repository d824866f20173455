"""Asset hrefs readable by every client: HTTP Range on the download route, GDAL STACIT on a search."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import shutil
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import rasterio

from catalog.collections import S2_L2A
from catalog.store import AssetStore, product_prefix, render_href


def test_download_supports_range_etag_and_checksums(api, published_items):
    asset = published_items[0]["assets"]["FRE_B4"]
    full = httpx.get(asset["href"])
    assert full.status_code == 200 and len(full.content) == asset["file:size"]
    assert "1220" + hashlib.sha256(full.content).hexdigest() == asset["file:checksum"]
    assert full.headers["accept-ranges"] == "bytes" and full.headers["etag"]
    part = httpx.get(asset["href"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{asset['file:size']}"
    assert part.content == full.content[100:200]
    head = httpx.head(asset["href"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == asset["file:size"]
    again = httpx.get(asset["href"], headers={"If-None-Match": full.headers["etag"]})
    assert again.status_code == 304


def test_download_refuses_paths_outside_the_store(api):
    for bad in ("/download/../pg/landsurf.json", "/download/%2e%2e/pg/landsurf.json", "/download/nope.tif"):
        r = httpx.get(api.url + bad)
        assert r.status_code == 404, bad
        assert "secret" not in r.text and "password" not in r.text


def test_gdal_reads_pixels_over_http_from_the_href(api, published_items):
    href = published_items[0]["assets"]["FRE_B4"]["href"]
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.nodata == -10000
        assert ds.block_shapes[0] == (512, 512), "a tiled COG (overviews: tests/ingest/test_cog.py, 1024 px)"
        window = ds.read(1, window=((200, 264), (200, 264)))
    assert 100 < np.median(window) < 6000


def test_gdal_stacit_reads_a_search_of_this_api(api, published_items):
    """GDAL's STAC item-search driver, pointed at the API unchanged, mosaics the asset over HTTP."""
    item = published_items[0]
    bbox = ",".join(map(str, item["bbox"]))
    url = f"{api.url}/search?collections={S2_L2A}&bbox={bbox}&datetime=2024-06-03T00:00:00Z/2024-06-04T00:00:00Z"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f'STACIT:"{url}":asset=FRE_B4') as ds:
            assert ds.count == 1 and ds.crs.to_epsg() == 32631
            data = ds.read(1, out_shape=(128, 128))
    valid = data[data != -10000]
    assert valid.size > 1000 and 100 < np.median(valid) < 6000


# ~1,000 tiles (a Theia-sized production zone), one product every 5 days per tile: 1M products ≈ 14 years
_TILES = [f"{z}{band}{a}{b}" for z in range(29, 35) for band in "STU" for a in "ABCDEFGH" for b in "ABCDEFG"]


def _layout_children(first: int, stop: int) -> dict[tuple, set]:
    """The entries of every directory holding products first…stop-1, as `product_prefix` lays them out."""
    start = datetime(2016, 1, 1, 10, 30)
    children: dict[tuple, set] = defaultdict(set)
    for n in range(first, stop):
        tile = _TILES[n % len(_TILES)]
        when = start + timedelta(days=5 * (n // len(_TILES)))
        parts = product_prefix(S2_L2A, tile, when, f"P{n}").parts
        for depth in range(len(parts)):
            children[parts[:depth]].add(parts[depth])
    return children


def test_store_layout_is_sharded_at_a_million_products():
    """No directory of the layout holds more than a few thousand entries at 1,000,000 products."""
    # every product's path from the real function, in two processes (one per core: ~28 s in one); the halves'
    # directories are merged by union, so a directory both halves fill is counted whole
    total = 1_000_000
    children: dict[tuple, set] = defaultdict(set)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for part in pool.map(_layout_children, (0, total // 2), (total // 2, total)):
            for directory, entries in part.items():
                children[directory] |= entries
    assert sum(len(v) for k, v in children.items() if len(k) == 4) == total  # every product has its dir
    assert max(len(v) for v in children.values()) < 5000
    store = AssetStore(root=Path("/store"), public_url="http://x")
    assert store.href("a b/c.tif") == "a b/c.tif"  # stored: the place in the store, not a URL
    assert render_href(store.href("a b/c.tif"), "https://y/pre/") == "https://y/pre/download/a%20b/c.tif"
    assert render_href("/collections/c/items/i", "http://x") == "http://x/collections/c/items/i"
    assert render_href("s3://bucket/k.tif", "http://x") == "s3://bucket/k.tif"  # foreign: untouched


def test_download_metrics_use_the_route_template(api, published_items, operator_token):
    httpx.get(published_items[1]["assets"]["FRE_B2"]["href"], headers={"Range": "bytes=0-9"})
    text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
    assert 'route="/download/{path}",status="206"' in text
    assert published_items[1]["id"] not in text


def test_download_bytes_are_counted_once_per_response(api, catalog_settings, published_items, operator_token):
    """`landsurf_download_bytes_total{kind="file"}` grows by each response's body: a range, a whole file, nothing
    for HEAD or a 304; a file longer than the 8 MiB the counter adds at a time is counted whole (once)."""
    def counted() -> int:
        text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
        return int(float(re.search(r'^landsurf_download_bytes_total\{kind="file"\} (\S+)$', text, re.M)[1]))

    asset = published_items[2]["assets"]["FRE_B3"]
    big = Path(catalog_settings.store_dir) / "tests-counter" / "big.bin"
    big.parent.mkdir(exist_ok=True)
    big.write_bytes(np.random.default_rng(3).bytes(9 * 2**20 + 17))
    try:
        before = counted()
        assert httpx.get(asset["href"], headers={"Range": "bytes=0-9"}).status_code == 206
        whole = httpx.get(asset["href"])
        assert httpx.head(asset["href"]).status_code == 200
        assert httpx.get(asset["href"], headers={"If-None-Match": whole.headers["etag"]}).status_code == 304
        assert counted() - before == 10 + asset["file:size"]
        long = httpx.get(f"{api.url}/download/tests-counter/big.bin", timeout=30)
        assert long.status_code == 200 and long.content == big.read_bytes()
        assert counted() - before == 10 + asset["file:size"] + big.stat().st_size
    finally:
        shutil.rmtree(big.parent, ignore_errors=True)


def test_odc_stac_loads_pixels_from_a_search_of_this_api(api, published_items):
    """odc-stac, given items from pystac-client unchanged, reads the COGs through their HTTP hrefs."""
    import odc.stac
    from pystac_client import Client

    item = published_items[0]
    found = Client.open(api.url + "/").search(ids=[item["id"]]).item_collection()
    data = odc.stac.load(found, bands=["FRE_B4", "FRE_B11"], resolution=20, chunks=None)
    red = data["FRE_B4"].isel(time=0).values
    swir = data["FRE_B11"].isel(time=0).values
    assert red.shape == swir.shape and red.shape[0] >= 200
    valid = red[red != -10000]
    assert valid.size > 10_000 and 100 < np.median(valid) < 6000
    assert 500 < np.median(swir[swir != -10000]) < 6000

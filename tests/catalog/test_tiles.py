"""Tiles through the mounted titiler: decoded PNGs checked for content, URLs under /raster."""

from __future__ import annotations

import httpx
import morecantile
import numpy as np
import pytest
from rasterio.io import MemoryFile

from catalog.collections import S2_L2A

TMS = morecantile.tms.get("WebMercatorQuad")
RGB = "assets=FRE_B4&assets=FRE_B3&assets=FRE_B2&rescale=0,3000"


def _centre(item: dict) -> tuple[float, float]:
    b = item["bbox"]
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _decode_png(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    with MemoryFile(content) as mem, mem.open() as ds:
        data = ds.read()
    return data[:-1], data[-1]  # bands, alpha


@pytest.fixture(scope="module")
def tile_of(published_items):
    def tile(item: dict, z: int = 14) -> str:
        t = TMS.tile(*_centre(item), z)
        return f"{t.z}/{t.x}/{t.y}"

    return tile


def test_item_tile_png_has_the_scene(api, published_items, tile_of):
    item = min(published_items, key=lambda i: i["properties"]["eo:cloud_cover"])  # the clearest scene
    url = f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/tiles/WebMercatorQuad/{tile_of(item)}.png?{RGB}"
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "content-encoding" not in r.headers  # not re-compressed by the STAC app's Brotli
    rgb, alpha = _decode_png(r.content)
    assert rgb.shape == (3, 256, 256)
    assert alpha.mean() > 250  # the tile is inside the scene
    # mostly clear land stretched 0–3000: dark but not black
    assert 10 < np.median(rgb) < 200
    assert rgb.std() > 5


def test_tile_outside_the_scene_is_not_an_error(api, published_items):
    item = published_items[0]
    t = TMS.tile(-60.0, -30.0, 14)
    r = httpx.get(f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/tiles/WebMercatorQuad/"
                  f"{t.z}/{t.x}/{t.y}.png?{RGB}", timeout=30)
    assert r.status_code == 404
    assert "outside bounds" in r.json()["detail"]


def test_registered_search_mosaic(api, published_items, tile_of, admin_token, operator_token):
    body = {"collections": [S2_L2A], "filter-lang": "cql2-json",
            "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
            "sortby": [{"field": "eo:cloud_cover", "direction": "asc"}], "metadata": {"name": "clear"}}
    r = httpx.post(f"{api.url}/raster/searches/register", json=body, timeout=30)
    assert r.status_code == 401, "registering a mosaic is a write"
    r = httpx.post(f"{api.url}/raster/searches/register", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200, r.text
    reg = r.json()
    links = {link["rel"]: link["href"] for link in reg["links"]}
    assert links["tilejson"].startswith(f"{api.url}/raster/searches/{reg['id']}/")
    tile = tile_of(published_items[0])
    r = httpx.get(f"{api.url}/raster/searches/{reg['id']}/tiles/WebMercatorQuad/{tile}.png?{RGB}", timeout=30)
    assert r.status_code == 200, r.text
    rgb, alpha = _decode_png(r.content)
    assert alpha.mean() > 250 and rgb.std() > 5
    tj = httpx.get(f"{api.url}/raster/searches/{reg['id']}/WebMercatorQuad/tilejson.json?{RGB}").json()
    assert tj["tiles"][0].startswith(f"{api.url}/raster/searches/{reg['id']}/tiles/WebMercatorQuad/")
    wmts = httpx.get(f"{api.url}/raster/searches/{reg['id']}/WMTSCapabilities.xml?{RGB}")
    assert wmts.status_code == 200 and f"{api.url}/raster/searches/" in wmts.text
    # the mosaic lists only the clear products under that tile
    assets = httpx.get(f"{api.url}/raster/searches/{reg['id']}/tiles/WebMercatorQuad/{tile}/assets").json()
    ids = {a["id"] for a in assets}
    assert ids and ids <= {i["id"] for i in published_items if i["properties"]["eo:cloud_cover"] < 20}
    # stored searches are an operator view
    assert httpx.get(f"{api.url}/raster/searches/list").status_code == 401
    listed = httpx.get(f"{api.url}/raster/searches/list", headers={"Authorization": f"Bearer {operator_token}"})
    assert listed.status_code == 200 and reg["id"] in {s["search"]["hash"] for s in listed.json()["searches"]}


def test_collection_mosaic_preview_point_statistics(api, published_items, tile_of):
    item = published_items[0]
    base = f"{api.url}/raster/collections/{S2_L2A}"
    r = httpx.get(f"{base}/tiles/WebMercatorQuad/{tile_of(item)}.png?{RGB}", timeout=30)
    assert r.status_code == 200
    r = httpx.get(f"{base}/items/{item['id']}/preview.png?{RGB}&max_size=256", timeout=30)
    assert r.status_code == 200
    rgb, _ = _decode_png(r.content)
    assert rgb.shape[0] == 3 and max(rgb.shape[1:]) == 256
    lon, lat = _centre(item)
    point = httpx.get(f"{base}/items/{item['id']}/point/{lon},{lat}?assets=FRE_B4").json()
    assert 0 < point["values"][0] < 10000
    stats = httpx.get(f"{base}/items/{item['id']}/statistics?assets=FRE_B4", timeout=30).json()
    band = next(iter(stats.values()))
    assert 100 < band["median"] < 3000  # vegetation red, nodata corner excluded
    tj = httpx.get(f"{base}/items/{item['id']}/WebMercatorQuad/tilejson.json?assets=FRE_B4").json()
    assert tj["tiles"][0].startswith(f"{base}/items/{item['id']}/tiles/")


def test_tile_requests_are_measured_per_route_template(api, published_items, tile_of, operator_token):
    item = published_items[0]
    httpx.get(f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/tiles/WebMercatorQuad/"
              f"{tile_of(item)}.png?{RGB}", timeout=30)
    text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
    assert ('route="/raster/collections/{collection_id}/items/{item_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"'
            in text), [ln for ln in text.splitlines() if "raster" in ln][:5]
    assert item["id"] not in text  # labels are templates, not ids


def test_the_products_colormaps_are_named_by_the_tiler(api, published_items, tile_of):
    """The snow and snow-cover-duration palettes that derived items name in their `renders` are known to the
    tiler (given by processing to the app factory), beside rio-tiler's own."""
    from processing.colormaps import SCD_COLORMAP, SNOW_COLORMAP, snow_colormap

    names = {c["id"] for c in httpx.get(f"{api.url}/raster/colorMaps", timeout=30).json()["colormaps"]}
    assert {SNOW_COLORMAP, SCD_COLORMAP, "viridis"} <= names
    item = min(published_items, key=lambda i: i["properties"]["eo:cloud_cover"])
    base = f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/tiles/WebMercatorQuad/{tile_of(item)}.png"
    # a mask drawn with the snow palette: every opaque pixel has one of its colours (CLM 0 → "no snow")
    r = httpx.get(base, params={"assets": "CLM_R2", "colormap_name": SNOW_COLORMAP}, timeout=30)
    assert r.status_code == 200, r.text
    rgb, alpha = _decode_png(r.content)
    seen = {tuple(int(v) for v in rgb[:, i, j]) for i, j in zip(*np.nonzero(alpha))}
    palette = {tuple(c[:3]) for c in snow_colormap().values()}
    assert seen and seen <= palette, seen - palette
    assert tuple(snow_colormap()[0][:3]) in seen
    r = httpx.get(base, params={"assets": "CLM_R2", "colormap_name": "landsurf_nothing"}, timeout=30)
    assert r.status_code in (400, 422)

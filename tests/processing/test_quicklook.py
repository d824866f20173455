"""Quicklooks and colormaps against the generator's ground truth and the spec's fixed constants.

Outlines must lie where the truth masks have edges (clouds green, snow magenta, water blue), the stretch must be
the fixed 0–3000 → 0–255 of products.md §5 on every date, no-data black; the snow and SCD palettes must be the
ones the tiler serves under the same names.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi import FastAPI
from hypothesis import given, settings as hsettings, strategies as st
from rasterio.io import MemoryFile
from starlette.testclient import TestClient
from titiler.core.dependencies import create_colormap_dependency
from titiler.core.factory import ColorMapFactory, TilerFactory

from ingest.drawing import (BLUE, GREEN, MAGENTA, l2a_quicklook, l2a_rgb, mask_preview, outline, preview_shape,
                            stretch)
from ingest.generate import generate_l2a
from ingest.synthetic.mtd import product_files
from ingest.synthetic.noise import dilate
from ingest.synthetic.spectra import FRESH_SNOW, OLD_SNOW
from processing import colormaps
from processing.quicklook import scd_quicklook, snow_map_png, snow_rgb

SIZE = 512  # R1 pixels: the quicklook is 512 px, two per 20 m truth pixel


def _files(made) -> dict[str, Path]:
    return {k: Path(made.path) / v for k, v in product_files(made.product_id).items()}


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """A cloudy winter date with a swath edge and a clear one (snow, lakes, river)."""
    root = tmp_path_factory.mktemp("quicklook")
    cloudy = generate_l2a(root, date(2024, 2, 10), "31TCH", seed=21, size=SIZE, as_zip=False, cloud_cover=0.35,
                          swath_edge=True)
    clear = generate_l2a(root, date(2024, 2, 20), "31TCH", seed=21, size=SIZE, as_zip=False, cloud_cover=0.0,
                         swath_edge=False)
    return cloudy, clear


def _truth(made, band: int) -> np.ndarray:
    with rasterio.open(made.truth_path) as ds:
        return ds.read(band)


def _near(a: np.ndarray, b: np.ndarray, radius: int) -> float:
    """Share of the pixels of `a` within `radius` pixels of a pixel of `b`."""
    return float((a & dilate(b, radius)).sum() / max(1, a.sum()))


def _colour(rgb: np.ndarray, colour) -> np.ndarray:
    return (rgb[0] == colour[0]) & (rgb[1] == colour[1]) & (rgb[2] == colour[2])


def _edges(mask_r2: np.ndarray, shape) -> np.ndarray:
    return outline(mask_preview(mask_r2, shape))


def test_outlines_lie_on_the_edges_of_the_true_masks(products):
    """Drawn lines follow true edges, and true edges are drawn. MAJA's cloud masks (the generator's CLM) widen
    every cloud by a 1–2 pixel rim at 20 m, i.e. up to 4 quicklook pixels, and the rim closes clear gaps narrower
    than itself: recall is measured on the true clouds widened by 2 pixels."""
    cloudy, _ = products
    rgb = l2a_rgb(_files(cloudy))
    shape = rgb.shape[1:]
    assert shape == (SIZE, SIZE)
    with rasterio.open(Path(cloudy.path) / product_files(cloudy.product_id)["EDG_R2"]) as ds:
        valid = ds.read(1) == 0
    cloud, shadow, water = (_truth(cloudy, band) > 0 for band in (2, 3, 4))
    widened = dilate(cloud, 2)
    snow = np.isin(_truth(cloudy, 5), (FRESH_SNOW, OLD_SNOW))
    green = _colour(rgb, GREEN)
    under_green = dilate(green, 1)
    cases = {  # colour: (true mask, its edges as MAJA's masks can show them, tolerance in quicklook pixels)
        GREEN: (cloud, widened, 5),
        MAGENTA: (snow & ~cloud & ~shadow, snow & ~widened & ~shadow, 5),
        BLUE: (water, water, 2),
    }
    for colour, (truth, shown, radius) in cases.items():
        drawn = _colour(rgb, colour)
        assert drawn.sum() > 50, colour
        assert _near(drawn, _edges(truth & valid, shape), radius) >= 0.97, colour
        expected = _edges(shown & valid, shape) & ~(under_green if colour != GREEN else False)
        assert _near(expected, drawn, 3) >= 0.9, colour


def test_the_stretch_is_fixed_across_dates_and_no_data_is_black(products):
    """Every pixel away from the outlines is the spec's linear map of its reflectance, on a cloudy and on a clear
    date alike: the same reflectance gives the same colour whatever else the image holds."""
    for made in products:
        files = _files(made)
        rgb = l2a_rgb(files)
        shape = rgb.shape[1:]
        lines = np.zeros(shape, bool)
        for colour in (GREEN, BLUE, MAGENTA):
            lines |= _colour(rgb, colour)
        with rasterio.open(files["EDG_R2"]) as ds:
            nodata = mask_preview(ds.read(1) > 0, shape, threshold=1e-9)
        for channel, band in enumerate(("B4", "B3", "B2")):
            with rasterio.open(files[f"FRE_{band}"]) as ds:
                refl = ds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.average).astype(float)
            expected = np.clip(np.rint(refl * 255 / 3000), 0, 255)
            keep = ~lines & ~nodata
            assert (rgb[channel][keep] == expected[keep]).mean() > 0.999
        assert (rgb[:, nodata & ~lines] == 0).all()
        assert nodata.any() == (made is products[0])


@hsettings(max_examples=100, deadline=None)
@given(value=st.integers(-10000 + 1, 16000), seed=st.integers(0, 2**31))
def test_stretch_depends_on_the_value_only(value, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 15000, (2, 3, 5, 5)).astype(np.int16)
    a[:, 2, 2] = b[:, 0, 0] = value
    sa, sb = stretch(a), stretch(b)
    assert (sa[:, 2, 2] == sb[:, 0, 0]).all()
    assert sa[0, 2, 2] == min(255, max(0, round(value * 255 / 3000)))


def test_the_jpeg_is_the_drawing_and_at_most_1000_px():
    assert preview_shape(10980, 10980) == (1000, 1000)
    assert preview_shape(5490, 2000) == (1000, 364)
    assert preview_shape(300, 200) == (300, 200)


def test_l2a_quicklook_jpeg(products):
    cloudy, _ = products
    data = l2a_quicklook(_files(cloudy))
    assert data[:3] == b"\xff\xd8\xff"
    with MemoryFile(data) as mem, mem.open() as ds:
        decoded = ds.read()
    assert decoded.shape == (3, SIZE, SIZE)
    error = np.abs(decoded.astype(int) - l2a_rgb(_files(cloudy)).astype(int))
    assert np.median(error) <= 3  # JPEG (quality 90, chroma subsampled) of the drawing


def _write(path: Path, data: np.ndarray, like: Path, nodata=None) -> Path:
    with rasterio.open(like) as ds:
        profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=1, dtype=data.dtype.name,
                       crs=ds.crs, transform=ds.transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as out:
        out.write(data, 1)
    return path


def _snow_map(made, tmp_path: Path) -> Path:
    """A perfect snow map of the date, from its truth (LIS codes)."""
    files = _files(made)
    cloud = _truth(made, 2) > 0
    snow = np.isin(_truth(made, 5), (FRESH_SNOW, OLD_SNOW))
    codes = np.where(cloud, 205, np.where(snow, 100, 0)).astype(np.uint8)
    with rasterio.open(files["EDG_R2"]) as ds:
        codes[ds.read(1) > 0] = 255
    return _write(tmp_path / "SNW_R2.tif", codes, files["CLM_R2"], nodata=255)


def test_snow_quicklook_outlines_snow_and_clouds_of_the_map(products, tmp_path):
    cloudy, _ = products
    snow_map = _snow_map(cloudy, tmp_path)
    rgb = snow_rgb(snow_map, _files(cloudy))
    with rasterio.open(snow_map) as ds:
        codes = ds.read(1)
    shape = rgb.shape[1:]
    for colour, code in ((MAGENTA, 100), (GREEN, 205)):
        drawn = _colour(rgb, colour)
        assert drawn.sum() > 50 and _near(drawn, _edges(codes == code, shape), 1) >= 0.99
    assert _near(_colour(rgb, BLUE), _edges(_truth(cloudy, 4) > 0, shape), 2) >= 0.97


def test_snow_palette_is_lis_and_the_tilers(products, tmp_path):
    cloudy, _ = products
    snow_map = _snow_map(cloudy, tmp_path)
    with MemoryFile(snow_map_png(snow_map)) as mem, mem.open() as ds:
        png = ds.read()
    with rasterio.open(snow_map) as ds:
        codes = ds.read(1, out_shape=png.shape[1:], resampling=rasterio.enums.Resampling.nearest)
    lis = {0: (119, 119, 119), 100: (0, 255, 255), 205: (255, 255, 255), 255: (0, 0, 0)}  # LIS_SEB_style_v2.qml
    for code, colour in lis.items():
        assert (codes == code).any(), code
        assert (png[:, codes == code].T == colour).all(), code
    assert colormaps.tiler_colormaps().get(colormaps.SNOW_COLORMAP)[100] == (0, 255, 255, 255)


def test_scd_palette_ramps_from_0_to_366_days(tmp_path, products):
    like = _files(products[0])["CLM_R2"]
    with rasterio.open(like) as ds:
        rows, cols = ds.height, ds.width
    days = np.tile(np.linspace(0, 366, cols).round().astype(np.uint16), (rows, 1))
    days[:, -3:] = 65535  # no-data
    png_bytes = scd_quicklook(_write(tmp_path / "SCD.tif", days, like))
    assert png_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    with MemoryFile(png_bytes) as mem, mem.open() as ds:
        png = ds.read()
    row = png[:, 0, :].astype(int)
    assert tuple(row[:, 0]) == (220, 220, 220)  # 0 days
    assert (row[:, -1] == 0).all()  # no-data black
    luminance = 0.3 * row[0, 1:-3] + 0.59 * row[1, 1:-3] + 0.11 * row[2, 1:-3]
    assert (np.diff(luminance) <= 1e-9).all() and luminance[0] - luminance[-1] > 100  # longer cover, darker


def test_legends_name_every_colour():
    snow = colormaps.legend(colormaps.SNOW_COLORMAP)
    assert {e["value"]: tuple(e["color"][:3]) for e in snow["entries"]}[100] == (0, 255, 255)
    scd = colormaps.legend(colormaps.SCD_COLORMAP)
    assert scd["entries"][0]["range"] == [0, 1] and scd["entries"][-1]["range"][1] == 367
    json.dumps([snow, scd])
    with pytest.raises(KeyError):
        colormaps.legend("nope")


def test_the_tiler_serves_the_named_colormaps(products, tmp_path):
    """titiler built with `tiler_colormaps()`: the colormap endpoint lists them and a rendered preview of a snow
    map has the palette's colours."""
    cmaps = colormaps.tiler_colormaps()
    app = FastAPI()
    app.include_router(ColorMapFactory(supported_colormaps=cmaps).router)
    cog = TilerFactory(colormap_dependency=create_colormap_dependency(cmaps), router_prefix="/cog")
    app.include_router(cog.router, prefix="/cog")
    snow_map = _snow_map(products[0], tmp_path)
    with TestClient(app) as client:
        listed = [c["id"] for c in client.get("/colorMaps").json()["colormaps"]]
        assert {colormaps.SNOW_COLORMAP, colormaps.SCD_COLORMAP} <= set(listed)
        assert client.get(f"/colorMaps/{colormaps.SCD_COLORMAP}").status_code == 200
        answer = client.get("/cog/preview.png", params={"url": str(snow_map), "colormap_name": colormaps.SNOW_COLORMAP,
                                                         "max_size": 64, "resampling": "nearest"})
        assert answer.status_code == 200, answer.text
    with MemoryFile(answer.content) as mem, mem.open() as ds:
        tile = ds.read()
    colours = {tuple(tile[:3, r, c]) for r, c in zip(*np.nonzero(tile[3]))}
    assert colours <= {(119, 119, 119), (0, 255, 255), (255, 255, 255)} and (0, 255, 255) in colours


def test_render_metadata_names_the_colormaps():
    assert colormaps.renders("snow")["snow"]["colormap_name"] == colormaps.SNOW_COLORMAP
    assert colormaps.renders("scd")["snow-cover-duration"]["colormap_name"] == colormaps.SCD_COLORMAP
    assert colormaps.renders("l3a")["true-colour"]["rescale"] == [[0, 3000]]

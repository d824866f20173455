"""The DEM of a tile as an item of the `dem` collection: prepared on the tile's 20 m grid, published once, replaced
as a new version, found again by the snow maps."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_bounds

from catalog.collections import DEM, HISTORY_SUFFIX
from catalog.database import session
from ingest.checksum import multihash
from ingest.generate import generate_l2a
from processing.dem import DEM_NODATA, current_dem, dem_item, prepare_dem, register_dem, tile_r2_grid
from processing.raster_io import RasterInputError, grid_of
from processing.snow import SnowInputs, SnowParams, snow_map
from tests import schemas

TILE = "31TCH"


@pytest.fixture(scope="module")
def l2a(tmp_path_factory):
    return generate_l2a(tmp_path_factory.mktemp("dem"), TILE, date(2024, 2, 1), size=128, seed=4, as_zip=False)


def test_a_dem_on_the_tile_grid_is_kept_as_it_is(l2a, tmp_path):
    prepared = prepare_dem(TILE, l2a.dem_path, tmp_path / "dem.tif")
    assert not prepared.resampled and prepared.grid.matches(grid_of(l2a.dem_path))
    with rasterio.open(l2a.dem_path) as src, rasterio.open(prepared.cog.path) as out:
        assert np.array_equal(src.read(1), out.read(1)) and out.nodata == DEM_NODATA
    assert prepared.cog.checksum == multihash(prepared.cog.path)
    item = dem_item(prepared, "dem/31TCH/2000/01/x/x_DEM.tif")
    assert schemas.errors(item) == []
    assert item["properties"]["grid:code"] == "MGRS-31TCH" and item["assets"]["DEM"]["file:checksum"]


def test_any_other_dem_is_resampled_onto_the_full_tile_grid(tmp_path):
    """A geographic DEM (lon/lat degrees, float) covering the tile, as a Copernicus DEM mosaic would be."""
    full = tile_r2_grid(TILE)
    to_ll = Transformer.from_crs(full.crs, 4326, always_xy=True)
    left, bottom, right, top = full.bounds
    lons, lats = to_ll.transform([left, right, left, right], [bottom, bottom, top, top])
    w, s, e, n = min(lons) - 0.05, min(lats) - 0.05, max(lons) + 0.05, max(lats) + 0.05
    cols, rows = 600, 500
    lon = w + (np.arange(cols) + 0.5) * (e - w) / cols
    lat = n - (np.arange(rows) + 0.5) * (n - s) / rows

    def height(lo, la):
        return 500 + 800 * (lo - w) + 1200 * (la - s)  # a tilted plane: bilinear resampling is exact on it

    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=cols, height=rows, count=1,
                       dtype="float32", crs="EPSG:4326", transform=from_bounds(w, s, e, n, cols, rows),
                       nodata=-9999) as ds:
        ds.write(height(lon[None, :], lat[:, None]).astype(np.float32), 1)
    prepared = prepare_dem(TILE, tmp_path / "geo.tif", tmp_path / "dem.tif")
    assert prepared.resampled and prepared.grid.matches(full) and full.width == 5490
    with rasterio.open(prepared.cog.path) as ds:
        for row, col in ((0, 0), (2745, 2745), (5489, 100), (17, 5400)):
            x, y = ds.xy(row, col)
            expected = height(*to_ll.transform(x, y))
            got = ds.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
            assert abs(got - expected) <= 1.5, (row, col, got, expected)


def test_a_dem_elsewhere_or_unreadable_is_refused(tmp_path):
    with rasterio.open(tmp_path / "far.tif", "w", driver="GTiff", width=10, height=10, count=1, dtype="int16",
                       crs="EPSG:4326", transform=from_bounds(100, 10, 101, 11, 10, 10), nodata=-32768) as ds:
        ds.write(np.full((10, 10), 300, np.int16), 1)
    with pytest.raises(RasterInputError, match="no height on tile 31TCH"):
        prepare_dem(TILE, tmp_path / "far.tif", tmp_path / "out.tif")
    with pytest.raises(RasterInputError, match="cannot read the DEM"):
        prepare_dem(TILE, tmp_path / "missing.tif", tmp_path / "out2.tif")


def test_register_once_replace_as_a_new_version_and_feed_the_snow_map(catalog_settings, l2a, tmp_path):
    first = register_dem(catalog_settings, TILE, l2a.dem_path)
    assert first.outcome == "published" and first.collection == DEM
    path = current_dem(catalog_settings, TILE)
    with session(catalog_settings) as conn:
        item = conn.execute("SELECT pgstac.get_item(%s, %s)", (first.item_id, DEM)).fetchone()[0]
    assert path is not None and multihash(path) == item["assets"]["DEM"]["file:checksum"]
    assert register_dem(catalog_settings, TILE, l2a.dem_path).outcome == "duplicate"
    # the snow map of the tile reads the registered DEM
    snow = snow_map(SnowInputs.from_product_dir(l2a.path, l2a.product_id, path), SnowParams.load(), tmp_path / "s")
    assert not snow.pass1_only and snow.zs > 0

    with rasterio.open(l2a.dem_path) as ds:
        profile, heights = ds.profile, ds.read(1)
    with rasterio.open(tmp_path / "v2.tif", "w", **profile) as out:
        out.write(heights + 1, 1)
    second = register_dem(catalog_settings, TILE, tmp_path / "v2.tif")
    assert second.outcome == "published" and second.superseded == first.item_id
    new_path = current_dem(catalog_settings, TILE)
    assert new_path != path and multihash(new_path) != multihash(path)
    with session(catalog_settings) as conn:
        old = conn.execute("SELECT pgstac.get_item(%s, %s)", (first.item_id, DEM + HISTORY_SUFFIX)).fetchone()[0]
    assert old is not None and old["properties"]["deprecated"] is True
    assert current_dem(catalog_settings, "31TCJ") is None  # no DEM: the snow maps of that tile run pass 1 only

"""The LIS-like snow map against the generator's ground truth (products.md §2 and §6).

Synthetic L2As of tile 31TCH (the generator's MUSCATE folders, and once the flat COG folder ingest publishes) are
classified with the tile's DEM and without it (the pass-1-only mode). The truth is the generator's sidecar (true
snow, cloud, shadow, water, surface class), its daily snowline and, for the cloud types, the scene it drew.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra import numpy as hnp
from rio_cogeo.cogeo import cog_validate

from ingest.checksum import multihash
from ingest.cog import write_cogs
from ingest.generate import generate_l2a
from ingest.muscate import read_l2a
from ingest.synthetic.grid import tile_grid
from ingest.synthetic.landscape import build_landscape, snowline
from ingest.synthetic.scene import build_scene
from ingest.synthetic.spectra import DARK_CLOUD, THIN_SNOW
from processing.raster_io import RasterInputError, grid_of
from processing.snow import (CLOUD, NODATA, NO_SNOW, SNOW, SnowInputs, SnowParams, classify, snow_map,
                             snow_product_id)

TILE, SEED = "31TCH", 3
PARAMS = SnowParams.load()
# (day, size, generator options): a winter day with dark thin clouds over snow (a larger ROI, so that the clouds
# are wider than the 240 m blocks of the cloud refinement, as on a real tile), spring with thin snow near the
# snowline, a cloudy day cut by a swath edge, an early-season day.
DAYS = {
    "dark": (date(2024, 1, 9), 1024, {}),
    "spring": (date(2024, 4, 20), 256, {"cloud_cover": 0.2, "swath_edge": False}),
    "edge": (date(2024, 2, 20), 256, {"cloud_cover": 0.3, "swath_edge": True}),
    "autumn": (date(2023, 11, 20), 256, {"cloud_cover": 0.3, "swath_edge": False}),
}


class Case:
    def __init__(self, root: Path, name: str) -> None:
        day, size, options = DAYS[name]
        self.land = build_landscape(tile_grid(TILE), size // 2, SEED)
        self.when = datetime.combine(day, datetime.min.time(), timezone.utc).replace(hour=10, minute=40)
        self.l2a = generate_l2a(root / name, TILE, self.when, size=size, seed=SEED, as_zip=False,
                                landscape=self.land, **options)
        self.truth = rasterio.open(self.l2a.truth_path).read()
        self.snow, self.cloud, self.shadow, self.water, self.cls = self.truth
        self.options = options
        self.full = snow_map(self.inputs(self.l2a.dem_path), PARAMS, root / name / "with-dem")
        self.pass1 = snow_map(self.inputs(None), PARAMS, root / name / "no-dem")
        self.code = read(self.full)
        self.code1 = read(self.pass1)

    def inputs(self, dem: Path | None) -> SnowInputs:
        return SnowInputs.from_product_dir(self.l2a.path, self.l2a.product_id, dem)

    def scene(self):
        return build_scene(self.land, self.l2a.acquired, **self.options)

    def clear(self, code: np.ndarray) -> np.ndarray:
        """Truly clear (no cloud, no shadow) valid pixels that the map did not call cloud."""
        return (code != NODATA) & (self.cloud == 0) & (self.shadow == 0) & (code != CLOUD)


def read(product) -> np.ndarray:
    with rasterio.open(product.files["SNW_R2"].path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("snow")
    return {name: Case(root, name) for name in DAYS}


def test_snow_agrees_with_the_truth_on_clear_pixels(cases):
    for name, case in cases.items():
        clear = case.clear(case.code)
        agreement = ((case.code == SNOW) == (case.snow == 1))[clear].mean()
        assert agreement >= 0.95, (name, agreement)
        truly_clear = (case.code != NODATA) & (case.cloud == 0) & (case.shadow == 0)
        assert clear.sum() / truly_clear.sum() > 0.75, name  # the map answers on most clear pixels


def test_lakes_never_snow(cases, tmp_path):
    for name, case in cases.items():
        assert case.water.any()
        assert not ((case.code == SNOW) & (case.water == 1)).any(), name
        assert not ((case.code1 == SNOW) & (case.water == 1)).any(), name
    # LIS 1.5 without the MG2 water mask: a clear lake is still never snow (red < 0.04), whatever the cloud does
    case = cases["spring"]
    product = snow_map(case.inputs(case.l2a.dem_path), replace(PARAMS, water_mask=False), tmp_path / "no-mask")
    code = read(product)
    assert not ((code == SNOW) & (case.water == 1) & case.clear(code)).any()


def test_dark_thin_clouds_over_snow_are_recovered_by_pass_2(cases):
    case = cases["dark"]
    dark_over_snow = (case.scene().cloud_type == DARK_CLOUD) & (case.snow == 1)
    assert dark_over_snow.sum() > 5000
    recovered = (case.code[dark_over_snow] == SNOW).mean()
    without_pass2 = (case.code1[dark_over_snow] == SNOW).mean()
    assert case.full.pass2 and not case.pass1.pass2
    assert without_pass2 == 0  # an L2A cloud is never snow in pass 1
    assert recovered > 0.4, recovered
    # what pass 2 adds is snow: on truly clear pixels it only turns true snow into snow
    added = (case.code == SNOW) & (case.code1 != SNOW) & case.clear(case.code)
    assert (case.snow[added] == 1).mean() > 0.99


def test_pass_1_only_mode_is_recorded_and_loses_only_snow(cases):
    for name, case in cases.items():
        assert case.pass1.pass1_only and not case.full.pass1_only and case.pass1.zs == -1
        root = ET.parse(case.pass1.files["metadata"].path).getroot()
        assert root.findtext("Processing/MODE").startswith("pass1-only")
        assert root.find(".//QUALITY_INDEX[@name='ZS']").text == "-1"
        # pass 1 ⊆ pass 1 + pass 2, and pass 1 alone makes no false snow where the sky is clear
        assert not ((case.code1 == SNOW) & (case.code != SNOW)).any(), name
        clear = case.clear(case.code1)
        assert (case.snow[clear & (case.code1 == SNOW)] == 1).mean() > 0.99, name
        thin = clear & case.clear(case.code) & (case.cls == THIN_SNOW)
        if thin.sum() > 50:  # thin, patchy snow near the snowline: only pass 2 sees it
            assert (case.code1[thin] == SNOW).mean() < 0.05, name
            assert (case.code[thin] == SNOW).mean() > 0.9, name


def test_the_snowline_lies_a_little_below_the_true_one(cases):
    for name, case in cases.items():
        line, _ = snowline(SEED, TILE, case.when.date())
        # LIS takes the lower edge of the bin two below the first snowy one: 100–300 m under the line
        assert line - 400 <= case.full.zs <= line, (name, case.full.zs, line)


def test_no_data_percentages_and_the_written_files(cases):
    case = cases["edge"]
    with rasterio.open(case.inputs(None).swir) as ds:
        outside = ds.read(1) == -10000
    assert outside.any() and not outside.all()
    assert np.array_equal(case.code == NODATA, outside)
    for product, code in ((case.full, case.code), (case.pass1, case.code1)):
        cog = product.files["SNW_R2"]
        assert cog.checksum == multihash(cog.path) and cog.size == cog.path.stat().st_size
        assert cog_validate(str(cog.path), quiet=True)[0]
        with rasterio.open(cog.path) as ds:
            assert ds.nodata == NODATA and ds.dtypes[0] == "uint8"
        assert grid_of(cog.path).matches(grid_of(case.inputs(None).clm))
        assert set(np.unique(code)) <= {NO_SNOW, SNOW, CLOUD, NODATA}
        valid = (code != NODATA).sum()
        assert product.snow_percent == pytest.approx(100 * (code == SNOW).sum() / valid, abs=0.01)
        assert product.cloud_percent == pytest.approx(100 * (code == CLOUD).sum() / valid, abs=0.01)
        root = ET.parse(product.files["metadata"].path).getroot()
        assert float(root.find(".//QUALITY_INDEX[@name='SnowPercent']").text) == product.snow_percent
        assert root.findtext("Source_Product/PRODUCT_ID") == case.l2a.product_id
        assert root.find("Processing/PARAMETERS").get("hash") == PARAMS.version
    assert case.full.product_id == snow_product_id(case.l2a.product_id)
    assert "_L2B-SNOW_T31TCH_C_V1-0" in case.full.product_id


def test_published_cog_inputs_and_a_tile_dem_larger_than_the_product(cases, tmp_path):
    """The flat `<ID>_<KEY>.tif` COGs ingest publishes, and a DEM on a larger aligned 20 m grid (a registered
    tile DEM covers the whole tile, a product may be a region of it), give the same map."""
    case = cases["spring"]
    cogs = write_cogs(read_l2a(case.l2a.path), tmp_path / "published")
    with rasterio.open(case.l2a.dem_path) as ds:
        dem, profile = ds.read(1), ds.profile
    pad = 7
    big = np.full((dem.shape[0] + 2 * pad, dem.shape[1] + 2 * pad), -32768, np.int16)
    big[pad:-pad, pad:-pad] = dem
    t = ds.transform
    profile.update(width=big.shape[1], height=big.shape[0], nodata=-32768,
                   transform=rasterio.Affine(t.a, 0, t.c - pad * t.a, 0, t.e, t.f - pad * t.e))
    with rasterio.open(tmp_path / "tile_dem.tif", "w", **profile) as out:
        out.write(big, 1)
    inputs = SnowInputs.from_product_dir(cogs.staging, case.l2a.product_id, tmp_path / "tile_dem.tif")
    assert inputs.green.parent == cogs.staging and inputs.mg2 is not None
    product = snow_map(inputs, PARAMS, tmp_path / "out")
    assert np.array_equal(read(product), case.code) and product.zs == case.full.zs


def test_bad_inputs_are_domain_errors(cases, tmp_path):
    case = cases["spring"]
    inputs = case.inputs(case.l2a.dem_path)
    with pytest.raises(RasterInputError, match="SWIR band .* not on the product's grid|green band"):
        snow_map(replace(inputs, swir=inputs.green), PARAMS, tmp_path / "a")
    with rasterio.open(case.l2a.dem_path) as ds:
        profile, dem = ds.profile, ds.read(1)
    t = profile["transform"]
    profile["transform"] = rasterio.Affine(t.a, 0, t.c + 10, 0, t.e, t.f)  # half a pixel off the grid
    with rasterio.open(tmp_path / "shifted.tif", "w", **profile) as out:
        out.write(dem, 1)
    with pytest.raises(RasterInputError, match="not aligned on, or does not cover.*landsurf dem add"):
        snow_map(replace(inputs, dem=tmp_path / "shifted.tif"), PARAMS, tmp_path / "b")
    with pytest.raises(RasterInputError, match="water mask and no MG2_R2"):
        snow_map(replace(inputs, mg2=None), PARAMS, tmp_path / "c")
    with pytest.raises(RasterInputError, match="no FRE_B3"):
        SnowInputs.from_product_dir(tmp_path, case.l2a.product_id, None)
    with pytest.raises(RasterInputError, match="not a MUSCATE L2A identifier"):
        snow_product_id("T31TCH_DEM")
    # a derived file is written once: a second run into the same staging directory refuses to overwrite
    with pytest.raises(FileExistsError):
        snow_map(inputs, PARAMS, case.full.directory)
    assert read(case.full).shape == case.code.shape


# Property tests of the classification on arbitrary pixels (no generator): invariants LIS guarantees.
REFLECTANCE = st.integers(-200, 12000) | st.just(-10000)
CLM = st.sampled_from([0, 0, 0, 1, 3, 2 | 1, 32 | 1, 64 | 1, 128 | 2 | 1, 16 | 2 | 1])


@hsettings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(1, 14), cols=st.integers(1, 14))
def test_classification_invariants(data, rows, cols):
    def draw(elements, shape, dtype):
        return data.draw(hnp.arrays(dtype, shape, elements=elements))

    green, red = (draw(REFLECTANCE, (2 * rows, 2 * cols), np.int16) for _ in range(2))
    swir = draw(REFLECTANCE, (rows, cols), np.int16)
    clm = draw(CLM, (rows, cols), np.uint8)
    dem = draw(st.integers(0, 4000), (rows, cols), np.int16)
    mg2 = draw(st.sampled_from([0, 0, 1]), (rows, cols), np.uint8)
    codes, _ = classify(green, red, swir, clm, dem, PARAMS, mg2)
    codes1, zs1 = classify(green, red, swir, clm, None, PARAMS, mg2)

    def all4(band):  # all four 10 m pixels of a 20 m pixel are no-data
        return (band.reshape(rows, 2, cols, 2) == -10000).all(axis=(1, 3))

    assert set(np.unique(codes)) <= {NO_SNOW, SNOW, CLOUD, NODATA} and zs1 == -1
    assert np.array_equal(codes == NODATA, (swir == -10000) | all4(green) | all4(red))
    assert np.array_equal(codes == NODATA, codes1 == NODATA)
    assert not ((codes == SNOW) & ((clm & (32 | 64 | 128)) != 0)).any()  # shadows and cirrus stay cloud
    assert not ((codes == SNOW) & (mg2 == 1)).any()  # the water mask
    assert not ((codes1 == SNOW) & (clm != 0)).any()  # pass 1: no snow under any L2A cloud
    assert not ((codes1 == SNOW) & (codes != SNOW)).any()  # pass 2 only adds snow…
    assert np.array_equal(codes != codes1, (codes == SNOW) & (codes1 != SNOW))  # …and changes nothing else

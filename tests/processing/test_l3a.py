"""The L3A synthesis against the generator's ground truth (products.md §6), on published-like COG inputs.

A month of small synthetic L2As (256 px, eight dates, one of them overcast) goes through ingest's own reader and COG
writer, as the pipeline publishes them; the synthesis reads those COGs. The truth is the generator's sidecar: the
surface class of every pixel on every date, whose clear-sky reflectance is the class spectrum (the generator adds
±10 % white noise per pixel and date, and no BRDF: its surfaces are Lambertian, so the truth tests run with the
directional correction off and the correction is tested on its own).
"""

from __future__ import annotations

import tracemalloc
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings as hsettings, strategies as st
from rio_cogeo.cogeo import cog_validate

from catalog.collections import COLLECTIONS, S2_L3A
from ingest.checksum import multihash
from ingest.cog import write_cogs
from ingest.generate import generate_l2a, iter_series
from ingest.muscate import read_l2a
from ingest.synthetic.noise import dilate
from ingest.synthetic.spectra import BANDS, FRESH_SNOW, OLD_SNOW, ROCK, VEGETATION, class_spectra
from processing.l3a import (L3AInput, L3AInputError, L3AParams, l3a_input, platform_of, synthesis_date,
                            synthesize)
from processing.l3a_block import GROUP_DATES, BlockTask, DateInput, run_block
from processing.l3a_kernel import CLOUD, LAND, NODATA, SNOW, WATER, finish, update
from processing.l3a_weights import (cloud_weight_grid, date_weight, directional_factor,
                                    gaussian_blur, land_weight, read_geometry)
from processing.raster_io import RasterInputError

WHEN = date(2024, 3, 15)
SIZE = 256
R1 = ("B2", "B3", "B4", "B8")


def _publish(made, root: Path) -> tuple[L3AInput, Path]:
    """The L2A as the pipeline publishes it (ingest's reader and COG writer); its input and truth sidecar."""
    product = read_l2a(Path(made.path))
    cogs = write_cogs(product, root / made.product_id, threads="1")
    return l3a_input(made.product_id, {k: f.path for k, f in cogs.files.items()}), made.truth_path


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    """Eight L2As, 25 Feb – 31 Mar 2024 every 5 days, 6 March overcast: inputs and truth sidecars."""
    root = tmp_path_factory.mktemp("l3a-month")
    series = iter_series(root / "gen", "31TCH", date(2024, 2, 25), date(2024, 3, 31), 5, seed=11, size=SIZE,
                         as_zip=False, truth_dir=root / "truth", overcast={date(2024, 3, 6)})
    published = [_publish(made, root / "cogs") for made in series]
    return [i for i, _ in published], [t for _, t in published]


@pytest.fixture(scope="module")
def params() -> L3AParams:
    return L3AParams.load()


@pytest.fixture(scope="module")
def lambertian(params) -> L3AParams:
    """The production set with the directional correction off (the generator has no BRDF)."""
    return L3AParams.from_dict(params.values | {"directional_correction": False}, "test-no-brdf")


@pytest.fixture(scope="module")
def synthesis(month, lambertian, tmp_path_factory):
    inputs, _ = month
    return synthesize(inputs, WHEN, lambertian, tmp_path_factory.mktemp("l3a-out"), scheduler="inline")


def _read(product, key: str) -> np.ndarray:
    with rasterio.open(product.files[key].path) as ds:
        return ds.read(1)


def _truth(month) -> tuple[np.ndarray, np.ndarray]:
    """(dates, rows, cols) surface class and cloud-or-shadow truth on the R2 grid; clouds widened by the 2-pixel
    rim MAJA's masks add around them (the generator's CLM bit 4), which hides the surface from the synthesis too."""
    classes, covered = [], []
    for path in month[1]:
        with rasterio.open(path) as ds:
            cloud, shadow, cls = ds.read(2), ds.read(3), ds.read(5)
        classes.append(cls)
        covered.append(dilate(cloud > 0, 2) | (shadow > 0))
    return np.stack(classes), np.stack(covered)


def _at(group: str, a: np.ndarray) -> np.ndarray:
    return a.repeat(2, axis=-2).repeat(2, axis=-1) if group == "R1" else a


def test_frc_within_two_percent_of_the_clear_sky_truth_on_land(month, synthesis):
    """Land pixels whose class did not change in the window: FRC against the class spectrum (ρ×10000)."""
    classes, _ = _truth(month)
    stable = (classes == classes[0]).all(axis=0) & np.isin(classes[0], (VEGETATION, ROCK))
    spectra = class_spectra()
    for i, band in enumerate(BANDS):
        group = "R1" if band in R1 else "R2"
        frc = _read(synthesis, f"FRC_{band}").astype(np.float64)
        nobs = _read(synthesis, f"NOBS_{group}")
        truth = _at(group, spectra[classes[0], i])
        land = _at(group, stable) & (_read(synthesis, f"FLG_{group}") == LAND)
        assert land.sum() > 2000, "the test month must have stable land"
        error = frc - truth
        # no bias: the average is unbiased, whatever the weights (2 % of ρ would be 200)
        assert abs(error[land].mean()) < 20, band
        # per pixel the generator's ±10 % noise (σ 5.8 % of ρ) is only reduced by the dates averaged: with two or
        # more, half of the pixels are within 4 % of ρ
        several = land & (nobs >= 2)
        assert np.median(np.abs(error[several]) / truth[several]) <= 0.04, band
        # at 80 m (4×4 R2 pixels) the noise averages out: every block of clear land within 2 % (0.02 = 200)
        k = 8 if group == "R1" else 4
        rows, cols = (s // k * k for s in error.shape)
        blocks = lambda a: a[:rows, :cols].reshape(rows // k, k, cols // k, k)  # noqa: E731
        full = blocks(land & (nobs >= 2)).all(axis=(1, 3))
        assert full.sum() >= 50
        assert np.all(np.abs(blocks(error).mean(axis=(1, 3))[full]) <= 200), band


def test_flg_where_a_pixel_was_always_snow_water_or_cloud(month, synthesis):
    classes, covered = _truth(month)
    flg = _read(synthesis, "FLG_R2")
    with rasterio.open(month[1][0]) as ds:
        water = (ds.read(4) > 0) & (~covered).any(axis=0)  # lakes and river, seen clear at least once
    assert water.sum() > 20 and (flg[water] == WATER).all()
    full_snow = np.isin(classes, (FRESH_SNOW, OLD_SNOW))
    always_snow = full_snow.all(axis=0) & (~covered).any(axis=0)
    assert always_snow.sum() > 100 and (flg[always_snow] == SNOW).all()
    assert (_read(synthesis, "FLG_R1")[_at("R1", always_snow)] == SNOW).all()
    assert (_read(synthesis, "WGT_R2")[always_snow] == 0).all()


def test_flg_cloud_where_every_date_is_overcast(month, lambertian, tmp_path):
    """Three overcast dates: everything cloud, and the composite keeps the darkest blue (WASP's rule)."""
    gen = tmp_path / "gen"
    days = [date(2024, 3, d) for d in (10, 15, 20)]
    made = [generate_l2a(gen, day, "31TCH", seed=12, size=128, as_zip=False, cloud_cover=1.0, swath_edge=False)
            for day in days]
    inputs = [_publish(m, tmp_path / "cogs")[0] for m in made]
    product = synthesize(inputs, WHEN, lambertian, tmp_path / "out", scheduler="inline")
    assert (_read(product, "FLG_R2") == CLOUD).all() and (_read(product, "FLG_R1") == CLOUD).all()
    blues = np.stack([rasterio.open(i.files["FRE_B2"]).read(1) for i in inputs])
    assert (_read(product, "FRC_B2") == blues.min(axis=0)).all()
    assert product.cloud_percent == 100.0 and (_read(product, "NOBS_R1") == 0).all()


def test_dts_near_the_synthesis_date(month, synthesis):
    first = (month[0][0].acquired.date() - WHEN).days
    last = (month[0][-1].acquired.date() - WHEN).days
    for group in ("R1", "R2"):
        dts, flg = _read(synthesis, f"DTS_{group}"), _read(synthesis, f"FLG_{group}")
        valid = flg != 0
        assert (dts[~valid] == NODATA).all()
        assert (dts[valid] >= first).all() and (dts[valid] <= last).all()
        land = flg == LAND
        assert abs(np.median(dts[land])) <= 5  # dates on both sides of the 15th weigh in


def test_dts_counts_days_from_the_synthesis_date_across_new_year(lambertian, tmp_path):
    """A window over 31 December: DTS is continuous (−5 … +5), not day-of-year 361 … 5."""
    when = date(2025, 1, 2)
    made = [generate_l2a(tmp_path / "gen", when + timedelta(days=k), "31TCH", seed=13, size=128, as_zip=False,
                         cloud_cover=0.0, swath_edge=False) for k in (-5, 0, 5)]
    inputs = [_publish(m, tmp_path / "cogs")[0] for m in made]
    product = synthesize(inputs, when, lambertian, tmp_path / "out", scheduler="inline")
    dts, flg = _read(product, "DTS_R2"), _read(product, "FLG_R2")
    assert (flg > 0).all() and (np.abs(dts) <= 5).all()
    classes = np.stack([rasterio.open(m.truth_path).read(5) for m in made])
    land = np.isin(classes, (VEGETATION, ROCK)).all(axis=0)  # land on all three dates: 28 Dec, 2 and 7 Jan
    assert land.sum() > 200 and (flg[land] == LAND).all() and abs(float(np.median(dts[land]))) <= 2
    assert product.window == (date(2024, 12, 10), date(2025, 1, 25))


def test_identical_clear_dates_give_that_date(lambertian, tmp_path):
    """The same clear L2A given as three acquisitions (other dates, same files): the composite is that L2A."""
    made = generate_l2a(tmp_path / "gen", date(2024, 3, 14), "31TCH", seed=14, size=128, as_zip=False,
                        cloud_cover=0.0, swath_edge=False)
    one, _ = _publish(made, tmp_path / "cogs")
    stamp = one.product_id.split("_")[1]
    copies = [replace(one, product_id=one.product_id.replace(stamp, f"202403{d:02d}-103000-000"))
              for d in (5, 15, 25)]
    product = synthesize(copies, WHEN, lambertian, tmp_path / "out", scheduler="inline")
    for band in BANDS:
        with rasterio.open(one.files[f"FRE_{band}"]) as ds:
            assert (_read(product, f"FRC_{band}") == ds.read(1)).all(), band


def test_outputs_are_checksummed_cogs_named_as_the_collection(month, synthesis):
    keys = set(COLLECTIONS[S2_L3A].item_assets)
    assert set(synthesis.files) == keys
    for key, cog in synthesis.files.items():
        assert cog.path.parent == synthesis.folder and cog.path.name == f"{synthesis.product_id}_{key}.tif" or \
            key in ("thumbnail", "metadata")
        assert multihash(cog.path) == cog.checksum and cog.size == cog.path.stat().st_size
        if cog.path.suffix == ".tif":
            assert cog_validate(str(cog.path), quiet=True)[0], key
    assert not any(p.name.startswith(".") for p in synthesis.folder.parent.iterdir())
    assert synthesis.platform == "SENTINEL2X" and synthesis.product_id.startswith("SENTINEL2X_20240315-000000-000_L3A")
    assert synthesis.inputs == tuple(i.product_id for i in sorted(month[0], key=lambda i: i.acquired))


def test_metadata_names_the_inputs_and_the_flg_percentages(month, synthesis):
    doc = ET.parse(synthesis.files["metadata"].path).getroot()
    assert doc.findtext("Product_Characteristics/PRODUCT_LEVEL") == "L3A"
    flg = _read(synthesis, "FLG_R2")
    valid = flg > 0
    assert synthesis.cloud_percent == pytest.approx(100 * (flg[valid] == CLOUD).mean(), abs=0.01)
    assert synthesis.snow_percent == pytest.approx(100 * (flg[valid] == SNOW).mean(), abs=0.01)
    index = {q.get("name"): q.text for q in doc.iter("QUALITY_INDEX")}
    assert int(index["SnowPercent"]) == int(synthesis.snow_percent + 0.5)
    assert [e.text for e in doc.iter("PRODUCT_ID")][1:] == list(synthesis.inputs)
    assert doc.find("Processing_Information/Parameter_Set").get("version_hash") == synthesis.params_hash


def test_small_blocks_and_a_dask_cluster_give_the_same_product(month, lambertian, synthesis, tmp_path):
    """Block independence (no halo needed) and the distributed path: byte-identical rasters."""
    inputs, _ = month
    odd = synthesize(inputs, WHEN, lambertian, tmp_path / "odd", scheduler="inline", block=(48, 40))
    cluster = synthesize(inputs, WHEN, lambertian, tmp_path / "dask", scheduler="local")
    for key in synthesis.files:
        if key in ("thumbnail", "metadata"):
            continue
        expected = _read(synthesis, key)
        assert (_read(odd, key) == expected).all(), key
        assert (_read(cluster, key) == expected).all(), key


def test_memory_of_a_block_is_flat_in_the_number_of_dates(month, lambertian, tmp_path):
    """Python-side allocations (numpy's, which tracemalloc sees) of a block with 4 and with 8 dates."""
    inputs, _ = month
    from processing.l3a import date_grids

    dates = [DateInput(i.product_id, {k: str(v) for k, v in i.files.items()}, (i.acquired.date() - WHEN).days,
                       1.0, False) for i in inputs]
    with rasterio.open(inputs[0].files["FRE_B5"]) as ds:
        t = ds.transform
        grids = [date_grids(d, None, lambertian, (ds.height * 20, ds.width * 20)) for d in dates]
        task = BlockTask(0, 0, ds.height, 0, ds.width, "", ds.crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f))
    peaks = []
    assert len(dates) >= 2 * GROUP_DATES
    for n in (GROUP_DATES, len(dates)):  # one group of dates, then two: the same buffers
        (tmp_path / str(n)).mkdir()
        run_block(replace(task, scratch=str(tmp_path / str(n))), dates[:n], grids[:n], lambertian.kernel())
        tracemalloc.start()
        run_block(replace(task, index=1, scratch=str(tmp_path / str(n))), dates[:n], grids[:n], lambertian.kernel())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] <= peaks[0] * 1.1


def test_inputs_are_checked(month, lambertian, tmp_path):
    inputs, _ = month
    with pytest.raises(L3AInputError, match="outside the window"):
        synthesize(inputs, date(2024, 4, 30), lambertian, tmp_path, scheduler="inline")
    with pytest.raises(L3AInputError, match="given twice"):
        synthesize([inputs[0], inputs[0]], WHEN, lambertian, tmp_path, scheduler="inline")
    with pytest.raises(L3AInputError, match="no L2A"):
        synthesize([], WHEN, lambertian, tmp_path, scheduler="inline")
    other = replace(inputs[0], product_id=inputs[0].product_id.replace("T31TCH", "T31TCJ"))
    with pytest.raises(L3AInputError, match="several tiles"):
        synthesize([inputs[1], other], WHEN, lambertian, tmp_path, scheduler="inline")
    lacking = replace(inputs[0], files={k: v for k, v in inputs[0].files.items() if k != "MG2_R2"})
    with pytest.raises(L3AInputError, match="MG2_R2"):
        synthesize([lacking], WHEN, lambertian, tmp_path, scheduler="inline")
    swapped = replace(inputs[0], files=dict(inputs[0].files) | {"CLM_R2": inputs[0].files["CLM_R1"]})
    with pytest.raises(RasterInputError, match="CLM_R2"):
        synthesize([swapped], WHEN, lambertian, tmp_path, scheduler="inline")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_damaged_input_fails_the_synthesis_and_leaves_nothing(month, lambertian, tmp_path):
    inputs, _ = month
    damaged = tmp_path / "damaged_FRE_B8.tif"
    data = inputs[2].files["FRE_B8"].read_bytes()
    damaged.write_bytes(data[: len(data) * 2 // 3])  # header intact, tiles cut
    broken = replace(inputs[2], files=dict(inputs[2].files) | {"FRE_B8": damaged})
    out = tmp_path / "out"
    with pytest.raises(RasterInputError, match="FRE_B8|damaged"):
        synthesize([inputs[1], broken], WHEN, lambertian, out, scheduler="inline")
    assert list(out.iterdir()) == []


def test_platform_and_date_conventions(month):
    inputs, _ = month
    assert platform_of([i for i in inputs if i.platform == "SENTINEL2A"]) == "SENTINEL2A"
    assert platform_of(inputs) == "SENTINEL2X"
    assert synthesis_date(2024, 3) == WHEN


# --- weights and kernel, as properties ---------------------------------------------------------------------

@hsettings(max_examples=200, deadline=None)
@given(w_date=st.floats(0, 1), aot_dn=st.integers(0, 255), w_cloud=st.floats(0, 1),
       aot_max=st.floats(0.05, 2), w_min=st.floats(0, 1), span=st.floats(0, 1))
def test_land_weight_stays_in_0_1(w_date, aot_dn, w_cloud, aot_max, w_min, span):
    w = land_weight(w_date, aot_dn, w_cloud, 200.0, aot_max, w_min, min(1.0, w_min + span))
    assert 0.0 <= w <= 1.0


@hsettings(max_examples=50, deadline=None)
@given(days=st.integers(-23, 23), edge=st.floats(0, 1))
def test_date_weight_stays_in_0_1_and_peaks_on_the_date(days, edge):
    w = date_weight(days, 23, edge)
    assert edge - 1e-12 <= w <= 1.0 and (days != 0 or w == 1.0)


@hsettings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cover=st.floats(0, 1), factor=st.sampled_from([1, 3, 12]))
def test_cloud_weight_stays_in_0_1_and_is_lowest_under_clouds(seed, cover, factor):
    rng = np.random.default_rng(seed)
    cloud = rng.random((int(rng.integers(4, 60)), int(rng.integers(4, 60)))) < cover
    w = cloud_weight_grid(cloud, factor, threshold=0.5, sigma_small=2, sigma_large=10)
    assert w.dtype == np.float32 and (w >= 0).all() and (w <= 1).all()
    if cloud.all():
        assert (w == 0).all()
    if not cloud.any():
        assert (w == 1).all()


def test_blur_conserves_a_constant_field():
    for sigma in (2.0, 10.0):
        assert np.allclose(gaussian_blur(np.ones((30, 50)), sigma), 1.0)


def _fold(dates_refl, days, w_dates, aot, w_cloud, clm=None, mg2=None, group=4):
    """Run the kernel over in-memory dates of one block (R1 layout, 4 bands), `group` dates per call, and finish."""
    nb, rows, cols = dates_refl[0].shape
    acc = np.zeros((nb, rows, cols), np.float32)
    wsum, dsum = np.zeros((rows, cols), np.float32), np.zeros((rows, cols), np.float32)
    blue = np.full((rows, cols), np.inf, np.float32)
    flag, nobs = np.zeros((rows, cols), np.uint8), np.zeros((rows, cols), np.uint8)
    zeros = np.zeros((len(dates_refl), rows, cols), np.uint8)
    clm = zeros if clm is None else clm
    mg2 = zeros if mg2 is None else mg2
    idx = np.zeros(max(rows, cols), np.int32)
    frac = np.zeros(max(rows, cols), np.float32)
    for start in range(0, len(dates_refl), group):
        part = slice(start, start + group)
        refl = np.stack(dates_refl[part])
        n = len(refl)
        update(refl, clm[part], mg2[part], np.stack([aot] * n), refl[:, 0], n, 1,
               np.full((n, 1, 1), w_cloud, np.float32), idx, idx, frac, idx, idx, frac,
               np.ones((n, nb, 1, 1), np.float32), idx, idx, frac, idx, idx, frac, np.zeros(n, np.bool_),
               np.array(w_dates[part], np.float64), np.array(days[part], np.int64), 200.0, 0.8, 0.33, 1.0,
               acc, wsum, dsum, blue, flag, nobs)
    out = np.empty((nb, rows, cols), np.int16)
    wgt, dts = np.empty((rows, cols), np.int16), np.empty((rows, cols), np.int16)
    finish(acc, wsum, dsum, flag, out, wgt, dts)
    return out, wgt, dts, flag, nobs


@hsettings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), w_cloud=st.floats(0, 1), group=st.integers(1, 4))
def test_a_synthesis_of_identical_clear_dates_equals_that_date(seed, n, w_cloud, group):
    rng = np.random.default_rng(seed)
    refl = rng.integers(-200, 15000, (4, 7, 9)).astype(np.int16)
    days = sorted(rng.integers(-23, 24, n).tolist())
    w_dates = [date_weight(d, 23, 0.5) for d in days]
    aot = rng.integers(0, 256, (7, 9)).astype(np.uint8)
    out, wgt, dts, flag, nobs = _fold([refl] * n, days, w_dates, aot, w_cloud, group=group)
    assert (out == refl).all() and (flag == LAND).all() and (nobs == n).all()
    assert (dts >= min(days)).all() and (dts <= max(days)).all()
    assert (wgt >= 0).all() and (wgt <= 1000 * n).all()


@hsettings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), w_cloud=st.floats(0, 1), days=st.integers(-23, 23))
def test_the_kernel_weighs_a_clear_date_as_the_documented_formula(seed, w_cloud, days):
    """W = W_date · W_aot · W_cloud (products.md §4), as `land_weight` writes it, in the kernel's WGT output."""
    rng = np.random.default_rng(seed)
    refl = rng.integers(0, 10000, (4, 3, 5)).astype(np.int16)
    aot = rng.integers(0, 256, (3, 5)).astype(np.uint8)
    w_date = date_weight(days, 23, 0.5)
    _, wgt, dts, _, _ = _fold([refl], [days], [w_date], aot, w_cloud)
    expected = np.vectorize(lambda dn: land_weight(w_date, int(dn), w_cloud, 200.0, 0.8, 0.33, 1.0))(aot)
    assert np.abs(wgt - np.floor(1000 * np.maximum(expected, 1e-6) + 0.5)).max() <= 1
    assert (dts == days).all()


def test_snow_then_land_keeps_the_land_and_a_later_cloud_changes_nothing():
    rng = np.random.default_rng(1)
    dates = [rng.integers(100, 9000, (4, 2, 2)).astype(np.int16) for _ in range(3)]
    mg2 = np.array([[[4, 1], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [0, 0]]], np.uint8)  # snow, water …
    clm = np.array([[[0, 0], [1, 0]], [[0, 0], [1, 0]], [[1, 1], [0, 0]]], np.uint8)
    aot = np.zeros((2, 2), np.uint8)
    out, wgt, dts, flag, nobs = _fold(dates, [-5, 0, 5], [1.0, 1.0, 1.0], aot, 1.0, clm, mg2)
    assert flag[0, 0] == LAND and (out[:, 0, 0] == dates[1][:, 0, 0]).all() and dts[0, 0] == 0  # snow, land, cloud
    assert flag[0, 1] == WATER and (out[:, 0, 1] == dates[1][:, 0, 1]).all()  # water, water, cloud: last water
    assert flag[1, 0] == LAND and (out[:, 1, 0] == dates[2][:, 1, 0]).all() and nobs[1, 0] == 1  # cloud ×2, land
    assert flag[1, 1] == LAND and nobs[1, 1] == 3


# --- directional correction ---------------------------------------------------------------------------------

def test_directional_factor_has_the_physics_of_the_model():
    assert directional_factor(40, 150, 0, 0, 0.5, 0.1) == pytest.approx(1.0)  # nadir view: nothing to correct
    assert directional_factor(40, 150, 8, 280, 0.0, 0.0) == pytest.approx(1.0)  # isotropic surface
    hot = directional_factor(40, 150, 40, 150, 0.5, 0.1)  # view = sun direction: the hot spot is brighter
    forward = directional_factor(40, 150, 10, 330, 0.5, 0.1)  # forward scattering is darker
    assert hot < 1.0 < forward
    assert directional_factor(40, 150, float("nan"), 0, 0.5, 0.1) == 1.0


def test_the_directional_correction_normalises_land_to_nadir(month, params, tmp_path):
    """The same clear L2A thrice, correction on: land = FRE × the factor of its MTD's angles; snow, water no."""
    made = generate_l2a(tmp_path / "gen", date(2024, 3, 14), "31TCH", seed=15, size=128, as_zip=False,
                        cloud_cover=0.0, swath_edge=False)
    one, _ = _publish(made, tmp_path / "cogs")
    geometry = read_geometry(one.mtd, BANDS)
    assert geometry.source == "grids"
    product = synthesize([one], date(2024, 3, 15), params, tmp_path / "out", scheduler="inline")
    assert product.directional == {one.product_id: "grids"}
    flg = _read(product, "FLG_R1")
    for band in ("B4", "B8"):
        zen, azi = geometry.view[band]
        expected = directional_factor(geometry.sun_zenith.mean(), geometry.sun_azimuth.mean(), zen.mean(),
                                      azi.mean(), *params.scattering[band])
        with rasterio.open(one.files[f"FRE_{band}"]) as ds:
            fre = ds.read(1).astype(np.float64)
        frc = _read(product, f"FRC_{band}")
        land = (flg == LAND) & (fre > 500)
        assert abs(expected - 1) > 0.005  # the case is not trivial
        assert np.median(frc[land] / fre[land]) == pytest.approx(expected, abs=0.01)
        other = (flg == SNOW) | (flg == WATER)
        assert other.any() and (frc[other] == fre[other]).all()


def test_angles_fall_back_to_means_then_to_none(tmp_path):
    mtd = tmp_path / "x_MTD_ALL.xml"
    mtd.write_text("<Muscate_Metadata_Document><Geometric_Informations><Mean_Value_List><Sun_Angles>"
                   "<ZENITH_ANGLE>40</ZENITH_ANGLE><AZIMUTH_ANGLE>150</AZIMUTH_ANGLE></Sun_Angles>"
                   "<Mean_Viewing_Incidence_Angle_List><Mean_Viewing_Incidence_Angle band_id='B4'>"
                   "<ZENITH_ANGLE>5</ZENITH_ANGLE><AZIMUTH_ANGLE>100</AZIMUTH_ANGLE>"
                   "</Mean_Viewing_Incidence_Angle></Mean_Viewing_Incidence_Angle_List></Mean_Value_List>"
                   "</Geometric_Informations></Muscate_Metadata_Document>")
    means = read_geometry(mtd, BANDS)
    assert means.source == "means" and set(means.view) == {"B4"} and float(means.sun_zenith[0, 0]) == 40
    assert read_geometry(None, BANDS).source == "none"

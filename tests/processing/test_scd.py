"""Snow-cover duration against the generator's daily snow truth (products.md §3 and §6), and the gap-filling rule
as properties.

A hydrological year of small synthetic L2As (every 5 days, mostly clear) goes through the snow map with the tile's
DEM; the SCD of those maps is compared with the true daily snow of the landscape (`surface_classes` of every day),
where the clear revisits of a pixel are at most 10 days apart.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings as hsettings, strategies as st
from rio_cogeo.cogeo import cog_validate

from ingest.checksum import multihash
from ingest.generate import generate_l2a
from ingest.synthetic.grid import tile_grid
from ingest.synthetic.landscape import build_landscape, surface_classes
from ingest.synthetic.spectra import SNOW_CLASSES
from processing.raster_io import Grid, RasterInputError, write_cog
from processing.scd import (OUTPUTS, ScdParams, daily_snow, hydrological_year, scd, scd_arrays, scd_product_id,
                            select_inputs)
from processing.settings import ProcessingSettings
from processing.snow import SnowInputs, SnowParams, snow_map

TILE, SEED, SIZE, EVERY = "31TCH", 0, 64, 5
PARAMS = ScdParams.load()
START, STOP = hydrological_year(2023)
N_DAYS = (STOP - START).days + 1


class Season:
    def __init__(self, root: Path) -> None:
        self.land = build_landscape(tile_grid(TILE), SIZE // 2, SEED)
        rng = np.random.default_rng(5)
        snow_params = SnowParams.load()
        self.maps: list[tuple[date, Path]] = []
        day = START - timedelta(days=10)
        while day <= STOP + timedelta(days=10):
            l2a = generate_l2a(root / "l2a", TILE, day, size=SIZE, seed=SEED, as_zip=False, landscape=self.land,
                               cloud_cover=float(rng.uniform(0, 0.15)), swath_edge=False)
            product = snow_map(SnowInputs.from_product_dir(l2a.path, l2a.product_id, l2a.dem_path), snow_params,
                               root / "snow" / l2a.product_id)
            self.maps.append((day, product.files["SNW_R2"].path))
            day += timedelta(days=EVERY)
        # one more map, sensed too early to count (beyond the 15-day margin)
        self.stray = (START - timedelta(days=16), self.maps[0][1])
        self.product = scd([self.stray, *self.maps], START, STOP, PARAMS, root / "scd", tile=TILE)
        self.out = {k: read(self.product.files[k].path).astype(int) for k in OUTPUTS}
        self.daily = np.stack([np.isin(surface_classes(self.land, START + timedelta(days=k)), SNOW_CLASSES)
                               for k in range(N_DAYS)])
        self.values = np.stack([read(p) for _, p in self.maps])
        self.days = np.array([(d - START).days for d, _ in self.maps])


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def season(tmp_path_factory) -> Season:
    return Season(tmp_path_factory.mktemp("season"))


def longest_run(series: np.ndarray) -> tuple[int, int, int]:
    """(length, first day, last day) of the first longest run of ones."""
    best, start = (0, 0, 0), None
    for t, v in enumerate([*series.tolist(), 0]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            if t - start > best[0]:
                best = (t - start, start, t - 1)
            start = None
    return best


def test_scd_is_within_a_few_days_of_the_truth_where_clear_revisits_are_at_most_10_days(season):
    clear = season.values <= 100
    gaps = np.full(season.values.shape[1:], 999)
    for i, j in np.ndindex(gaps.shape):
        seen = season.days[clear[:, i, j]]
        if seen.size:
            gaps[i, j] = np.diff(np.concatenate([[min(seen[0], 0)], seen, [max(seen[-1], N_DAYS - 1)]])).max()
    ok = gaps <= 10
    assert ok.sum() >= 50, ok.sum()
    truth = season.daily.sum(axis=0)
    assert truth[ok].min() < 100 < truth[ok].max()  # the pixels span low valleys to high summits
    error = np.abs(season.out["SCD"] - truth)[ok]
    assert np.median(error) <= 3 and np.percentile(error, 90) <= 8, (np.median(error), np.percentile(error, 90))
    # the longest snow period starts and ends near the true one where there is a season to speak of
    onset, melt = np.zeros_like(truth), np.zeros_like(truth)
    for i, j in np.ndindex(truth.shape):
        _, onset[i, j], melt[i, j] = longest_run(season.daily[:, i, j])
    long_season = ok & (truth > 30)
    assert long_season.sum() >= 20
    assert np.median(np.abs(season.out["SOD"] - onset)[long_season]) <= 4
    assert np.median(np.abs(season.out["SMOD"] - melt)[long_season]) <= 4


def test_nobs_counts_the_clear_inputs_and_the_margin_is_respected(season):
    assert [d for d, _ in season.product.inputs] == [d for d, _ in season.maps]  # the stray one is left out
    assert np.array_equal(season.out["NOBS"], (season.values <= 100).sum(axis=0))
    assert season.product.n_days == N_DAYS == 366  # 2024 is a leap year
    assert season.product.product_id == scd_product_id(TILE, START, STOP) == "LIS_S2-SNOW_T31TCH_20230901_20240831_V1-0"


def test_written_files(season):
    for key in OUTPUTS:
        cog = season.product.files[key]
        assert cog.checksum == multihash(cog.path) and cog_validate(str(cog.path), quiet=True)[0]
        with rasterio.open(cog.path) as ds, rasterio.open(season.maps[0][1]) as snow:
            assert ds.dtypes[0] == "uint16" and ds.transform == snow.transform and ds.crs == snow.crs
    assert season.out["SCD"].max() <= N_DAYS and season.out["SMOD"].max() < N_DAYS
    short = season.out["SCD"] <= PARAMS.min_snow_days
    assert not season.out["SOD"][short].any() and not season.out["SMOD"][short].any()
    snowy = season.out["SCD"] > 0
    assert (season.out["NSP"][snowy] >= 1).all() and not season.out["NSP"][~snowy].any()


def test_own_overviews_are_the_drivers_pixels_at_every_level(tmp_path):
    # the SCD hands its nearest overviews to the COG driver; they must be the very pixels the driver would pick
    rng = np.random.default_rng(3)
    array = rng.integers(0, 400, (1100, 1300), dtype=np.uint16)  # odd halvings: 550×650, 275×325
    grid = Grid(1300, 1100, Affine(20, 0, 300000, 0, -20, 4800000), "EPSG:32631")
    theirs = write_cog(tmp_path / "theirs.tif", array, grid, "SCD")
    ours = write_cog(tmp_path / "ours.tif", array, grid, "SCD", own_overviews=True, level=1, description="d")
    assert cog_validate(str(ours.path), quiet=True)[0] and ours.checksum == multihash(ours.path)
    with rasterio.open(theirs.path) as a, rasterio.open(ours.path) as b:
        assert a.overviews(1) == b.overviews(1) == [2, 4] and b.descriptions == ("d",)
        assert np.array_equal(a.read(1), b.read(1)) and np.array_equal(b.read(1), array)
    for level in range(2):
        with rasterio.open(theirs.path, overview_level=level) as a, rasterio.open(ours.path, overview_level=level) as b:
            assert a.shape == b.shape and np.array_equal(a.read(1), b.read(1))
    with pytest.raises(ValueError, match="averaged"):
        write_cog(tmp_path / "fre.tif", array.astype(np.int16), grid, "FRE_B2", own_overviews=True)


def test_dask_cluster_gives_the_in_process_answer(season, tmp_path):
    # the cluster path (distributed client, tasks, results); worker processes are the benchmark's business
    settings = ProcessingSettings(dask_min_work=0, dask_workers=2, dask_scheduler=None, dask_processes=False)
    product = scd(season.maps, START, STOP, PARAMS, tmp_path, tile=TILE, settings=settings)
    assert product.workers == 2 and season.product.workers == 0
    for key in OUTPUTS:
        assert np.array_equal(read(product.files[key].path), season.out[key])


def test_same_day_inputs_merge_first_valid_wins(tmp_path):
    profile = dict(driver="GTiff", width=4, height=1, count=1, dtype="uint8", crs="EPSG:32631",
                   transform=rasterio.Affine(20, 0, 300000, 0, -20, 4800000))

    def write(name: str, values: list[int]) -> Path:
        with rasterio.open(tmp_path / name, "w", **profile) as ds:
            ds.write(np.array([values], np.uint8), 1)
        return tmp_path / name

    a = write("a.tif", [205, 100, 0, 254])
    b = write("b.tif", [100, 0, 100, 205])
    day = date(2023, 12, 1)
    params = ScdParams.from_dict({"date_margin_days": 0, "snow_min_value": 1, "min_snow_days": 0})
    ab = scd([(day, a), (day, b)], day, day, params, tmp_path / "ab", tile=TILE)
    ba = scd([(day, b), (day, a)], day, day, params, tmp_path / "ba", tile=TILE)
    assert read(ab.files["SCD"].path).tolist() == [[1, 1, 0, 0]]
    assert read(ba.files["SCD"].path).tolist() == [[1, 0, 1, 0]]
    assert read(ab.files["NOBS"].path).tolist() == [[1, 1, 1, 0]]  # one date, one observation at most


def test_bad_inputs_are_domain_errors(season, tmp_path):
    with pytest.raises(RasterInputError, match="no snow map of T31TCH"):
        scd(season.maps, date(2030, 9, 1), date(2031, 8, 31), PARAMS, tmp_path / "a", tile=TILE)
    with pytest.raises(RasterInputError, match="ends before it starts or lasts more than"):
        scd(season.maps, STOP, START, PARAMS, tmp_path / "b", tile=TILE)
    with rasterio.open(season.maps[1][1]) as ds:
        profile, data = ds.profile, ds.read(1)
    profile["transform"] = rasterio.Affine(20, 0, 300020, 0, -20, 4800000)
    with rasterio.open(tmp_path / "shifted.tif", "w", **profile) as out:
        out.write(data, 1)
    with pytest.raises(RasterInputError, match="shifted.tif .* not on the product's grid"):
        scd([*season.maps[:3], (season.maps[1][0], tmp_path / "shifted.tif")], START, STOP, PARAMS,
            tmp_path / "c", tile=TILE)


def test_hydrological_years():
    assert hydrological_year(2017) == (date(2017, 9, 1), date(2018, 8, 31))
    assert hydrological_year(2023, southern=True) == (date(2023, 3, 1), date(2024, 2, 29))
    picked = select_inputs([(date(2017, 8, 16), "x"), (date(2017, 8, 17), "y"), (date(2018, 9, 15), "z"),
                            (date(2018, 9, 16), "w")], *hydrological_year(2017), 15)
    assert [p.name for _, p in picked] == ["y", "z"]


# The rule as properties: any series of observations (snow 100, no snow 0, cloud 205, no-data 254) on any days
# in and around a period.
VALUE = st.sampled_from([0, 100, 205, 254, 0, 100])


@st.composite
def series(draw, n_days=st.integers(1, 120)):
    n = draw(n_days)
    days = sorted(draw(st.sets(st.integers(-15, n + 14), min_size=1, max_size=25)))
    values = draw(st.lists(VALUE, min_size=len(days), max_size=len(days)))
    return n, np.array(days), np.array(values)


@hsettings(max_examples=300, deadline=None)
@given(series())
def test_the_kernel_sums_the_daily_gap_filled_series(s):
    n, days, values = s
    out = scd_arrays(values.astype(np.uint8)[:, None, None], days, n, PARAMS)[:, 0, 0]
    daily = daily_snow(days, values, n)
    length, first, last = longest_run(daily)
    runs = int(np.sum(np.diff(np.concatenate([[0], daily.astype(int)])) == 1))
    long_enough = daily.sum() > PARAMS.min_snow_days
    assert out.tolist() == [daily.sum(), first * long_enough, last * long_enough, int((values <= 100).sum()), runs]


@hsettings(max_examples=200, deadline=None)
@given(series())
def test_gap_filling_is_monotone_between_observations_and_holds_outside(s):
    n, days, values = s
    daily = daily_snow(days, values, n).astype(int)
    valid = [(d, int(v == 100)) for d, v in zip(days, values) if v <= 100]
    if not valid:
        assert not daily.any()
        return
    for (d0, v0), (d1, v1) in zip(valid, valid[1:]):
        lo, hi = max(d0, 0), min(d1, n - 1)
        if lo <= hi:
            piece = np.diff(daily[lo:hi + 1])
            assert (piece >= 0).all() if v1 >= v0 else (piece <= 0).all()
    assert (daily[:max(valid[0][0], 0)] == valid[0][1]).all()  # before the first: its value
    assert (daily[max(valid[-1][0] + 1, 0):] == valid[-1][1]).all()  # after the last: its value


@hsettings(max_examples=100, deadline=None)
@given(series(), st.data())
def test_an_all_snow_series_lasts_the_whole_period(s, data):
    n, days, values = s
    values = np.where(values <= 100, 100, values)  # every clear observation is snow
    if not (values == 100).any():
        values[data.draw(st.integers(0, len(values) - 1))] = 100
    scd_, sod, smod, nobs, nsp = scd_arrays(values.astype(np.uint8)[:, None, None], days, n, PARAMS)[:, 0, 0]
    assert scd_ == n and nsp == 1 and nobs == (values == 100).sum()
    assert (sod, smod) == ((0, n - 1) if n > PARAMS.min_snow_days else (0, 0))

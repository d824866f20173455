"""Snow-cover duration of a tile over a period (a hydrological year, 1 Sep – 31 Aug), from its snow maps
(shared/spec products.md §3, LIS ≥ 1.7 synthesis): SCD, SOD, SMOD, NOBS, NSP, uint16 on the snow maps' 20 m grid.

Per pixel, the dated observations (input value v: snow when `snow_min_value` ≤ v ≤ 100, no snow when v = 0,
anything else — 205 cloud, 254/255 no-data — is no observation) are gap-filled to every day of the period:
* between two valid observations the snow value (0/1) is interpolated linearly and a day is snow when the
  interpolated value is ≥ 0.5, so a snow → no-snow gap switches at its midpoint (the midpoint day itself is snow);
* before the first and after the last valid observation the nearest valid value is repeated; a pixel never
  observed is never snow;
* inputs sensed within `date_margin_days` outside the period take part (they bound the first and last gaps), inputs
  further out are left out (`ScdProduct.inputs` lists those used); same-day inputs are merged, the first valid
  value in the order given wins.
Outputs: **SCD** snow days in the period; **SOD**/**SMOD** first/last day (days since the start, start = 0) of the
longest run of consecutive snow days, the first such run on ties, both 0 when SCD ≤ `min_snow_days`; **NOBS** valid
observations among the inputs used (margin dates included, same-day inputs counted once); **NSP** the number of
snow periods, i.e. maximal runs of consecutive snow days within the period (LIS documents this definition; its code
counts `diff > 0` on a uint8 series, which wraps and likely counts every transition — we follow the documentation).

The kernel never builds the daily series: it walks each pixel's observations in date order and adds up the
constant pieces between them (at most two per gap), so its cost is per observation, not per day. It runs over one
COG block (512 × 512) at a time in strips of rows, each date one vector step over the strip's pixels (numba,
branch-free), so memory is one block per date plus the outputs — flat in the number of dates in practice
(256 KiB per date). Chunks of 512 rows × 2048 columns are Dask tasks (`processing.raster_io.dask_client`):
in-process for small work, a LocalCluster or the configured scheduler otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numba
import numpy as np
import rasterio
from rasterio.windows import Window

from ingest.model import CogFile, CogSet
from processing.params import ParamsError, check_keys, load_params
from processing.raster_io import BLOCK, Grid, RasterInputError, dask_client, open_raster, same_grids, write_cog
from processing.settings import ProcessingSettings

OUTPUTS = ("SCD", "SOD", "SMOD", "NOBS", "NSP")
DESCRIPTIONS = {
    "SCD": "snow cover duration (days)",
    "SOD": "snow onset: first day of the longest snow period (days since the start)",
    "SMOD": "snow melt-out: last day of the longest snow period (days since the start)",
    "NOBS": "number of clear observations",
    "NSP": "number of snow periods",
}
CHUNK_ROWS, CHUNK_COLS = BLOCK, 4 * BLOCK
_STRIP = 16  # rows of a block whose per-pixel state (10 int32) stays in L2 while every date streams through
_NONE = -(1 << 20)  # "no previous observation" day


@dataclass(frozen=True)
class ScdParams:
    """An SCD parameter set (`processing/params/scd.toml`); `version` is its hash."""

    date_margin_days: int
    snow_min_value: int
    min_snow_days: int
    version: str = field(default="", compare=False)
    name: str = field(default="scd", compare=False)

    @classmethod
    def load(cls, name: str = "scd", directory: Path | None = None) -> "ScdParams":
        values, version = load_params(name, directory)
        return cls.from_dict(values, version, name)

    @classmethod
    def from_dict(cls, values: dict[str, Any], version: str = "", name: str = "scd") -> "ScdParams":
        check_keys(name, values, {f.name for f in fields(cls)} - {"version", "name"})
        params = cls(**values, version=version, name=name)
        if params.date_margin_days < 0 or not 1 <= params.snow_min_value <= 100 or params.min_snow_days < 0:
            raise ParamsError(f"parameter set {name!r}: date_margin_days ≥ 0, 1 ≤ snow_min_value ≤ 100, "
                              "min_snow_days ≥ 0", "fix the file")
        return params


@dataclass(frozen=True)
class ScdProduct:
    """A written SCD product: five COGs staged in `directory` and what the item records."""

    product_id: str
    tile: str
    start: date
    stop: date
    directory: Path
    files: dict[str, CogFile]  # SCD, SOD, SMOD, NOBS, NSP
    grid: Grid
    n_days: int
    inputs: list[tuple[date, Path]]  # the snow maps used (in the period ± margin), date order: `derived_from`
    params_version: str
    workers: int  # Dask workers the chunks ran on (0: in-process)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def cogs(self) -> CogSet:
        return CogSet(staging=self.directory, files=self.files)


def hydrological_year(year: int, southern: bool = False) -> tuple[date, date]:
    """1 Sep `year` – 31 Aug `year + 1` (southern hemisphere: 1 Mar – end of Feb)."""
    if southern:
        return date(year, 3, 1), date(year + 1, 3, 1) - timedelta(days=1)
    return date(year, 9, 1), date(year + 1, 8, 31)


def scd_product_id(tile: str, start: date, stop: date, version: str = "1-0") -> str:
    """`LIS_S2-SNOW_T31TCH_20170901_20180831_V1-0` (LIS's tag `{TILE}_{start}_{stop}`, mission S2)."""
    return f"LIS_S2-SNOW_T{tile.upper().removeprefix('T')}_{start:%Y%m%d}_{stop:%Y%m%d}_V{version.replace('.', '-')}"


def select_inputs(inputs: Sequence[tuple[date | datetime, Path]], start: date, stop: date, margin_days: int
                  ) -> list[tuple[date, Path]]:
    """The inputs sensed in [start − margin, stop + margin], as dates, in date order (stable for same days)."""
    lo, hi = start.toordinal() - margin_days, stop.toordinal() + margin_days
    picked = [(d.date() if isinstance(d, datetime) else d, Path(p)) for d, p in inputs]
    return sorted((x for x in picked if lo <= x[0].toordinal() <= hi), key=lambda x: x[0])


def scd(inputs: Sequence[tuple[date | datetime, Path]], start: date, stop: date, params: ScdParams,
        out_dir: Path, *, tile: str, product_id: str | None = None, settings: ProcessingSettings | None = None
        ) -> ScdProduct:
    """SCD, SOD, SMOD, NOBS and NSP of `tile` over [start, stop] (inclusive) into `out_dir` (a staging directory,
    created; files are never overwritten). `inputs` are (acquisition date, snow map file) of one tile grid."""
    if stop < start:
        raise RasterInputError(f"the period {start} – {stop} ends before it starts", "give start ≤ stop")
    used = select_inputs(inputs, start, stop, params.date_margin_days)
    if not used:
        raise RasterInputError(
            f"no snow map of T{tile} sensed in {start} – {stop} (± {params.date_margin_days} days)",
            "produce the snow maps of the period first")
    grid = same_grids([p for _, p in used], "snow map")
    n_days = stop.toordinal() - start.toordinal() + 1
    groups = _day_groups(used, start)
    settings = settings or ProcessingSettings()
    clock = time.perf_counter()
    with dask_client(settings, grid.width * grid.height * len(groups)) as client:
        stack = compute_chunks(groups, grid, n_days, params, client)
        workers = len(client.scheduler_info()["workers"]) if client is not None else 0
    compute_s = time.perf_counter() - clock
    tick = time.perf_counter()
    pid = product_id or scd_product_id(tile, start, stop)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {key: write_cog(out_dir / f"{pid}_{key}.tif", stack[i], grid, key, description=DESCRIPTIONS[key])
             for i, key in enumerate(OUTPUTS)}
    return ScdProduct(pid, tile.upper().removeprefix("T"), start, stop, out_dir, files, grid, n_days, used,
                      params.version, workers, {"compute": compute_s, "write": time.perf_counter() - tick})


def compute_chunks(groups: list[tuple[int, tuple[str, ...]]], grid: Grid, n_days: int, params: ScdParams,
                   client: Any | None, *, decode_only: bool = False) -> np.ndarray:
    """The five outputs (5, height, width) uint16, one Dask task per chunk; `client` None runs in-process.
    `decode_only` reads every input once and computes nothing (the benchmark's floor, same tasks)."""
    import dask
    import dask.array as da

    kparams = (n_days, params.snow_min_value, params.min_snow_days)
    rows = [(r, min(r + CHUNK_ROWS, grid.height)) for r in range(0, grid.height, CHUNK_ROWS)]
    cols = [(c, min(c + CHUNK_COLS, grid.width)) for c in range(0, grid.width, CHUNK_COLS)]
    task = dask.delayed(_chunk, pure=True)
    blocks = [[da.from_delayed(task(groups, r0, r1, c0, c1, kparams, decode_only), (5, r1 - r0, c1 - c0),
                               np.uint16) for c0, c1 in cols] for r0, r1 in rows]
    array = da.block(blocks)
    if client is None:
        return array.compute(scheduler="sync")
    return client.compute(array).result()


def _day_groups(used: list[tuple[date, Path]], start: date) -> list[tuple[int, tuple[str, ...]]]:
    """Inputs grouped by day (days since `start`), in date order, paths in the order given."""
    groups: dict[int, list[str]] = {}
    for day, path in used:
        groups.setdefault(day.toordinal() - start.toordinal(), []).append(str(path))
    return [(d, tuple(paths)) for d, paths in sorted(groups.items())]


def _chunk(groups: list[tuple[int, tuple[str, ...]]], r0: int, r1: int, c0: int, c1: int,
           kparams: tuple[int, int, int], decode_only: bool = False) -> np.ndarray:
    """One chunk: every date's window block by block (512 × 512), then the kernel on that block."""
    h, w = r1 - r0, c1 - c0
    out = np.zeros((5, h, w), np.uint16)
    days = np.array([d for d, _ in groups], np.int32)
    with rasterio.Env(GDAL_NUM_THREADS=1, GDAL_CACHEMAX=16):
        datasets: list[list[Any]] = []
        try:
            for _, paths in groups:
                datasets.append([])
                for path in paths:
                    datasets[-1].append(open_raster(path, "snow map"))
            buf = np.empty((len(groups), h, min(BLOCK, w)), np.uint8)
            extra = np.empty((h, min(BLOCK, w)), np.uint8)
            for b0 in range(0, w, BLOCK):
                bw = min(BLOCK, w - b0)
                stack = buf[:, :, :bw] if bw == buf.shape[2] else np.empty((len(groups), h, bw), np.uint8)
                window = Window(c0 + b0, r0, bw, h)
                for t, same_day in enumerate(datasets):
                    same_day[0].read(1, window=window, out=stack[t])
                    for ds in same_day[1:]:  # same-day merge: the first valid value wins
                        more = extra[:, :bw] if bw == extra.shape[1] else np.empty((h, bw), np.uint8)
                        ds.read(1, window=window, out=more)
                        _merge(stack[t], more)
                if not decode_only:
                    _scd_block(stack, days, *kparams, out[:, :, b0:b0 + bw])
        finally:
            for same_day in datasets:
                for ds in same_day:
                    ds.close()
    return out


def scd_arrays(stack: np.ndarray, days: np.ndarray, n_days: int, params: ScdParams) -> np.ndarray:
    """The kernel on an in-memory (dates, rows, cols) uint8 stack with one date per plane (days since the start,
    increasing): (5, rows, cols) uint16 in `OUTPUTS` order. For tests and the kernel benchmark."""
    if stack.ndim != 3 or stack.shape[0] != len(days):
        raise ValueError("stack must be (dates, rows, cols) with one day per date")
    if len(days) > 1 and np.any(np.diff(days) <= 0):
        raise ValueError("days must be strictly increasing (merge same-day inputs first)")
    out = np.zeros((5, *stack.shape[1:]), np.uint16)
    _scd_block(np.ascontiguousarray(stack, np.uint8), np.asarray(days, np.int32), n_days, params.snow_min_value,
               params.min_snow_days, out)
    return out


def daily_snow(days: Sequence[int], values: Sequence[int], n_days: int, snow_min_value: int = 1) -> np.ndarray:
    """The gap-filled daily snow series (0/1, one value per day of the period) of one pixel, built day by day —
    the plain statement of the rule the kernel sums without building it (tests compare the two)."""
    obs = [(d, 1 if snow_min_value <= v <= 100 else 0) for d, v in zip(days, values) if v == 0 or
           snow_min_value <= v <= 100]
    series = np.zeros(n_days, np.uint8)
    if not obs:
        return series
    for t in range(n_days):
        before = [o for o in obs if o[0] <= t]
        after = [o for o in obs if o[0] >= t]
        if not before:
            series[t] = after[0][1]
        elif not after:
            series[t] = before[-1][1]
        else:
            (d0, v0), (d1, v1) = before[-1], after[0]
            value = v0 if d1 == d0 else v0 + (v1 - v0) * (t - d0) / (d1 - d0)
            series[t] = value >= 0.5
    return series


@numba.njit(nogil=True, cache=True)
def _merge(first, other):  # pragma: no cover
    """Same-day inputs: keep `first` where it is a valid observation (≤ 100), else take `other`."""
    h, w = first.shape
    for r in range(h):
        for c in range(w):
            if first[r, c] > 100:
                first[r, c] = other[r, c]


@numba.njit(nogil=True, cache=True, fastmath=True)
def _scd_block(stack, days, n_days, snow_min, min_snow_days, out):  # pragma: no cover
    """The five outputs of a (dates, rows, cols) block, strip by strip of `_STRIP` rows."""
    t_n, h, w = stack.shape
    n = _STRIP * w
    has = np.empty(n, np.int32)
    pd = np.empty(n, np.int32)
    pv = np.empty(n, np.int32)
    scd = np.empty(n, np.int32)
    run_open = np.empty(n, np.int32)
    run_start = np.empty(n, np.int32)
    run_end = np.empty(n, np.int32)
    best_len = np.empty(n, np.int32)
    best_start = np.empty(n, np.int32)
    nsp = np.empty(n, np.int32)
    nobs = np.empty(n, np.int32)
    last = np.int32(n_days - 1)
    for r0 in range(0, h, _STRIP):
        r1 = min(r0 + _STRIP, h)
        m = (r1 - r0) * w
        has[:m] = 0
        pd[:m] = _NONE
        pv[:m] = 0
        scd[:m] = 0
        run_open[:m] = 0
        run_start[:m] = 0
        run_end[:m] = 0
        best_len[:m] = 0
        best_start[:m] = 0
        nsp[:m] = 0
        nobs[:m] = 0
        for t in range(t_n):
            d = np.int32(days[t])
            plane = stack[t, r0:r1].reshape(m)
            for i in range(m):
                v = np.int32(plane[i])
                ok = np.int32(v <= 100) & (np.int32(v == 0) | np.int32(v >= snow_min))
                s = np.int32(v != 0)
                p = pd[i]
                q = pv[i] * has[i] + s * (1 - has[i])  # no previous value: the first one holds since the start
                # the gap (p, d]: value q up to day mid, then s; mid = d when q == s
                mid = d * (1 - (q ^ s)) + (q ^ s) * (p + q * ((d - p) >> 1) + (1 - q) * (((d - p + 1) >> 1) - 1))
                _emit(i, p, mid, q, ok, last, scd, run_open, run_start, run_end, best_len, best_start, nsp)
                _emit(i, mid, d, s, ok, last, scd, run_open, run_start, run_end, best_len, best_start, nsp)
                has[i] |= ok
                pd[i] = ok * d + (1 - ok) * p
                pv[i] = ok * s + (1 - ok) * pv[i]
                nobs[i] += ok
        for i in range(m):  # after the last observation its value holds to the end
            _emit(i, pd[i], last, pv[i], has[i], last, scd, run_open, run_start, run_end, best_len, best_start,
                  nsp)
            _emit(i, last, last + 1, 0, has[i], last + 1, scd, run_open, run_start, run_end, best_len, best_start,
                  nsp)  # a no-snow day past the end closes an open run
            r = r0 + i // w
            c = i % w
            long_enough = np.int32(scd[i] > min_snow_days)
            out[0, r, c] = scd[i]
            out[1, r, c] = best_start[i] * long_enough
            out[2, r, c] = (best_start[i] + best_len[i] - 1) * long_enough
            out[3, r, c] = nobs[i]
            out[4, r, c] = nsp[i]


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _emit(i, a, b, value, ok, last, scd, run_open, run_start, run_end, best_len, best_start, nsp):  # pragma: no cover
    """Days a+1 … b (clipped to 0 … last) have `value`: extend or open a snow run, or close the open one."""
    lo = max(a + 1, np.int32(0))
    hi = min(b, last)
    some = ok & np.int32(hi >= lo)
    e1 = some & value
    e0 = some & (1 - value)
    opened = run_open[i]
    scd[i] += e1 * (hi - lo + 1)
    closing = e0 & opened
    length = run_end[i] - run_start[i] + 1
    better = closing & np.int32(length > best_len[i])
    best_len[i] = better * length + (1 - better) * best_len[i]
    best_start[i] = better * run_start[i] + (1 - better) * best_start[i]
    nsp[i] += closing
    run_start[i] = e1 * (opened * run_start[i] + (1 - opened) * lo) + (1 - e1) * run_start[i]
    run_end[i] = e1 * hi + (1 - e1) * run_end[i]
    run_open[i] = e1 | (opened & (1 - e0))

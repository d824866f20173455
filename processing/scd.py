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

The kernel never builds the daily series: it walks each pixel's observations in date order; between two of them
the series switches at most once (on the midpoint), so a run of snow opens or closes there and is counted, clipped
to the period, when it closes — a cost per observation, not per day. It runs over one COG block (512 × 512) at a
time, in strips of 4096 pixels whose state (8 int16) stays in cache while every date is one branch-free vector
step (numba, 16-bit lanes), so memory is one block per date plus the outputs — flat in the number of dates in
practice (256 KiB per date). Chunks of 512 rows × 2048 columns are Dask tasks (`processing.raster_io.dask_client`):
in-process for small work, a LocalCluster or the configured scheduler otherwise.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
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
_STRIP_PIXELS = 4096  # pixels whose state (8 int16) stays in L1/L2 while every date streams through
_NONE = np.int16(-30000)  # "no observation yet" day (days are kept within ±10,000 of the start: int16)
_MAX_OPEN = 400  # cached open snow maps per process (one file descriptor each)
_DATASETS: OrderedDict[tuple[int, str], tuple[tuple[int, int, int], Any]] = OrderedDict()
WRITE_LEVEL = 1  # deflate level of the outputs: 2× faster than GDAL's default 6, files ~40 % larger (benchmarks.md)
MAX_DAYS = 3660  # longest period (10 years); with the margin, day offsets stay far from _NONE


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
        if not 0 <= params.date_margin_days <= 366 or not 1 <= params.snow_min_value <= 100 or not (
                0 <= params.min_snow_days <= MAX_DAYS):
            raise ParamsError(f"parameter set {name!r}: 0 ≤ date_margin_days ≤ 366, 1 ≤ snow_min_value ≤ 100, "
                              f"0 ≤ min_snow_days ≤ {MAX_DAYS}", "fix the file")
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
    if not 0 <= (stop - start).days < MAX_DAYS:
        raise RasterInputError(f"the period {start} – {stop} ends before it starts or lasts more than {MAX_DAYS} days",
                               "give start ≤ stop, at most ten years apart")
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
    files = {key: write_cog(out_dir / f"{pid}_{key}.tif", stack[i], grid, key, description=DESCRIPTIONS[key],
                            level=WRITE_LEVEL, own_overviews=True)
             for i, key in enumerate(OUTPUTS)}
    return ScdProduct(pid, tile.upper().removeprefix("T"), start, stop, out_dir, files, grid, n_days, used,
                      params.version, workers, {"compute": compute_s, "write": time.perf_counter() - tick})


def compute_chunks(groups: list[tuple[int, tuple[str, ...]]], grid: Grid, n_days: int, params: ScdParams,
                   client: Any | None, *, decode_only: bool = False) -> np.ndarray:
    """The five outputs (5, height, width) uint16, one Dask task per chunk; `client` None runs in-process.

    Each chunk's result is copied into the output as it arrives (no concatenation of the whole array).
    `decode_only` reads every input once and computes nothing (the benchmark's floor, same tasks)."""
    kparams = (n_days, params.snow_min_value, params.min_snow_days)
    windows = [(r, min(r + CHUNK_ROWS, grid.height), c, min(c + CHUNK_COLS, grid.width))
               for r in range(0, grid.height, CHUNK_ROWS) for c in range(0, grid.width, CHUNK_COLS)]
    out = np.empty((5, grid.height, grid.width), np.uint16)
    if client is None:
        try:
            for r0, r1, c0, c1 in windows:
                out[:, r0:r1, c0:c1] = _chunk(groups, r0, r1, c0, c1, kparams, decode_only)
        finally:
            release_datasets()
        return out
    futures = [client.submit(_chunk, groups, *w, kparams, decode_only, pure=False) for w in windows]
    try:
        for future, (r0, r1, c0, c1) in zip(futures, windows):
            out[:, r0:r1, c0:c1] = future.result()
            future.release()  # a chunk's result leaves the worker's memory once copied
    finally:
        client.run(release_datasets)
    return out


def _open_cached(path: str) -> Any:
    """A snow map opened once per worker thread and job (opening a COG costs ~3 ms, as much as decoding several
    of its blocks; a chunk reads every input), reopened if the file changed."""
    key = (threading.get_ident(), path)
    st = os.stat(path)
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _DATASETS.get(key)
    if hit is not None and hit[0] == ident:
        _DATASETS.move_to_end(key)
        return hit[1]
    if hit is not None:
        hit[1].close()
    ds = open_raster(path, "snow map")
    _DATASETS[key] = (ident, ds)
    while len(_DATASETS) > _MAX_OPEN:
        _, (_, old) = _DATASETS.popitem(last=False)
        old.close()
    return ds


def release_datasets() -> int:
    """Close every cached snow map of this process (at the end of a job, on every worker)."""
    count = len(_DATASETS)
    while _DATASETS:
        _, (_, ds) = _DATASETS.popitem()
        ds.close()
    return count


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
        datasets = [[_open_cached(path) for path in paths] for _, paths in groups]
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
    return out


def scd_arrays(stack: np.ndarray, days: np.ndarray, n_days: int, params: ScdParams) -> np.ndarray:
    """The kernel on an in-memory (dates, rows, cols) uint8 stack with one date per plane (days since the start,
    increasing): (5, rows, cols) uint16 in `OUTPUTS` order. For tests and the kernel benchmark."""
    if stack.ndim != 3 or stack.shape[0] != len(days):
        raise ValueError("stack must be (dates, rows, cols) with one day per date")
    if len(days) > 1 and np.any(np.diff(days) <= 0):
        raise ValueError("days must be strictly increasing (merge same-day inputs first)")
    if not 0 < n_days <= MAX_DAYS or (len(days) and (min(days) < -400 or max(days) > MAX_DAYS + 400)):
        raise ValueError(f"days and n_days must stay within the period ± 400 days, n_days ≤ {MAX_DAYS}")
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


@numba.njit(nogil=True, cache=True)
def _scd_block(stack, days, n_days, snow_min, min_snow_days, out):  # pragma: no cover
    """The five outputs of a (dates, rows, cols) block: for each strip of pixels, every date in order updates
    the per-pixel state (`_observe`, vectorised), then `_close` ends the open runs."""
    t_n, h, w = stack.shape
    rows = max(1, min(h, _STRIP_PIXELS // w))
    n = rows * w
    state = np.empty((8, n), np.int16)  # previous day, its value, run start, SCD, NSP, best length, best start, NOBS
    last = np.int16(n_days - 1)
    sm = np.int16(snow_min)
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        m = (r1 - r0) * w
        prev, value, start, scd = state[0, :m], state[1, :m], state[2, :m], state[3, :m]
        nsp, best, best_start, nobs = state[4, :m], state[5, :m], state[6, :m], state[7, :m]
        prev[:] = _NONE
        value[:] = 0
        start[:] = _NONE
        scd[:] = 0
        nsp[:] = 0
        best[:] = 0
        best_start[:] = 0
        nobs[:] = 0
        for t in range(t_n):
            plane = stack[t, r0:r1].reshape(m)
            if _any_observation(plane):  # under a cloud or off the swath the whole strip has nothing to update
                _observe(plane, np.int16(days[t]), last, sm, prev, value, start, scd, nsp, best, best_start, nobs)
        _close(last, prev, value, start, scd, nsp, best, best_start)
        for i in range(m):
            r = r0 + i // w
            c = i % w
            long_enough = scd[i] > min_snow_days
            out[0, r, c] = scd[i]
            out[1, r, c] = best_start[i] if long_enough else 0
            out[2, r, c] = best_start[i] + best[i] - 1 if long_enough else 0
            out[3, r, c] = nobs[i]
            out[4, r, c] = nsp[i]


@numba.njit(nogil=True, cache=True, fastmath=True)
def _any_observation(plane):  # pragma: no cover
    """Whether a strip of one date holds any value ≤ 100 (a vectorised count: cheaper than stopping early)."""
    n = 0
    for i in range(plane.shape[0]):
        n += plane[i] <= 100
    return n > 0


@numba.njit(nogil=True, cache=True, fastmath=True)
def _observe(plane, d, last, sm, prev, value, start, scd, nsp, best, best_start, nobs):  # pragma: no cover
    """One date over a strip of pixels. Between the previous observation (day p, value q) and this one (day d,
    value s) the gap-filled series switches at most once, on day m = p + ⌊(d − p + 1 − q) / 2⌋ + q (the first day
    of the new value: the midpoint day keeps the snow). A snow → no-snow switch closes the run [start, m − 1],
    counted clipped to the period; a no-snow → snow switch opens one at m. int16 lanes, no branch: vectorised.
    (numba widens int16 arithmetic to int64; every result is narrowed back so that LLVM keeps 16-bit lanes.)"""
    z, one, hundred = np.int16(0), np.int16(1), np.int16(100)
    for i in range(plane.shape[0]):
        v = np.int16(plane[i])
        ok = np.int16((v <= hundred) & ((v == z) | (v >= sm)))
        s = np.int16(v != z)
        p = prev[i]
        has = np.int16(p > _NONE)
        q = np.int16(s + np.int16(has * np.int16(value[i] - s)))  # the first observation holds since the start
        switch = np.int16(np.int16(ok & has) & np.int16(q ^ s))
        m = np.int16(np.int16(p + np.int16(np.int16(d - p + one - q) >> one)) + q)
        closing = np.int16(switch & q)
        opening = np.int16(switch & np.int16(one - q))
        run_start = start[i]
        a = max(run_start, z)
        length = np.int16(np.int16(min(np.int16(m - one), last) - a) + one)
        run = np.int16(closing & np.int16(length > z))
        scd[i] = np.int16(scd[i] + np.int16(run * length))
        nsp[i] = np.int16(nsp[i] + run)
        longest = best[i]
        better = np.int16(run & np.int16(length > longest))  # strictly: the first longest run wins ties
        best[i] = np.int16(longest + np.int16(better * np.int16(length - longest)))
        best_start[i] = np.int16(best_start[i] + np.int16(better * np.int16(a - best_start[i])))
        start[i] = np.int16(run_start + np.int16(opening * np.int16(m - run_start)))
        prev[i] = np.int16(p + np.int16(ok * np.int16(d - p)))
        value[i] = np.int16(q + np.int16(ok * np.int16(s - q)))
        nobs[i] = np.int16(nobs[i] + ok)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _close(last, prev, value, start, scd, nsp, best, best_start):  # pragma: no cover
    """After the last observation its value holds to the end: a run still open ends on the last day."""
    z, one = np.int16(0), np.int16(1)
    for i in range(prev.shape[0]):
        closing = np.int16(np.int16(prev[i] > _NONE) & value[i])
        a = max(start[i], z)
        length = np.int16(np.int16(last - a) + one)
        run = np.int16(closing & np.int16(length > z))
        scd[i] = np.int16(scd[i] + np.int16(run * length))
        nsp[i] = np.int16(nsp[i] + run)
        better = np.int16(run & np.int16(length > best[i]))
        best[i] = np.int16(best[i] + np.int16(better * np.int16(length - best[i])))
        best_start[i] = np.int16(best_start[i] + np.int16(better * np.int16(a - best_start[i])))

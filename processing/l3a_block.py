"""One block of the L3A synthesis, as a worker runs it: read every input date's window, fold it into the state,
write the block's outputs as plain GeoTIFF pieces.

A block is a window of whole 512-pixel COG blocks at both resolutions (512 R2 rows = 1024 R1 rows), so every input
block is decoded exactly once. Its state and read buffers (`GROUP_DATES` dates) are allocated once and reused for
every group of dates: memory per block does not depend on the number of dates. Datasets stay open per worker
thread (a small LRU), so a worker running many blocks opens each input once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from processing.l3a_kernel import NODATA, axis_samples, blue_at_half, finish, halve_mean, update
from processing.l3a_weights import CoarseGrid
from processing.raster_io import RasterInputError

GROUPS = {"R1": (("B2", "B3", "B4", "B8"), 10.0, 2), "R2": (("B5", "B6", "B7", "B8A", "B11", "B12"), 20.0, 1)}
READ_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_PAM_ENABLED": "NO"}
OPEN_CACHE = 512
GROUP_DATES = 4  # dates read, then folded together: the state crosses memory once per group
BLOCK_CACHE = 128 << 20  # GDAL's block cache (bytes) while a block runs: each input block is decoded once, so a
# larger cache (GDAL's default is 5 % of RAM per process) would only hold dead blocks
_open: OrderedDict = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class DateInput:
    """One input date as a block needs it (plain values: it travels to Dask workers)."""

    product_id: str
    files: dict[str, str]  # FRE_*, CLM_R1/R2, MG2_R1/R2, ATB_R1/R2 → path
    day: int  # days from the synthesis date
    w_date: float
    correct: bool  # apply the directional correction


@dataclass(frozen=True)
class DateGrids:
    cloud: CoarseGrid  # W_cloud at 240 m (both groups)
    factors: dict[str, CoarseGrid]  # group → directional factors (bands, rows, cols)
    angles: str = "none"  # where the angles came from: "grids", "means" or "none"


@dataclass(frozen=True)
class KernelParams:
    cloud_bits: int
    aot_scale: float
    aot_max: float
    w_min: float
    w_max: float


@dataclass(frozen=True)
class BlockTask:
    index: int
    row0: int  # R2 pixels
    rows: int
    col0: int
    cols: int
    scratch: str  # folder of the pieces (shared by the workers)
    crs: str
    transform_r2: tuple[float, ...]  # affine a, b, c, d, e, f of the R2 grid
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # group → overview factors the block makes


@dataclass(frozen=True)
class BlockOutput:
    index: int
    # group → factor (1: full resolution, then the overviews) → (int16 piece: FRC…, WGT, DTS; uint8: FLG, NOBS)
    pieces: dict[str, dict[int, tuple[str, str]]]
    window: tuple[int, int, int, int]  # R2 row0, rows, col0, cols
    flag_counts: tuple[int, ...]  # FLG 0..4 over the block's R2 pixels


def _dataset(path: str) -> rasterio.io.DatasetReader:
    """An open input, kept per worker thread (datasets are not thread-safe) and per file identity (a replaced file
    is opened again), in a bounded LRU shared by the process so that `close_datasets` reaches every thread's."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RasterInputError(f"cannot open the L3A input {path}: {exc}", "check the L2A's published files") from exc
    key = (threading.get_ident(), path, st.st_ino, st.st_mtime_ns)
    with _lock:
        ds = _open.get(key)
        if ds is not None and not ds.closed:
            _open.move_to_end(key)
            return ds
    try:
        with rasterio.Env(**READ_ENV):
            ds = rasterio.open(path)
    except RasterioError as exc:
        raise RasterInputError(f"cannot open the L3A input {path}: {exc}", "check the L2A's published files") from exc
    with _lock:
        _open[key] = ds
        while len(_open) > OPEN_CACHE:
            _open.popitem(last=False)[1].close()
    return ds


def close_datasets(paths: Collection[str] | None = None) -> None:
    """Close the inputs this process keeps open (those of `paths`, or all): the end of a synthesis, on a long-lived
    worker that other jobs may share."""
    with _lock:
        for key in [k for k in _open if paths is None or k[1] in paths]:
            _open.pop(key).close()


def _read(path: str, band: int, window: Window, out: np.ndarray) -> None:
    try:
        _dataset(path).read(band, window=window, out=out)
    except RasterioError as exc:
        raise RasterInputError(f"cannot read {Path(path).name} at {window}: {exc}",
                               "the file is damaged: re-ingest the L2A") from exc


class _Group:
    """State and read buffers (one slot per date of a group) of one resolution group of a block."""

    def __init__(self, name: str, task: BlockTask, slots: int) -> None:
        self.name = name
        self.bands, self.resolution, self.scale = GROUPS[name]
        self.row0, self.col0 = task.row0 * self.scale, task.col0 * self.scale
        self.rows, self.cols = task.rows * self.scale, task.cols * self.scale
        shape, nb = (self.rows, self.cols), len(self.bands)
        self.window = Window(self.col0, self.row0, self.cols, self.rows)
        self.refl = np.empty((slots, nb, *shape), np.int16)
        self.clm, self.mg2, self.aot = (np.empty((slots, *shape), np.uint8) for _ in range(3))
        self.acc = np.zeros((nb, *shape), np.float32)
        self.wsum, self.dsum = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.blue = np.full(shape, np.inf, np.float32)
        self.flag, self.nobs = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        # the blue of the cloud rule: B2 itself at 10 m, B2 averaged to 20 m for the 20 m bands
        self.blue_now = np.empty((slots, *shape), np.float32) if name == "R2" else self.refl[:, 0]
        self._axes: dict[tuple, tuple] = {}

    def read(self, date: DateInput, slot: int) -> None:
        for i, band in enumerate(self.bands):
            _read(date.files[f"FRE_{band}"], 1, self.window, self.refl[slot, i])
        _read(date.files[f"CLM_{self.name}"], 1, self.window, self.clm[slot])
        _read(date.files[f"MG2_{self.name}"], 1, self.window, self.mg2[slot])
        _read(date.files[f"ATB_{self.name}"], 2, self.window, self.aot[slot])

    def axes(self, grid: CoarseGrid) -> tuple:
        """Row and column interpolation tables for a coarse grid (cached per grid geometry)."""
        rows, cols = grid.values.shape[-2:]
        key = (grid.step, grid.offset, rows, cols)
        if key not in self._axes:
            self._axes[key] = (*axis_samples(self.row0, self.rows, self.resolution, grid.step, grid.offset, rows),
                               *axis_samples(self.col0, self.cols, self.resolution, grid.step, grid.offset, cols))
        return self._axes[key]

    def fold(self, dates: Sequence[DateInput], grids: Sequence[DateGrids], kp: KernelParams) -> None:
        """Fold the dates held in the first len(dates) slots."""
        clouds = np.stack([g.cloud.values for g in grids])
        factors = np.stack([g.factors[self.name].values for g in grids])
        cy0, cy1, cfy, cx0, cx1, cfx = self.axes(grids[0].cloud)
        fy0, fy1, ffy, fx0, fx1, ffx = self.axes(grids[0].factors[self.name])
        update(self.refl, self.clm, self.mg2, self.aot, self.blue_now, len(dates), kp.cloud_bits,
               clouds, cy0, cy1, cfy, cx0, cx1, cfx,
               factors, fy0, fy1, ffy, fx0, fx1, ffx, np.array([d.correct for d in dates]),
               np.array([d.w_date for d in dates], np.float64), np.array([d.day for d in dates], np.int64),
               kp.aot_scale, kp.aot_max, kp.w_min, kp.w_max,
               self.acc, self.wsum, self.dsum, self.blue, self.flag, self.nobs)

    def write(self, task: BlockTask) -> dict[int, tuple[str, str]]:
        """The block's outputs and their overview levels (`task.levels`), as plain GeoTIFF pieces.

        Overviews are made here from the block's own pixels (a block is a whole number of overview pixels), so the
        COG driver only copies them: averaged for reflectance, weight and date, nearest for flags and counts."""
        nb = len(self.bands)
        out16 = np.empty((nb + 2, self.rows, self.cols), np.int16)
        finish(self.acc, self.wsum, self.dsum, self.flag, out16[:nb], out16[nb], out16[nb + 1])
        out8 = np.stack([self.flag, self.nobs])
        pieces = {1: self._piece(task, 1, out16, out8)}
        factor = 1
        for level in task.levels.get(self.name, ()):
            while factor < level:
                half = np.empty((nb + 2, -(-out16.shape[1] // 2), -(-out16.shape[2] // 2)), np.int16)
                halve_mean(out16, half)
                out16, out8, factor = half, np.ascontiguousarray(out8[:, ::2, ::2]), factor * 2
            pieces[level] = self._piece(task, level, out16, out8)
        return pieces

    def _piece(self, task: BlockTask, factor: int, out16: np.ndarray, out8: np.ndarray) -> tuple[str, str]:
        a, b, c, d, e, f = task.transform_r2
        s = self.scale / factor
        transform = rasterio.Affine(a / s, b, c + a * task.col0, d, e / s, f + e * task.row0)
        base = Path(task.scratch) / f"{task.index:05d}_{self.name}_{factor}"
        profile = dict(driver="GTiff", width=out16.shape[2], height=out16.shape[1], crs=task.crs,
                       transform=transform, interleave="band", tiled=True, blockxsize=512, blockysize=512)
        with rasterio.Env(**READ_ENV):
            with rasterio.open(f"{base}_i16.tif", "w", count=out16.shape[0], dtype="int16", nodata=NODATA,
                               **profile) as ds:
                ds.write(out16)
            with rasterio.open(f"{base}_u8.tif", "w", count=2, dtype="uint8", **profile) as ds:
                ds.write(out8)
        return f"{base}_i16.tif", f"{base}_u8.tif"


def overview_factors(width: int, height: int, block: int = 512) -> list[int]:
    """2, 4, 8 … until the overview fits in one block: the levels GDAL's COG driver makes with OVERVIEWS=AUTO."""
    factors, factor = [], 1
    while -(-max(width, height) // factor) > block:
        factor *= 2
        factors.append(factor)
    return factors


def run_block(task: BlockTask, dates: Sequence[DateInput], grids: Sequence[DateGrids], kp: KernelParams,
              group: int = GROUP_DATES) -> BlockOutput:
    """Synthesize one block over every date (in the given order, as WASP folds them) and write its pieces.

    Dates are read `group` at a time into the block's buffers, then folded together (memory: the state plus
    `group` dates, whatever the number of dates)."""
    slots = max(1, min(group, len(dates)))
    r1, r2 = _Group("R1", task, slots), _Group("R2", task, slots)
    with rasterio.Env(GDAL_CACHEMAX=BLOCK_CACHE):
        for start in range(0, len(dates), slots):
            chunk, chunk_grids = dates[start:start + slots], grids[start:start + slots]
            for slot, date in enumerate(chunk):
                r1.read(date, slot)
                r2.read(date, slot)
                blue_at_half(r1.refl[slot, 0], r2.blue_now[slot])
            r1.fold(chunk, chunk_grids, kp)
            r2.fold(chunk, chunk_grids, kp)
        pieces = {"R1": r1.write(task), "R2": r2.write(task)}
    counts = np.bincount(r2.flag.ravel(), minlength=5)[:5]
    return BlockOutput(task.index, pieces, (task.row0, task.rows, task.col0, task.cols),
                       tuple(int(x) for x in counts))

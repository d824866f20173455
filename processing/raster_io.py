"""Raster I/O shared by the derived products: grids, row-strip windows, checksummed COG writing, and the Dask
client the chunked work runs on.

Why here: snow, SCD and L3A all read COGs strip by strip and write their outputs the way ingest writes L2A assets
(GDAL's COG driver with `ingest.cog.cog_options`, `file:checksum` from `ingest.checksum`), so a derived asset is
indistinguishable in layout from an ingested one and publishes through the same `catalog.publish` path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.shutil import copy as gdal_copy
from rasterio.windows import Window

from catalog.collections import COG
from catalog.errors import LandsurfError
from ingest.checksum import multihash
from ingest.cog import cog_options, is_continuous
from ingest.model import CogFile
from processing.settings import ProcessingSettings

if TYPE_CHECKING:
    from distributed import Client

BLOCK = 512  # the COG block size of every landsurf raster: strips of whole blocks decode each block once


class RasterInputError(LandsurfError):
    """An input raster is missing, unreadable, or not on the grid the product needs."""

    exit_code = 6


@dataclass(frozen=True)
class Grid:
    """Where a raster's pixels are: size, affine transform and CRS (as WKT or `EPSG:n`)."""

    width: int
    height: int
    transform: Affine
    crs: str

    @property
    def epsg(self) -> int | None:
        return rasterio.crs.CRS.from_user_input(self.crs).to_epsg()

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    def scaled(self, factor: int) -> "Grid":
        """The same footprint with pixels `factor` times smaller (R2 → R1: 2)."""
        t = self.transform
        return Grid(self.width * factor, self.height * factor,
                    Affine(t.a / factor, t.b, t.c, t.d, t.e / factor, t.f), self.crs)

    def matches(self, other: "Grid", tolerance: float = 1e-6) -> bool:
        return (self.width, self.height) == (other.width, other.height) and self.transform.almost_equals(
            other.transform, tolerance) and _same_crs(self.crs, other.crs)


def _same_crs(a: str, b: str) -> bool:
    return a == b or rasterio.crs.CRS.from_user_input(a) == rasterio.crs.CRS.from_user_input(b)


def grid_of(path: Path | str, what: str = "raster") -> Grid:
    """The grid of a raster file; a missing or unreadable file is a `RasterInputError` naming `what`."""
    with open_raster(path, what) as ds:
        return dataset_grid(ds, what)


def open_raster(path: Path | str, what: str = "raster", **options: str) -> rasterio.DatasetReader:
    """Open a raster for reading (GDAL open `options`, e.g. NUM_THREADS), without listing its folder (a product
    folder or a store directory may hold thousands of files and no sidecar of ours); errors name `what`."""
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            return rasterio.open(path, **options)
    except RasterioError as exc:
        raise RasterInputError(f"cannot open the {what} {path}: {exc}", "check the file exists and is a GeoTIFF"
                               ) from exc


def dataset_grid(ds: rasterio.DatasetReader, what: str = "raster") -> Grid:
    """The grid of an open dataset; no CRS is a `RasterInputError`."""
    if ds.crs is None:
        raise RasterInputError(f"the {what} {ds.name} has no CRS", "give a georeferenced GeoTIFF")
    crs = f"EPSG:{ds.crs.to_epsg()}" if ds.crs.to_epsg() else ds.crs.to_wkt()
    return Grid(ds.width, ds.height, ds.transform, crs)


def require_grid(path: Path | str | rasterio.DatasetReader, expected: Grid, what: str) -> None:
    """Refuse `path` (or an open dataset) unless it lies exactly on `expected` (same size, transform, CRS)."""
    got = dataset_grid(path, what) if isinstance(path, rasterio.DatasetReader) else grid_of(path, what)
    if not got.matches(expected):
        name = Path(getattr(path, "name", path)).name
        raise RasterInputError(
            f"the {what} {name} is {got.width}×{got.height} at {got.transform.c:.0f},"
            f"{got.transform.f:.0f} ({got.resolution:g} m, {got.crs}), not on the product's grid "
            f"{expected.width}×{expected.height} at {expected.transform.c:.0f},{expected.transform.f:.0f} "
            f"({expected.resolution:g} m, {expected.crs})",
            "give the files of one product (or a DEM registered for this tile)")


def strips(height: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges `[start, stop)` of `rows` rows (the last one shorter) covering `height`."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def read_rows(path: Path | str, start: int, stop: int, *, band: int = 1, dtype: str | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Rows `[start, stop)` of one band, whole width."""
    with rasterio.open(path) as ds:
        window = Window(0, start, ds.width, stop - start)
        return ds.read(band, window=window, out=out, out_dtype=dtype)


def write_cog(path: Path, array: np.ndarray, grid: Grid, key: str, *, nodata: float | None = None,
              description: str | None = None, threads: str = "ALL_CPUS", level: int | None = None,
              own_overviews: bool = False) -> CogFile:
    """A single-band COG of `array` at `path` (created, never overwritten), fsync'd, with its multihash.

    GDAL's COG driver and the options of every landsurf asset (`ingest.cog.cog_options(key)`: deflate, 512 blocks,
    overviews; `key` decides predictor and overview resampling). `level` sets the deflate level (GDAL's default 6
    when None). `own_overviews` (nearest-resampled keys only) makes the overview levels here from the array, the
    same pixels as the driver would pick (`nearest_overviews`), and hands them to the driver with the array (a VRT
    in GDAL's memory filesystem): it copies them instead of resampling through a compressed temporary file —
    measured 2× faster on the SCD outputs, identical values at every level.
    """
    if array.shape != (grid.height, grid.width):
        raise ValueError(f"array {array.shape} does not fit the grid {grid.height}×{grid.width}")
    if path.exists():
        raise FileExistsError(f"{path} exists: a derived file is written once")
    if own_overviews and is_continuous(key):
        raise ValueError(f"{key} is averaged in overviews: own_overviews is for nearest-resampled keys")
    part = path.with_name(f".{path.name}.part")
    options = cog_options(key, threads=threads) | ({"LEVEL": str(level)} if level is not None else {})
    levels = [np.ascontiguousarray(array), *(nearest_overviews(array) if own_overviews else [])]
    try:
        with rasterio.Env(GDAL_MEM_ENABLE_OPEN="YES"):  # only our own pointers, alive in `levels` meanwhile
            gdal_copy(_vrt_of_arrays(levels, grid, nodata, description), str(part), driver="COG", **options)
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        os.link(part, path)  # O_EXCL for a file GDAL created: fails if `path` appeared meanwhile
    finally:
        part.unlink(missing_ok=True)
    return CogFile(key=key, path=path, size=path.stat().st_size, checksum=multihash(path), media_type=COG)


def nearest_overviews(array: np.ndarray, block: int = BLOCK) -> list[np.ndarray]:
    """The overview levels GDAL's COG driver makes with OVERVIEWS=AUTO and NEAREST: each level half the previous
    one (sizes rounded down) until it fits in one block, each pixel the previous level's pixel at
    int(0.5 + i × ratio) (GDAL's nearest resampling; checked level by level against the driver's own output).
    An even side halves exactly (ratio 2: every other pixel, a strided copy); an odd one needs the index list."""
    out, prev = [], array
    while max(prev.shape) > block:
        h, w = max(prev.shape[0] // 2, 1), max(prev.shape[1] // 2, 1)
        rows = slice(None, 2 * h, 2) if prev.shape[0] == 2 * h else \
            (0.5 + np.arange(h) * (prev.shape[0] / h)).astype(np.intp)
        cols = slice(None, 2 * w, 2) if prev.shape[1] == 2 * w else \
            (0.5 + np.arange(w) * (prev.shape[1] / w)).astype(np.intp)
        prev = np.ascontiguousarray(prev[rows][:, cols])
        out.append(prev)
    return out


def _vrt_of_arrays(levels: Sequence[np.ndarray], grid: Grid, nodata: float | None, description: str | None) -> str:
    """A VRT of the full-resolution array (levels[0]) with the others as its overviews, each read in place by
    GDAL's MEM driver (`MEM:::DATAPOINTER`): the COG driver reads the caller's memory, no copy into a GeoTIFF in
    memory first (that copy cost more than the compression of the SCD outputs; the files are byte-identical)."""
    t = grid.transform
    array = levels[0]
    dtype = gdal_dtype_name(array.dtype)
    height, width = array.shape

    def name(a: np.ndarray) -> str:
        if not a.flags.c_contiguous:
            raise ValueError("MEM::: needs a C-contiguous array")
        return escape(f"MEM:::DATAPOINTER={a.__array_interface__['data'][0]},PIXELS={a.shape[1]},"
                      f"LINES={a.shape[0]},BANDS=1,DATATYPE={gdal_dtype_name(a.dtype)}")

    ovr = "".join(f'<Overview><SourceFilename relativeToVRT="0">{name(a)}</SourceFilename>'
                  "<SourceBand>1</SourceBand></Overview>" for a in levels[1:])
    nd = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
    desc = f"<Description>{escape(description)}</Description>" if description else ""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
            f"<SRS>{escape(rasterio.crs.CRS.from_user_input(grid.crs).to_wkt())}</SRS>"
            f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
            f'<VRTRasterBand dataType="{dtype}" band="1">{desc}{nd}'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{name(array)}</SourceFilename>'
            f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/></SimpleSource>{ovr}</VRTRasterBand>'
            "</VRTDataset>")


def gdal_dtype_name(dtype: np.dtype) -> str:
    """GDAL's name of a numpy data type (VRT `dataType`)."""
    names = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
             "int32": "Int32", "float32": "Float32", "float64": "Float64"}
    return names[np.dtype(dtype).name]


def write_bytes(path: Path, data: bytes, key: str, media_type: str) -> CogFile:
    """A small sidecar (metadata XML …), created exclusively, fsync'd, with its multihash."""
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return CogFile(key=key, path=path, size=len(data), checksum=multihash(path), media_type=media_type)


@contextmanager
def dask_client(settings: ProcessingSettings, work: int) -> Iterator["Client | None"]:
    """The Dask client chunked work runs on, or None to run it in-process.

    A scheduler address (`LANDSURF_PROCESSING_DASK_SCHEDULER`) always wins: the work leaves the machine (the files
    must then be readable by the workers at the same paths). Otherwise `work` (pixel-dates, or any measure of the
    job's size) below `dask_min_work` runs in-process — starting a cluster costs ~1–2 s, more than a small job —
    and larger work starts a `LocalCluster` of `dask_workers` processes (threads with `dask_processes` false) × 1
    thread for the job.
    """
    if settings.dask_scheduler:
        from distributed import Client

        with Client(settings.dask_scheduler, timeout="30s", set_as_default=False) as client:
            yield client
    elif work < settings.dask_min_work:
        yield None
    else:
        from distributed import Client, LocalCluster

        one_thread = {"env": {"GDAL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}} if settings.dask_processes else {}
        with untrimmed_workers(), LocalCluster(n_workers=settings.dask_workers, threads_per_worker=1,
                                               processes=settings.dask_processes, dashboard_address=":0",
                                               **one_thread) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client


@contextmanager
def untrimmed_workers() -> Iterator[None]:
    """Worker processes started inside this block run without distributed's default MALLOC_TRIM_THRESHOLD_=65536
    (its nanny sets it before a worker spawns, also into this process's environment; `env=` comes too late).

    Why: that threshold also freezes glibc's mmap threshold at 128 KiB, so every 256 KiB block GDAL decodes is a
    fresh mmap, page-faulted and returned: decoding the SCD's 70 snow maps costs 2.5× the CPU of a plain process
    (3.0 s against 1.2 s, measured in the same run), and a second worker barely helps. Memory is still returned
    to the system when arrays are freed (large ones are mmapped).
    """
    import dask

    inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


def same_grids(paths: Sequence[Path], what: str) -> Grid:
    """The common grid of several rasters (e.g. the snow maps of one tile); the first differing one is refused."""
    if not paths:
        raise RasterInputError(f"no {what} given", "give at least one file")
    first = grid_of(paths[0], what)
    for path in paths[1:]:
        require_grid(path, first, what)
    return first

"""LIS-like snow map of one Sentinel-2 L2A at 20 m (shared/spec products.md §2): codes 0 no snow, 100 snow,
205 cloud, 254 no-data (Theia SNW_R2 V1), with the snowline ZS and the snow and cloud percentages.

The algorithm is LIS 1.5's: pass 0 (L2A clouds, red at 240 m), pass 1 (NDSI > 0.40, red > 0.20 outside clouds),
the snowline z_s from the DEM histogram (lowest 100 m bin with > 10 % clear pixels of which > 10 % snow, minus two
bins), pass 2 (NDSI > 0.15, red > 0.04 above z_s, outside the refined clouds). Where it differs, on purpose:
* green and red go from 10 to 20 m by the mean of the four 10 m pixels (the 20 m pixel's exact footprint on the
  aligned S2 grids), not LIS's cubic resampling; the 240 m red is the mean of the valid 10 m red pixels of each
  240 m block (LIS: bilinear decimation) — both average the same area, without ringing at cloud edges;
* no-data pixels (SWIR no-data, or all four 10 m green/red pixels no-data) and DEM no-data are left out of the
  snowline histogram and of the percentages (LIS counts the former as clear no-snow).
Without a DEM (`SnowInputs.dem = None`) there is no snowline and no pass 2: the **pass-1-only mode**, ZS = −1,
recorded as `SnowProduct.pass1_only` so that the item says so. It misses thin and patchy snow near the snowline
and snow under thin dark clouds (those pixels end 0 or 205); it never adds snow (§2.2 "No-DEM simplification").
A DEM whose snowline is not found (too cloudy, no snow) also keeps pass 1 only, as LIS does (`pass2 = False`).

Inputs are read in strips of whole COG blocks (a multiple of 12 rows too) while the previous strip is classified
(GDAL decodes in threads, the numba kernels release the GIL), so the map costs little more than decoding its
inputs once; memory is the 20 m state and DEM (3 bytes a pixel) plus two strips.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numba
import numpy as np
import rasterio
from rasterio.windows import Window

from catalog import __version__
from ingest.model import CogFile, CogSet
from processing.params import ParamsError, check_keys, load_params
from processing.raster_io import (BLOCK, Grid, RasterInputError, dataset_grid, grid_of, open_raster, require_grid,
                                  write_bytes, write_cog)

NO_SNOW, SNOW, CLOUD, NODATA = 0, 100, 205, 254
DEM_NODATA = -32768
SNW_KEY, METADATA_KEY = "SNW_R2", "metadata"
# state bits between the passes: 1 pass-1 snow, 2 pass-2 candidate (below z_s or not), 4 cloud unless snow, 8 no-data
_NODATA = 8
_HIST = 65536  # one bin per metre of an int16 DEM
READ_CACHE_MB = 64  # GDAL block cache while reading strips (default 5 % of RAM would just fill up)


@dataclass(frozen=True)
class SnowParams:
    """A snow parameter set (`processing/params/snow.toml`); `version` is its hash."""

    reflectance_scale: float
    reflectance_nodata: int
    red_backtocloud: float
    red_darkcloud: float
    rf: int
    shadow_bits: int
    high_cloud_bits: int
    ndsi_pass1: float
    red_pass1: float
    dz: int
    fclear_lim: float
    fsnow_lim: float
    fsnow_total_lim: float
    ndsi_pass2: float
    red_pass2: float
    water_mask: bool
    version: str = field(default="", compare=False)
    name: str = field(default="snow", compare=False)

    @classmethod
    def load(cls, name: str = "snow", directory: Path | None = None) -> "SnowParams":
        values, version = load_params(name, directory)
        return cls.from_dict(values, version, name)

    @classmethod
    def from_dict(cls, values: dict[str, Any], version: str = "", name: str = "snow") -> "SnowParams":
        keys = {f.name for f in fields(cls)} - {"version", "name"}
        check_keys(name, values, keys)
        params = cls(**values, version=version, name=name)
        if params.rf < 1 or params.dz < 1 or params.reflectance_scale <= 0:
            raise ParamsError(f"parameter set {name!r}: rf, dz and reflectance_scale must be positive",
                              "fix the file")
        return params

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("version", "name")}


@dataclass(frozen=True)
class SnowInputs:
    """The files a snow map reads: L2A FRE green, red (10 m) and SWIR (20 m), CLM_R2, optionally MG2_R2, and the
    tile's DEM (int16 metres, on the 20 m grid or a larger aligned 20 m grid such as the registered tile DEM) or
    None for the pass-1-only mode."""

    l2a_id: str
    green: Path  # FRE_B3
    red: Path  # FRE_B4
    swir: Path  # FRE_B11
    clm: Path  # CLM_R2
    dem: Path | None
    mg2: Path | None = None  # MG2_R2 (only read with `water_mask`)

    @classmethod
    def from_product_dir(cls, directory: Path, l2a_id: str, dem: Path | None) -> "SnowInputs":
        """The inputs of an L2A in a published (flat `<ID>_<KEY>.tif`) or MUSCATE (`MASKS/`) folder."""
        def find(key: str) -> Path | None:
            for candidate in (directory / f"{l2a_id}_{key}.tif", directory / "MASKS" / f"{l2a_id}_{key}.tif"):
                if candidate.is_file():
                    return candidate
            return None

        found = {key: find(key) for key in ("FRE_B3", "FRE_B4", "FRE_B11", "CLM_R2", "MG2_R2")}
        missing = [k for k, v in found.items() if v is None and k != "MG2_R2"]
        if missing:
            raise RasterInputError(f"{l2a_id}: no {', '.join(missing)} in {directory}",
                                   "give the folder of a complete L2A product")
        return cls(l2a_id, found["FRE_B3"], found["FRE_B4"], found["FRE_B11"], found["CLM_R2"], dem,
                   found["MG2_R2"])


@dataclass(frozen=True)
class SnowProduct:
    """A written snow map: its files (staged in `directory`) and what the item records."""

    product_id: str
    l2a_id: str
    directory: Path
    files: dict[str, CogFile]  # SNW_R2 (COG) and metadata (XML)
    grid: Grid
    zs: int  # snowline (m), −1 when none (pass-1-only, or not found)
    snow_percent: float  # of non-no-data pixels
    cloud_percent: float  # of non-no-data pixels
    pass1_only: bool  # no DEM was given: the documented pass-1-only mode
    pass2: bool  # pass 2 ran (a DEM and a snowline were found and enough pass-1 snow)
    params_version: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read_and_pass1 (overlapped), kernels, write

    @property
    def cogs(self) -> CogSet:
        return CogSet(staging=self.directory, files=self.files)


def snow_product_id(l2a_id: str, version: str = "1-0") -> str:
    """`SENTINEL2B_20180828-103013-461_L2A_T31TGL_C_V1-0` → `…_L2B-SNOW_T31TGL_C_V<version>` (Theia naming)."""
    parts = l2a_id.split("_")
    if len(parts) != 6 or parts[2] != "L2A":
        raise RasterInputError(f"{l2a_id!r} is not a MUSCATE L2A identifier", "give the L2A's PRODUCT_ID")
    return "_".join([parts[0], parts[1], "L2B-SNOW", parts[3], parts[4], "V" + version.replace(".", "-")])


def snow_map(inputs: SnowInputs, params: SnowParams, out_dir: Path, *, product_id: str | None = None,
             threads: str = "ALL_CPUS") -> SnowProduct:
    """Classify one L2A into `out_dir/<product_id>_SNW_R2.tif` (+ `_MTD_ALL.xml`); `out_dir` is a staging
    directory (created; files are never overwritten)."""
    pid = product_id or snow_product_id(inputs.l2a_id)
    clock = time.perf_counter()
    opened: dict[str, Any] = {}
    try:
        grid, dem_win = _open_inputs(inputs, params, threads, opened)
        state, dem, hist, counts, kernel_s = _pass1(opened, params, grid, dem_win)
    finally:
        for ds in opened.values():
            ds.close()
    pass1_s = time.perf_counter() - clock
    tick = time.perf_counter()
    zs = snowline(hist, params) if dem is not None else None
    valid, snow1 = int(counts[0]), int(counts[1])
    pass2 = zs is not None and valid > 0 and snow1 / valid > params.fsnow_total_lim
    totals = np.zeros(2, np.int64)
    _finish(state, dem if dem is not None else np.zeros((0, 0), np.int16), np.int32(zs or 0), pass2, totals)
    codes = state
    kernel_s += time.perf_counter() - tick
    tick = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    snow_pct = round(100 * int(totals[0]) / valid, 2) if valid else 0.0
    cloud_pct = round(100 * int(totals[1]) / valid, 2) if valid else 0.0
    files = {SNW_KEY: write_cog(out_dir / f"{pid}_{SNW_KEY}.tif", codes, grid, SNW_KEY, nodata=NODATA,
                                description="snow: 0 no snow, 100 snow, 205 cloud, 254 no-data", threads=threads,
                                own_overviews=True)}  # the same file, 2× faster (write_cog)
    product = SnowProduct(pid, inputs.l2a_id, out_dir, files, grid, zs if zs is not None else -1, snow_pct,
                          cloud_pct, inputs.dem is None, pass2, params.version)
    files[METADATA_KEY] = write_bytes(out_dir / f"{pid}_MTD_ALL.xml", metadata_xml(product, params), METADATA_KEY,
                                      "application/xml")
    product.timings.update(read_and_pass1=pass1_s, kernels=kernel_s, write=time.perf_counter() - tick)
    return product


def snowline(hist: np.ndarray, params: SnowParams) -> int | None:
    """z_s from the per-metre histograms (clear no-snow, snow, cloud) of the valid DEM pixels, or None.

    Bins of `dz` from the lowest elevation; the lowest bin with a clear share > `fclear_lim` and a snow share of
    its clear pixels > `fsnow_lim` is found, and z_s is the lower edge of the bin two below it (LIS's i − 2)."""
    present = np.flatnonzero(hist.sum(axis=0))
    if present.size == 0:
        return None
    lo, hi = int(present[0]), int(present[-1])
    edges = np.arange(lo, hi + 1, params.dz)
    nosnow, snow, cloud = (np.add.reduceat(h[lo:hi + 1], edges - lo) for h in hist)
    tot = nosnow + snow + cloud
    clear = nosnow + snow
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (tot > 0) & (clear / np.maximum(tot, 1) > params.fclear_lim) & (
            snow / np.maximum(clear, 1) > params.fsnow_lim)
    found = np.flatnonzero(ok)
    if found.size == 0:
        return None
    return lo - (_HIST // 2) + max(int(found[0]) - 2, 0) * params.dz


def classify(green: np.ndarray, red: np.ndarray, swir: np.ndarray, clm: np.ndarray, dem: np.ndarray | None,
             params: SnowParams, mg2: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The whole algorithm on in-memory arrays (green/red at 10 m, the rest at 20 m): codes and z_s (−1 if none).
    The kernels of `snow_map`, without the I/O (tests and the kernel benchmark)."""
    state = np.empty(swir.shape, np.uint8)
    hist = np.zeros((3, _HIST), np.int64)
    counts = np.zeros(2, np.int64)
    _classify_strip(green, red, swir, clm, *_optional(mg2, dem), state, hist, counts, *_kernel_params(params))
    zs = snowline(hist, params) if dem is not None else None
    pass2 = zs is not None and counts[0] > 0 and counts[1] / counts[0] > params.fsnow_total_lim
    _finish(state, dem if dem is not None else np.zeros((0, 0), np.int16), np.int32(zs or 0), pass2,
            np.zeros(2, np.int64))
    return state, zs if zs is not None else -1


def metadata_xml(product: SnowProduct, params: SnowParams) -> bytes:
    """LIS's METADATA.XML fields (source product, ZS, SnowPercent, CloudPercent) and how it was made."""
    root = ET.Element("Muscate_Metadata_Document")
    chars = ET.SubElement(root, "Product_Characteristics")
    for tag, text in (("PRODUCT_ID", product.product_id), ("PRODUCT_LEVEL", "L2B-SNOW"),
                      ("PRODUCT_VERSION", product.product_id.rsplit("_V", 1)[-1].replace("-", "."))):
        ET.SubElement(chars, tag).text = text
    ET.SubElement(ET.SubElement(root, "Source_Product"), "PRODUCT_ID").text = product.l2a_id
    proc = ET.SubElement(root, "Processing")
    ET.SubElement(proc, "SOFTWARE", version=__version__).text = "landsurf LIS-like snow detection"
    ET.SubElement(proc, "PARAMETERS", name=params.name, hash=params.version)
    ET.SubElement(proc, "MODE").text = "pass1-only (no DEM)" if product.pass1_only else (
        "pass1+pass2" if product.pass2 else "pass1 (no snowline found)")
    quality = ET.SubElement(ET.SubElement(root, "Quality_Informations"), "Global_Index_List")
    for name, value in (("ZS", product.zs), ("SnowPercent", product.snow_percent),
                        ("CloudPercent", product.cloud_percent)):
        ET.SubElement(quality, "QUALITY_INDEX", name=name).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _open_inputs(inputs: SnowInputs, params: SnowParams, threads: str, opened: dict[str, Any]
                 ) -> tuple[Grid, Window | None]:
    """Open every input once into `opened` (the caller closes them), check their grids, find the DEM window."""
    def open_(key: str, path: Path, what: str) -> Any:
        opened[key] = open_raster(path, what, NUM_THREADS=threads)
        return opened[key]

    grid = dataset_grid(open_("swir", inputs.swir, "SWIR band (FRE_B11)"), "SWIR band (FRE_B11)")
    require_grid(open_("green", inputs.green, "green band (FRE_B3)"), grid.scaled(2), "green band (FRE_B3)")
    require_grid(open_("red", inputs.red, "red band (FRE_B4)"), grid.scaled(2), "red band (FRE_B4)")
    require_grid(open_("clm", inputs.clm, "cloud mask (CLM_R2)"), grid, "cloud mask (CLM_R2)")
    if params.water_mask:
        if inputs.mg2 is None:
            raise RasterInputError(f"{inputs.l2a_id}: the parameter set asks for the water mask and no MG2_R2 is "
                                   "given", "give the L2A's MG2_R2")
        require_grid(open_("mg2", inputs.mg2, "geophysical mask (MG2_R2)"), grid, "geophysical mask (MG2_R2)")
    if inputs.dem is None:
        return grid, None
    return grid, dem_window(open_("dem", inputs.dem, "DEM"), grid)


def dem_window(dem: Path | Any, grid: Grid) -> Window:
    """Where `grid` lies in the DEM (a path or an open dataset): the DEM must be on the same CRS and pixel size,
    aligned, and cover it."""
    got = dataset_grid(dem, "DEM") if hasattr(dem, "read") else grid_of(dem, "DEM")
    name = Path(getattr(dem, "name", dem)).name
    t, g = got.transform, grid.transform
    col, row = (g.c - t.c) / t.a, (g.f - t.f) / t.e
    aligned = math.isclose(t.a, g.a) and math.isclose(t.e, g.e) and abs(col - round(col)) < 1e-6 and abs(
        row - round(row)) < 1e-6
    window = Window(round(col), round(row), grid.width, grid.height)
    inside = window.col_off >= 0 and window.row_off >= 0 and window.col_off + grid.width <= got.width and (
        window.row_off + grid.height <= got.height)
    if not (aligned and inside and _crs_equal(got.crs, grid.crs)):
        raise RasterInputError(
            f"the DEM {name} ({got.width}×{got.height}, {got.resolution:g} m, {got.crs}) is not aligned on, or "
            f"does not cover, the product's 20 m grid ({grid.width}×{grid.height} at {g.c:.0f},{g.f:.0f}, {grid.crs})",
            "register the tile's DEM with `landsurf dem add TILE FILE` (it is resampled onto the tile grid)")
    return window


def _crs_equal(a: str, b: str) -> bool:
    return a == b or rasterio.crs.CRS.from_user_input(a) == rasterio.crs.CRS.from_user_input(b)


def _strip_rows(rf: int) -> int:
    """Rows of a strip: whole 512-row COG blocks and whole rf-row coarse blocks."""
    lcm = rf * BLOCK // math.gcd(rf, BLOCK)
    return lcm * max(1, 1536 // lcm) if lcm <= 4096 else rf * max(1, 1024 // rf)


def _pass1(opened: dict[str, Any], params: SnowParams, grid: Grid, dem_win: Window | None
           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, float]:
    """Pass 0 and 1 strip by strip: a reader thread decodes strip k + 1 (GDAL's own threads too) into one of two
    buffer sets while the kernel classifies strip k. Returns the state, the DEM, histograms, counts, kernel
    seconds."""
    h, w = grid.height, grid.width
    state = np.empty((h, w), np.uint8)
    dem = np.empty((h, w), np.int16) if dem_win is not None else None
    hist = np.zeros((3, _HIST), np.int64)
    counts = np.zeros(2, np.int64)
    kparams = _kernel_params(params)
    rows = min(_strip_rows(params.rf), h)
    bands = [k for k in ("green", "red", "swir", "clm", "mg2") if k in opened]
    scale = {"green": 2, "red": 2}
    dtypes = {"green": np.int16, "red": np.int16, "swir": np.int16, "clm": np.uint8, "mg2": np.uint8}
    starts = list(range(0, h, rows))
    buffers = [{k: np.empty((rows * scale.get(k, 1), w * scale.get(k, 1)), dtypes[k]) for k in bands}
               for _ in range(min(2, len(starts)))]
    kernel_s = 0.0

    def read(start: int, buf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stop = min(start + rows, h)
        out = {}
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):  # each block is decoded once: no cache to keep
            for key in bands:
                f = scale.get(key, 1)
                n = (stop - start) * f
                out[key] = opened[key].read(1, window=Window(0, start * f, w * f, n), out=buf[key][:n])
            if dem is not None:
                opened["dem"].read(1, window=Window(dem_win.col_off, dem_win.row_off + start, w, stop - start),
                                   out=dem[start:stop])
        return out

    with ThreadPoolExecutor(1, thread_name_prefix="snow-read") as reader:
        pending = reader.submit(read, starts[0], buffers[0])
        for i, start in enumerate(starts):
            block = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(read, starts[i + 1], buffers[(i + 1) % 2])
            stop = min(start + rows, h)
            mg2, dem_strip = _optional(block.get("mg2"), dem[start:stop] if dem is not None else None)
            tick = time.perf_counter()
            _classify_strip(block["green"], block["red"], block["swir"], block["clm"], mg2, dem_strip,
                            state[start:stop], hist, counts, *kparams)
            kernel_s += time.perf_counter() - tick
    return state, dem, hist, counts, kernel_s


def _optional(mg2: np.ndarray | None, dem: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Absent inputs as 0×0 arrays (numba compiles one signature)."""
    return (mg2 if mg2 is not None else np.zeros((0, 0), np.uint8),
            dem if dem is not None else np.zeros((0, 0), np.int16))


def _kernel_params(p: SnowParams) -> tuple:
    """Thresholds in DN and narrow integer types: an int64 constant would widen every lane of the kernels."""
    s = float(p.reflectance_scale)
    f32 = np.float32
    return (f32(p.red_backtocloud * s), f32(p.red_darkcloud * s), f32(p.red_pass1 * s), f32(p.ndsi_pass1),
            f32(p.red_pass2 * s), f32(p.ndsi_pass2), int(p.rf), np.int16(p.reflectance_nodata),
            np.uint8(p.shadow_bits), np.uint8(p.high_cloud_bits), bool(p.water_mask), np.int16(DEM_NODATA))


@numba.njit(nogil=True, cache=True, fastmath=True)
def _classify_strip(green, red, swir, clm, mg2, dem, state, hist, counts, red_back, red_dark, red1, ndsi1, red2,
                    ndsi2, rf, nodata, shadow_bits, high_bits, water_mask, dem_nodata):  # pragma: no cover
    """Pass 0 and pass 1 of one strip (rows a multiple of rf, but the last): state bits, histograms, counts.

    Per band of rf rows: the sums of the valid 10 m red pixels of each 20 m pixel (`_red_sums`) and their column
    sums, the 240 m red of each rf × rf block from those (the mean of its valid 10 m red pixels, an area mean),
    then per row the classification (`_classify_row`) and the histograms (a scatter, scalar). The row loops are
    branch-free so that LLVM vectorises them; the band's buffers stay in cache."""
    h, w = swir.shape
    use_mg2 = water_mask and mg2.shape[0] == h
    use_dem = dem.shape[0] == h
    nbx = (w + rf - 1) // rf
    rsum = np.empty((rf, w), np.float32)
    rcnt = np.empty((rf, w), np.float32)
    col_sum = np.empty(w, np.float32)
    col_cnt = np.empty(w, np.float32)
    rnn = np.empty(w, np.float32)
    water = np.uint8(1 if use_mg2 else 0)
    valid = 0
    snow_count = 0
    for r0 in range(0, h, rf):
        r1 = min(r0 + rf, h)
        col_sum[:] = 0
        col_cnt[:] = 0
        for r in range(r0, r1):
            _red_sums(red[2 * r], red[2 * r + 1], nodata, rsum[r - r0], rcnt[r - r0], col_sum, col_cnt)
        for j in range(nbx):
            c0, c1 = j * rf, min((j + 1) * rf, w)
            total = np.float32(0)
            n = np.float32(0)
            for c in range(c0, c1):
                total += col_sum[c]
                n += col_cnt[c]
            mean = total / max(n, np.float32(1))
            for c in range(c0, c1):
                rnn[c] = mean
        for r in range(r0, r1):
            st = state[r]
            cm = clm[r]
            _classify_row(green[2 * r], green[2 * r + 1], rsum[r - r0], rcnt[r - r0], swir[r], cm,
                          mg2[r] if use_mg2 else cm, water, rnn, st, red_back, red_dark, red1, ndsi1, red2, ndsi2,
                          nodata, shadow_bits, high_bits)
            if use_dem:
                zr = dem[r]
                for c in range(w):
                    v = st[c]
                    if v != _NODATA:
                        valid += 1
                        snow_count += v & 1
                        z = zr[c]
                        if z != dem_nodata:
                            cat = 2 if cm[c] != 0 else (v & 1)  # clear no-snow, snow, cloud (LIS: all_cloud)
                            hist[cat, np.int32(z) + 32768] += 1
            else:
                for c in range(w):
                    v = st[c]
                    valid += v != _NODATA
                    snow_count += (v & 1) * (v != _NODATA)
    counts[0] += valid
    counts[1] += snow_count


@numba.njit(nogil=True, cache=True, fastmath=True)
def _red_sums(r_top, r_bot, nodata, rsum, rcnt, col_sum, col_cnt):  # pragma: no cover
    """Sum and count of the valid 10 m red pixels of each 20 m pixel of a row, added to the band's column sums."""
    for c in range(rsum.shape[0]):
        k = 2 * c
        b0, b1, b2, b3 = r_top[k], r_top[k + 1], r_bot[k], r_bot[k + 1]
        q0, q1, q2, q3 = b0 != nodata, b1 != nodata, b2 != nodata, b3 != nodata
        n = (np.float32(q0) + np.float32(q1)) + (np.float32(q2) + np.float32(q3))
        total = (np.float32(b0) * np.float32(q0) + np.float32(b1) * np.float32(q1)) + (
            np.float32(b2) * np.float32(q2) + np.float32(b3) * np.float32(q3))
        rsum[c] = total
        rcnt[c] = n
        col_sum[c] += total
        col_cnt[c] += n


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _classify_row(g_top, g_bot, rsum, rcnt, sw, cm, mg, water, rnn, st, red_back, red_dark, red1, ndsi1, red2,
                  ndsi2, nodata, shadow_bits, high_bits):  # pragma: no cover
    """One 20 m row. Sums of the valid 10 m green/red pixels (gs, rs over gn, rn) stand for the means: thresholds
    are compared multiplied out, red > t ⇔ rs > t·rn and NDSI > t ⇔ (gs − gn·s) > t·(gs + gn·s), so no pixel
    divides. float32 sums (exact for int16 inputs) and boolean masks, no branch: LLVM vectorises the loop in
    8-lane registers (numba widens integer arithmetic to int64, which would halve the lanes)."""
    zero = np.float32(0)
    for c in range(st.shape[0]):
        k = 2 * c
        a0, a1, a2, a3 = g_top[k], g_top[k + 1], g_bot[k], g_bot[k + 1]
        m0, m1, m2, m3 = a0 != nodata, a1 != nodata, a2 != nodata, a3 != nodata
        gn = (np.float32(m0) + np.float32(m1)) + (np.float32(m2) + np.float32(m3))
        gs = (np.float32(a0) * np.float32(m0) + np.float32(a1) * np.float32(m1)) + (
            np.float32(a2) * np.float32(m2) + np.float32(a3) * np.float32(m3))
        rs = rsum[c]
        rn = rcnt[c]
        sv = sw[c]
        s = np.float32(sv)
        ok = (sv != nodata) & (gn > zero) & (rn > zero)
        den = gs + gn * s
        diff = gs - gn * s
        cl = cm[c]
        cloud = cl != 0
        refine = (cloud & (rnn[c] > red_dark)) | ((cl & shadow_bits) != 0) | ((cl & high_bits) != 0)
        back = cloud & (rs > red_back * rn)
        pos = den > zero
        dry = (mg[c] & water) == 0
        snow1 = ~cloud & pos & (diff > ndsi1 * den) & (rs > red1 * rn) & dry
        cand2 = ~refine & pos & (diff > ndsi2 * den) & (rs > red2 * rn) & dry
        code = np.float32(snow1) + np.float32(2) * np.float32(cand2) + np.float32(4) * np.float32(refine | back)
        st[c] = np.uint8(code if ok else np.float32(_NODATA))


@numba.njit(nogil=True, cache=True, fastmath=True)
def _finish(state, dem, zs, pass2, totals):  # pragma: no cover
    """Pass 2 and the final codes, in place: 254 no-data, 100 snow (pass 1, or pass 2 above z_s), 205 cloud,
    else 0; adds the snow and cloud counts to `totals`. `dem` is 0×0 without a DEM."""
    h, w = state.shape
    use = np.int32(1 if pass2 and dem.shape[0] == h else 0)
    flat = np.zeros(w, np.int16)
    snow_n = 0
    cloud_n = 0
    for r in range(h):
        st = state[r]
        zr = dem[r] if use else flat
        for c in range(w):
            v = np.int32(st[c])
            z = np.int32(zr[c])
            nd = (v >> 3) & 1
            p2 = ((v >> 1) & 1) & use & np.int32(z > zs) & np.int32(z != np.int32(DEM_NODATA))
            snow = ((v & 1) | p2) & (1 - nd)
            cloud = ((v >> 2) & 1) & (1 - snow) & (1 - nd)
            st[c] = np.uint8(nd * np.int32(NODATA) + snow * np.int32(SNOW) + cloud * np.int32(CLOUD))
            snow_n += snow
            cloud_n += cloud
    totals[0] += snow_n
    totals[1] += cloud_n

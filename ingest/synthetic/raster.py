"""Raster output: where files go (a folder, or straight into the zip), bands rendered from the scene, masks,
sidecars and the quicklook.

Reflectances are computed per band at 20 m (class spectrum × shadow × terrain, blended with the cloud), then
replicated to 10 m for R1 and multiplied by per-pixel noise at the output resolution, row block by row block.
In zip mode each raster is written in memory and appended to the archive at once: a full product (2.6 GB) is
written to disk once, not twice. Bands are uncompressed by default (MAJA's template says `None`; noise would not
compress well anyway), masks DEFLATE; GDAL compresses on all CPUs.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetWriter, MemoryFile
from rasterio.transform import Affine
from rasterio.warp import reproject
from rasterio.windows import Window

from ingest.synthetic.noise import F32
from ingest.synthetic.scene import Scene
from ingest.synthetic.spectra import BANDS_R1, BANDS_R2, NOISE, SHADOW_FACTOR, class_spectra, cloud_spectra

NODATA = -10000
VALID_RANGE = (-200, 15000)
SATURATION = 12000  # SRE ≥ ρ 1.2 is flagged saturated (bright snow on slopes facing the sun)
BLOCK_ROWS = 1024
QKL_MAX = 1000
ENV = {"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_PAM_ENABLED": "NO"}  # no .aux.xml next to the JPEG


class FolderSink:
    """Files written under a product folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shapes: dict[str, tuple[int, int]] = {}
        (folder / "MASKS").mkdir(parents=True, exist_ok=True)

    @contextmanager
    def open(self, rel: str, **profile: object) -> Iterator[DatasetWriter]:
        with rasterio.open(self.folder / rel, "w", **profile) as ds:
            yield ds
            self.shapes[rel] = (ds.height, ds.width)

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        (self.folder / rel).write_bytes(data)


class ZipSink:
    """Files appended to an open, stored (uncompressed) zip under `<top>/`, with fixed dates and modes so that
    reruns are byte-identical. Rasters go through GDAL's memory filesystem, so only the zip touches the disk."""

    def __init__(self, zf: zipfile.ZipFile, top: str, stamp: datetime) -> None:
        self.zf, self.top, self.date_time = zf, top, stamp.timetuple()[:6]
        self.shapes: dict[str, tuple[int, int]] = {}
        for directory in (f"{top}/", f"{top}/MASKS/"):
            info = zipfile.ZipInfo(directory, self.date_time)
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")

    @contextmanager
    def open(self, rel: str, **profile: object) -> Iterator[DatasetWriter]:
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                yield ds
                self.shapes[rel] = (ds.height, ds.width)
            self.write_bytes(rel, memoryview(mem.getbuffer()))

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        info = zipfile.ZipInfo(f"{self.top}/{rel}", self.date_time)
        info.external_attr = 0o100644 << 16
        info.file_size = len(data)
        with self.zf.open(info, "w", force_zip64=len(data) > 2**31) as dst:
            dst.write(data)


Sink = FolderSink | ZipSink


def profile(shape: tuple[int, int], dtype: str, transform: Affine, epsg: int, *, count: int = 1,
            nodata: float | None = None, deflate: bool = True) -> dict:
    rows, cols = shape
    out = dict(driver="GTiff", height=rows, width=cols, count=count, dtype=dtype, crs=f"EPSG:{epsg}",
               transform=transform, nodata=nodata)
    if deflate:
        out |= dict(compress="deflate", num_threads="ALL_CPUS", predictor=2 if dtype == "int16" else 1)
        if min(shape) >= 512:
            out |= dict(tiled=True, blockxsize=512, blockysize=512)
    return out


def write_tif(sink: Sink | Path, rel: str, data: np.ndarray, transform: Affine, epsg: int, *,
              nodata: float | None = None, descriptions: tuple[str, ...] | None = None) -> None:
    """One mask or sidecar raster, DEFLATE; `data` is (rows, cols) or (bands, rows, cols); a Path sink is a
    plain directory (sidecars)."""
    stack = data if data.ndim == 3 else data[None]
    prof = profile(stack.shape[1:], stack.dtype.name, transform, epsg, count=stack.shape[0], nodata=nodata)
    opened = rasterio.open(sink / rel, "w", **prof) if isinstance(sink, Path) else sink.open(rel, **prof)
    with opened as ds:
        ds.write(stack)
        for i, text in enumerate(descriptions or (), start=1):
            ds.set_band_description(i, text)


def write_reflectances(sink: Sink, files: dict[str, str], scene: Scene, streams: list[np.random.Generator],
                       transforms: dict[str, Affine], epsg: int, *, deflate: bool
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """FRE and SRE of the ten bands; returns the SAT mask per group (bit i = i-th band of the group) and the
    quicklook (3, rows, cols) uint8."""
    spectra, clouds = class_spectra(), cloud_spectra()
    surface = (F32(1) - scene.alpha) * np.where(scene.shadow, F32(SHADOW_FACTOR), F32(1))
    surface_sre = surface * scene.illumination
    n2 = scene.classes.shape[0]
    sat = {"R1": np.zeros((2 * n2, 2 * n2), np.uint8), "R2": np.zeros((n2, n2), np.uint8)}
    quicklook = {}
    base, cloud, fre, sre = (np.empty((n2, n2), F32) for _ in range(4))  # reused: no page faults per band
    for index, band in enumerate(BANDS_R1 + BANDS_R2):
        group, bit = ("R1", index) if band in BANDS_R1 else ("R2", index - len(BANDS_R1))
        np.take(clouds[:, index], scene.cloud_type, out=cloud)
        cloud *= scene.alpha
        np.take(spectra[:, index], scene.classes, out=base)
        np.multiply(base, surface, out=fre)
        fre += cloud
        np.multiply(base, surface_sre, out=sre)
        sre += cloud
        if band in ("B4", "B3", "B2"):
            quicklook[band] = _quicklook_channel(sre, scene.edge, transforms["R2"], epsg)
        prof = profile(sat[group].shape, "int16", transforms[group], epsg, nodata=NODATA, deflate=deflate)
        with sink.open(files[f"FRE_{band}"], **prof) as fre_ds, sink.open(files[f"SRE_{band}"], **prof) as sre_ds:
            _render((fre, sre), (fre_ds, sre_ds), scene.edge, streams[index], group == "R1", sat[group], bit)
    return sat, np.stack([quicklook[b] for b in ("B4", "B3", "B2")])


def _render(bases: tuple[np.ndarray, np.ndarray], datasets: tuple[DatasetWriter, DatasetWriter],
            edge: np.ndarray, rng: np.random.Generator, upsample: bool, sat: np.ndarray, bit: int) -> None:
    """Noise, round, clip, mark no-data and write, block by block, into buffers allocated once per band: fresh
    allocations of this size cost a page fault per 4 KiB, more than the arithmetic."""
    size = sat.shape[0]
    block = min(BLOCK_ROWS, size)
    noise, values = np.empty((block, size), F32), np.empty((block, size), F32)
    dn, outside = np.empty((block, size), np.int16), np.empty((block, size), bool)
    flags = np.empty((block, size), np.uint8)
    for top in range(0, size, block):
        rows = min(block, size - top)
        src = slice(top // 2, (top + rows) // 2) if upsample else slice(top, top + rows)
        rng.random(dtype=F32, out=noise[:rows])
        noise[:rows] *= F32(2 * NOISE)
        noise[:rows] += F32(1 - NOISE)
        _resample(edge[src], outside[:rows], upsample)
        for base, ds in zip(bases, datasets):
            _resample(base[src], values[:rows], upsample)
            values[:rows] *= noise[:rows]
            np.rint(values[:rows], out=values[:rows])
            np.clip(values[:rows], *VALID_RANGE, out=values[:rows])
            np.copyto(dn[:rows], values[:rows], casting="unsafe")
            dn[:rows][outside[:rows]] = NODATA
            ds.write(dn[:rows], 1, window=Window(0, top, size, rows))
        # dn holds the SRE block now: saturation is a property of the radiance, closest to SRE.
        np.greater_equal(dn[:rows], SATURATION, out=flags[:rows], casting="unsafe")
        flags[:rows] <<= bit
        sat[top:top + rows] |= flags[:rows]


def _resample(src: np.ndarray, out: np.ndarray, upsample: bool) -> None:
    """Copy `src` into `out`, replicating each pixel 2×2 when going from 20 m to 10 m."""
    if upsample:
        rows, cols = src.shape
        out.reshape(rows, 2, cols, 2)[...] = src[:, None, :, None]
    else:
        out[...] = src


def _quicklook_channel(sre: np.ndarray, edge: np.ndarray, transform: Affine, epsg: int) -> np.ndarray:
    """SRE averaged to at most 1000 px (from the 20 m values before pixel noise, invisible at that scale),
    linear 0–0.30 → 0–255, no-data black (products.md §5)."""
    n2 = sre.shape[0]
    side = min(QKL_MAX, 2 * n2)
    src = np.where(edge, F32(NODATA), sre)
    out = np.full((side, side), NODATA, F32)
    scale = n2 * 20 / side
    reproject(src, out, src_transform=transform, dst_transform=transform * Affine.scale(scale / 20),
              src_crs=f"EPSG:{epsg}", dst_crs=f"EPSG:{epsg}", src_nodata=NODATA, dst_nodata=NODATA,
              resampling=Resampling.average)
    scaled = np.clip(out * F32(255 / 3000), 0, 255)
    scaled[out == NODATA] = 0
    return np.rint(scaled).astype(np.uint8)


def write_quicklook(sink: Sink, rel: str, rgb: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="JPEG", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                          quality=90) as ds:
                ds.write(rgb)
            sink.write_bytes(rel, memoryview(mem.getbuffer()).tobytes())

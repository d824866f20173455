"""Quicklook drawing shared by ingest (the L2A thumbnail) and processing (L3A, snow and SCD quicklooks).

Why here: the L2A quicklook is drawn when ingest publishes an L2A, and ingest cannot import processing. Everything
is a pure function of arrays, plus `read_preview`, a decimated read that changes nothing on disk.

* A fixed linear stretch, reflectance ×10000 in [0, 3000] → [0, 255] (WASP's `gdal_translate -scale 0 3000 0 255`,
  products.md §5): the same reflectance gets the same colour on every date, so a time series can be flipped through.
* No-data black.
* Outlines as MUSCATE drew them: clouds green, snow magenta, water blue, one pixel wide at the quicklook's size (a
  line drawn at 10 m would vanish once reduced).
* About 1000 pixels on the longest side, never more than the raster itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

SIDE = 1000
STRETCH = (0.0, 3000.0)
NODATA = -10000
GREEN, MAGENTA, BLUE = (0, 255, 0), (255, 0, 255), (0, 0, 255)
CLOUD_BIT, WATER_BIT, SNOW_BIT = 1, 0, 2  # CLM bit 1 = all clouds (no shadows); MG2 bit 0 water, bit 2 snow
QUALITY = 90


def preview_shape(height: int, width: int, side: int = SIDE) -> tuple[int, int]:
    """(rows, cols) of a quicklook: the longest side `side`, or the raster's own size if smaller."""
    scale = max(height, width) / side
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def read_preview(path: Path | str, shape: tuple[int, int], *, band: int = 1,
                 resampling: Resampling = Resampling.average) -> np.ndarray:
    """One band at `shape`, decimated from the COG's overviews when it has some."""
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as ds:
        return ds.read(band, out_shape=shape, resampling=resampling)


def _bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    starts = (np.arange(n_out, dtype=np.int64) * n_in) // n_out
    counts = np.diff(np.append(starts, n_in))
    return starts, np.maximum(counts, 1)


def mask_preview(mask: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """A boolean mask at `shape`: a quicklook pixel is set when at least `threshold` of the area it covers is (an
    area-true reduction; a nearest-neighbour read would drop or invent small clouds)."""
    rows, cols = mask.shape
    r_start, r_count = _bins(rows, shape[0])
    c_start, c_count = _bins(cols, shape[1])
    m = mask.astype(np.uint16 if r_count.max() * c_count.max() < 2**16 else np.uint32)
    summed = np.add.reduceat(np.add.reduceat(m, r_start, axis=0), c_start, axis=1)
    return summed >= threshold * np.outer(r_count, c_count)


def stretch(bands: np.ndarray, nodata: np.ndarray | None = None, low: float = STRETCH[0],
            high: float = STRETCH[1]) -> np.ndarray:
    """(3, rows, cols) reflectances → uint8 RGB with the fixed linear stretch; `nodata` pixels black."""
    scaled = (bands.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    rgb = np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
    if nodata is not None:
        rgb[:, nodata] = 0
    return rgb


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the raster's border is not an edge)."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_outlines(rgb: np.ndarray, layers: Sequence[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    """A copy of `rgb` with the outline of each (mask, colour) drawn over it, later layers on top."""
    out = rgb.copy()
    for mask, colour in layers:
        edge = outline(mask)
        for channel, value in enumerate(colour):
            out[channel][edge] = value
    return out


def encode(rgb: np.ndarray, driver: str = "JPEG") -> bytes:
    """RGB (3, rows, cols) or RGBA uint8 as JPEG (alpha dropped) or PNG bytes."""
    if driver == "JPEG" and rgb.shape[0] == 4:
        rgb = rgb[:3]
    options = {"QUALITY": str(QUALITY)} if driver == "JPEG" else {"ZLEVEL": "6"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver=driver, width=rgb.shape[2], height=rgb.shape[1], count=rgb.shape[0],
                          dtype="uint8", **options) as ds:
                ds.write(np.ascontiguousarray(rgb))
            return bytes(mem.read())


def reflectance_rgb(paths: Sequence[Path | str], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Three reflectance bands at `shape` and their no-data mask (any of the three at −10000)."""
    bands = np.stack([read_preview(p, shape) for p in paths])
    return bands, (bands == NODATA).any(axis=0)


def bit_mask(path: Path | str, bit: int, shape: tuple[int, int]) -> np.ndarray:
    """One bit of a mask raster, reduced by area to `shape`."""
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as ds:
        data = ds.read(1)
    return mask_preview((data >> bit) & 1 == 1, shape)


def l2a_rgb(files: Mapping[str, Path | str], *, side: int = SIDE, kind: str = "FRE") -> np.ndarray:
    """The L2A quicklook as RGB (3, rows, cols): `kind` (FRE or SRE) B4/B3/B2 with the fixed stretch, outlines of
    water (MG2_R2 bit 0), snow (MG2_R2 bit 2) and clouds (CLM_R2 bit 1, on top). `files`: asset key → path."""
    with rasterio.open(files[f"{kind}_B4"]) as ds:
        shape = preview_shape(ds.height, ds.width, side)
    bands, nodata = reflectance_rgb([files[f"{kind}_{b}"] for b in ("B4", "B3", "B2")], shape)
    layers = [(bit_mask(files["MG2_R2"], WATER_BIT, shape) & ~nodata, BLUE),
              (bit_mask(files["MG2_R2"], SNOW_BIT, shape) & ~nodata, MAGENTA),
              (bit_mask(files["CLM_R2"], CLOUD_BIT, shape) & ~nodata, GREEN)]
    return draw_outlines(stretch(bands, nodata), layers)


def l2a_quicklook(files: Mapping[str, Path | str], *, side: int = SIDE, kind: str = "FRE") -> bytes:
    """The L2A quicklook (`l2a_rgb`) as JPEG bytes, for the item's `thumbnail` asset."""
    return encode(l2a_rgb(files, side=side, kind=kind), "JPEG")

"""Quicklooks of every product type, as `bytes` the caller writes beside the product (`thumbnail` asset).

* L2A: natural colour FRE B4/B3/B2, fixed stretch 0–3000, outlines of clouds (green), snow (magenta) and water
  (blue) — drawn by `ingest.drawing.l2a_quicklook`, which ingest calls itself when it publishes an L2A.
* L3A: natural colour FRC B4/B3/B2 with the same fixed stretch (WASP's quicklook), no-data black; JPEG.
* Snow: LIS's COMPO (SWIR/red/green = B11/B4/B3, same stretch) with the outlines of snow (code 100, magenta),
  clouds (205, green) and water (the L2A's MG2 bit 0, blue); JPEG. `snow_map_png` is the map itself through the
  `landsurf_snow` palette (PNG), for viewers that want the codes.
* SCD: the duration through the `landsurf_scd` palette, no-data black; PNG.
All are at most 1000 pixels a side (`ingest.drawing.SIDE`); the same value always gets the same colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from ingest.drawing import (BLUE, GREEN, MAGENTA, SIDE, WATER_BIT, bit_mask, draw_outlines, encode, l2a_quicklook,
                            l2a_rgb, mask_preview, preview_shape, read_preview, reflectance_rgb, stretch)
from processing import colormaps

__all__ = ["l2a_quicklook", "l2a_rgb", "l3a_quicklook", "snow_quicklook", "snow_rgb", "snow_map_png", "scd_quicklook"]


def _shape(path: Path | str, side: int) -> tuple[int, int]:
    with rasterio.open(path) as ds:
        return preview_shape(ds.height, ds.width, side)


def l3a_quicklook(files: Mapping[str, Path | str], *, side: int = SIDE) -> bytes:
    """Natural colour of an L3A (FRC B4/B3/B2, 0–3000 → 0–255), no-data black, as JPEG."""
    shape = _shape(files["FRC_B4"], side)
    bands, nodata = reflectance_rgb([files[f"FRC_{b}"] for b in ("B4", "B3", "B2")], shape)
    return encode(stretch(bands, nodata), "JPEG")


def _codes(path: Path | str) -> np.ndarray:
    """Full-resolution product codes, for masks reduced by area (a nearest read would lose small patches)."""
    with rasterio.open(path) as ds:
        return ds.read(1)


def snow_rgb(snow_map: Path | str, l2a_files: Mapping[str, Path | str], *, side: int = SIDE) -> np.ndarray:
    """LIS COMPO of a snow map as RGB: B11/B4/B3 of its L2A, outlines of water, snow and clouds (on top)."""
    shape = _shape(l2a_files["FRE_B4"], side)
    bands, nodata = reflectance_rgb([l2a_files[f"FRE_{b}"] for b in ("B11", "B4", "B3")], shape)
    codes = _codes(snow_map)
    nodata |= mask_preview(codes >= colormaps.NODATA_V15, shape)
    layers = [(bit_mask(l2a_files["MG2_R2"], WATER_BIT, shape) & ~nodata, BLUE),
              (mask_preview(codes == colormaps.SNOW, shape) & ~nodata, MAGENTA),
              (mask_preview(codes == colormaps.CLOUD, shape) & ~nodata, GREEN)]
    return draw_outlines(stretch(bands, nodata), layers)


def snow_quicklook(snow_map: Path | str, l2a_files: Mapping[str, Path | str], *, side: int = SIDE) -> bytes:
    """The snow quicklook (`snow_rgb`) as JPEG bytes."""
    return encode(snow_rgb(snow_map, l2a_files, side=side), "JPEG")


def _palette(path: Path | str, name: str, side: int) -> bytes:
    shape = _shape(path, side)
    data = read_preview(path, shape, resampling=Resampling.nearest)
    rgba = colormaps.apply(name, data)
    rgba[:3, rgba[3] == 0] = 0  # no-data black, as every quicklook
    return encode(rgba[:3], "PNG")


def snow_map_png(snow_map: Path | str, *, side: int = SIDE) -> bytes:
    """The snow map through the `landsurf_snow` palette (PNG)."""
    return _palette(snow_map, colormaps.SNOW_COLORMAP, side)


def scd_quicklook(scd: Path | str, *, side: int = SIDE) -> bytes:
    """The snow-cover duration through the `landsurf_scd` palette (PNG)."""
    return _palette(scd, colormaps.SCD_COLORMAP, side)

"""Palettes and legends of the snow and snow-cover-duration products, for quicklooks and for the tiler.

One definition serves both: the quicklooks apply it with rio-tiler's own `apply_cmap`, and `tiler_colormaps()`
registers it under the names below, so a map tile and a quicklook of the same product have the same colours. Items
name the colormap in their render metadata (`renders()`), which titiler's render extension turns into tile URLs.

* `landsurf_snow` — LIS codes: 0 no snow grey (119,119,119), 100 snow cyan, 205 cloud white (LIS QGIS style
  `LIS_SEB_style_v2.qml`), 254/255 no-data transparent (black in quicklooks).
* `landsurf_scd` — days of snow cover 0–366: 0 light grey, then a sequential yellow-green-blue ramp (rio-tiler's
  `ylgnbu`) in 5-day steps; values above 366 (or the no-data 65535) transparent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rio_tiler.colormap import ColorMaps, apply_cmap
from rio_tiler.colormap import cmap as default_colormaps

SNOW_COLORMAP = "landsurf_snow"
SCD_COLORMAP = "landsurf_scd"
SCD_STEP_DAYS = 5
SCD_MAX_DAYS = 366
NO_SNOW, SNOW, CLOUD, NODATA_V15, NODATA = 0, 100, 205, 254, 255
_SNOW_COLOURS: dict[int, tuple[int, int, int, int]] = {
    NO_SNOW: (119, 119, 119, 255),
    SNOW: (0, 255, 255, 255),
    CLOUD: (255, 255, 255, 255),
    NODATA_V15: (0, 0, 0, 0),
    NODATA: (0, 0, 0, 0),
}
_SNOW_LABELS = {NO_SNOW: "no snow", SNOW: "snow", CLOUD: "cloud", NODATA_V15: "no data", NODATA: "no data"}


def snow_colormap() -> dict[int, tuple[int, int, int, int]]:
    """Discrete colormap of the snow codes (value → RGBA)."""
    return dict(_SNOW_COLOURS)


def scd_colormap() -> list[tuple[tuple[float, float], tuple[int, int, int, int]]]:
    """Interval colormap of the snow-cover duration: [(lower, upper), RGBA], lower bound included."""
    ramp = default_colormaps.get("ylgnbu")
    intervals: list[tuple[tuple[float, float], tuple[int, int, int, int]]] = [((0, 1), (220, 220, 220, 255))]
    edges = list(range(1, SCD_MAX_DAYS + 1, SCD_STEP_DAYS)) + [SCD_MAX_DAYS + 1]
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        index = 40 + round(215 * i / max(1, len(edges) - 2))  # skip the near-white start of the ramp
        r, g, b, _ = ramp[index]
        intervals.append(((low, high), (int(r), int(g), int(b), 255)))
    return intervals


def colormaps() -> dict[str, Any]:
    """landsurf's colormaps by name."""
    return {SNOW_COLORMAP: snow_colormap(), SCD_COLORMAP: scd_colormap()}


def tiler_colormaps(base: ColorMaps | None = None) -> ColorMaps:
    """rio-tiler's colormaps plus landsurf's, for titiler: pass it as `ColorMapFactory(supported_colormaps=…)` and
    `create_colormap_dependency(…)` as the tiler factories' `colormap_dependency`."""
    return (base or default_colormaps).register(colormaps(), overwrite=True)


def apply(name: str, data: np.ndarray) -> np.ndarray:
    """RGBA (4, rows, cols) uint8 of a 2-D product array through the named colormap (rio-tiler's function)."""
    rgb, alpha = apply_cmap(data[None], colormaps()[name])
    return np.concatenate([rgb.astype(np.uint8), alpha[None].astype(np.uint8)])


def legend(name: str) -> dict[str, Any]:
    """A legend a viewer can draw: title, unit and entries (value or [lower, upper) range, RGBA, label)."""
    if name == SNOW_COLORMAP:
        entries = [{"value": v, "color": list(c), "label": _SNOW_LABELS[v]} for v, c in _SNOW_COLOURS.items()
                   if v != NODATA_V15]
        return {"colormap": name, "title": "Snow (LIS codes)", "type": "categorical", "entries": entries}
    if name == SCD_COLORMAP:
        entries = [{"range": [int(lo), int(hi)], "color": list(c),
                    "label": "0 days" if lo == 0 else f"{int(lo)}–{int(hi) - 1} days"}
                   for (lo, hi), c in scd_colormap()]
        return {"colormap": name, "title": "Snow cover duration", "unit": "days", "type": "intervals",
                "entries": entries}
    raise KeyError(f"no landsurf colormap named {name!r} (known: {SNOW_COLORMAP}, {SCD_COLORMAP})")


def renders(kind: str) -> dict[str, dict[str, Any]]:
    """The render-extension objects an item of `kind` (`snow`, `scd`, `l3a`) carries: tiler parameters by name."""
    if kind == "snow":
        return {"snow": {"title": "Snow map (LIS codes)", "assets": ["SNW_R2"], "colormap_name": SNOW_COLORMAP,
                         "resampling": "nearest"}}
    if kind == "scd":
        return {"snow-cover-duration": {"title": "Snow cover duration (days)", "assets": ["SCD"],
                                        "colormap_name": SCD_COLORMAP, "resampling": "nearest"}}
    if kind == "l3a":
        return {"true-colour": {"title": "True colour (composite B4, B3, B2)",
                                "assets": ["FRC_B4", "FRC_B3", "FRC_B2"], "rescale": [[0, 3000]],
                                "nodata": -10000}}
    raise KeyError(f"no render metadata for {kind!r} (known: snow, scd, l3a)")

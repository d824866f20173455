"""Sentinel-2 tile geometry from the MGRS id alone (products.md §1.5).

A tile is the MGRS 100 km square widened to 109.8 km; its upper-left corner is the square's north-west corner
snapped to the 60 m grid (X floor, Y ceil), e.g. T31TCH → EPSG:32631, UL (300000, 4800000). Computed, not
tabulated, so that any tile works; the zone exceptions of Norway and Svalbard are ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rasterio.transform import Affine

TILE_EXTENT_M = 109_800
FULL_R1 = 10_980  # pixels of a full tile at 10 m
_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_TILE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])$")


@dataclass(frozen=True)
class TileGrid:
    """A tile's id (without the `T`), projection and upper-left corner in metres."""

    tile: str
    epsg: int
    ulx: int
    uly: int

    @property
    def zone(self) -> int:
        return self.epsg % 100

    def transform(self, resolution: int) -> Affine:
        return Affine(resolution, 0.0, self.ulx, 0.0, -resolution, self.uly)


def tile_grid(tile: str) -> TileGrid:
    """Parse `31TCH` / `T31TCH` and place it on the UTM grid."""
    m = _TILE.match(tile.strip().upper())
    if not m:
        raise ValueError(f"{tile!r} is not a Sentinel-2 tile id (expected e.g. 31TCH)")
    zone, band, col, row = int(m[1]), m[2], m[3], m[4]
    columns = _COLUMNS[(zone - 1) % 3]
    if not 1 <= zone <= 60 or col not in columns:
        raise ValueError(f"{tile!r}: column letter {col} does not exist in UTM zone {zone}")
    easting = (columns.index(col) + 1) * 100_000
    epsg = (32600 if band >= "N" else 32700) + zone
    base = ((_ROWS.index(row) - (5 if zone % 2 == 0 else 0)) % 20) * 100_000
    lat_lo = -80 + 8 * _BANDS.index(band)
    lat_hi = lat_lo + (12 if band == "X" else 8)
    from pyproj import Transformer

    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    meridian = 6 * zone - 183
    lo, hi = (to_utm.transform(meridian, lat)[1] for lat in (lat_lo, lat_hi))
    # Row letters repeat every 2000 km: take the one repetition whose square meets the latitude band.
    bottom = base + math.ceil((lo - 100_000 - base) / 2_000_000) * 2_000_000
    if bottom >= hi:
        raise ValueError(f"{tile!r}: row letter {row} does not occur in latitude band {band}")
    top = bottom + 100_000
    return TileGrid(f"{zone:02d}{band}{col}{row}", epsg, (easting // 60) * 60, -(-top // 60) * 60)

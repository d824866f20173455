"""The static landscape of a tile (relief, water, land cover) and its seasonal snow truth.

The landscape is laid out relative to the region of interest: a 512-pixel ROI holds massifs, lakes, a river and a
snowline just as the full tile does, as a miniature (the ROI is not a crop of the full-tile scene). Slopes and
shadow lengths use the tile-scale spacing (`Landscape.spacing`, 20 m at full size) so they stay realistic.
Everything here depends only on (seed, tile, size) — or on the day for the snow — never on the acquisition,
so a daily snow truth can be recomputed for any day (products.md §6, SCD truth).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from rasterio.transform import Affine

from ingest.synthetic.grid import TILE_EXTENT_M, TileGrid
from ingest.synthetic.noise import F32, fbm
from ingest.synthetic.spectra import FRESH_SNOW, OLD_SNOW, ROCK, THIN_SNOW, VEGETATION, WATER

# Seasonal snowline (day of year → metres): 600 m in January, 2800 m in July, 2000 m in mid-October.
_SNOWLINE = ((15, 600.0), (91, 1200.0), (152, 2200.0), (196, 2800.0), (244, 3100.0), (288, 2000.0),
             (335, 900.0))
PATCHY_BAND_M = 150.0  # thin, patchy snow within ± this of the local snowline
FRESH_DAYS = 10  # snow younger than this after a storm has the fresh-snow spectrum


def stream(seed: int, tile: str, *keys: int) -> np.random.Generator:
    """An independent random stream per (seed, tile, purpose…), stable across runs and platforms."""
    return np.random.default_rng([seed, zlib.crc32(tile.encode()), *keys])


@dataclass(frozen=True, eq=False)
class Landscape:
    """Static fields on the R2 (20 m) grid of the ROI."""

    grid: TileGrid
    size: int  # R2 pixels per side
    seed: int
    spacing: float  # tile-scale metres per R2 pixel
    dem: np.ndarray  # float32, metres
    slope: np.ndarray  # float32, radians
    aspect: np.ndarray  # float32, radians clockwise from north, direction the slope faces
    water: np.ndarray  # bool: lakes and river
    rock: np.ndarray  # bool: rock/soil, else vegetation
    snow_z: np.ndarray  # float32: elevation shifted by aspect and noise, compared with the snowline
    patch: np.ndarray  # float32 in [0, 1]: where thin snow survives near the line


def build_landscape(grid: TileGrid, size: int, seed: int) -> Landscape:
    """Relief of Gaussian massifs and ridged fBm (200–3500 m), lakes in low valleys and one river."""
    n = size
    rng = stream(seed, grid.tile, 1)
    massifs = [(rng.uniform(0.1, 0.9, 2), rng.uniform(0.08, 0.22, 2), rng.uniform(0.5, 1.0))
               for _ in range(int(rng.integers(3, 6)))]
    top = rng.uniform(3200, 3500)
    u = (np.arange(n, dtype=F32) + 0.5) / n
    mountain = np.zeros((n, n), dtype=F32)
    for (cx, cy), (sx, sy), height in massifs:
        gy = np.exp(-0.5 * ((u - cy) / sy) ** 2).astype(F32)
        gx = np.exp(-0.5 * ((u - cx) / sx) ** 2).astype(F32)
        mountain += F32(height) * np.outer(gy, gx)
    np.clip(mountain, 0, 1, out=mountain)
    spacing = TILE_EXTENT_M / n
    # Ridges ~7 km apart, rougher at smaller scales down to 400 m (whatever the pixel size): slopes of 15-40°.
    relief = fbm(rng, (n, n), n / 16, 9, ridged=True, gain=0.6, min_cell=max(2.0, 400 / spacing))
    relief *= np.clip(F32(1500 * 1.5) * mountain, 0, 1500)
    relief += F32(1800) * mountain
    relief += F32(300) * fbm(rng, (n, n), n / 6, 5)
    lo, hi = float(relief.min()), float(relief.max())
    dem = (relief - F32(lo)) * F32((top - 200.0) / max(hi - lo, 1e-6)) + F32(200.0)
    del relief, mountain
    water = _lakes_and_river(rng, dem, spacing)
    slope, aspect = _slope_aspect(dem, spacing)
    treeline = 2000 + 500 * (fbm(rng, (n, n), n / 20, 3) - 0.5)
    rock = (dem > treeline) | ((fbm(rng, (n, n), n / 40, 2) > 0.68) & (dem < 1200))
    rock &= ~water
    snow_z = dem + 200 * np.cos(aspect) * np.minimum(slope / F32(0.35), 1)
    snow_z += F32(200) * (fbm(rng, (n, n), n / 8, 3) - F32(0.5))
    patch = fbm(rng, (n, n), n / 60, 2)
    return Landscape(grid, n, seed, spacing, dem, slope, aspect, water, rock, snow_z.astype(F32), patch)


def _slope_aspect(dem: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    d_row, d_col = np.gradient(dem, F32(spacing))
    east, north = d_col, -d_row  # rows grow southward
    slope = np.arctan(np.hypot(east, north)).astype(F32)
    aspect = np.arctan2(-east, -north).astype(F32) % F32(2 * np.pi)
    return slope, aspect


def _lakes_and_river(rng: np.random.Generator, dem: np.ndarray, spacing: float) -> np.ndarray:
    """Ellipse lakes below ~1000 m (flattened to their level) and a river following the valley floors."""
    from rasterio.features import rasterize
    from shapely import affinity
    from shapely.geometry import LineString, Point

    n = dem.shape[0]
    shapes = []
    for _ in range(int(rng.integers(3, 7))):
        for _attempt in range(200):
            cx, cy = rng.uniform(0.05, 0.95, 2) * n
            if dem[int(cy), int(cx)] < 1000:
                break
        rx = max(3.0, rng.uniform(0.012, 0.035) * n)
        ellipse = affinity.scale(Point(cx, cy).buffer(1.0, 32), rx, rx * rng.uniform(0.35, 0.9))
        shapes.append((affinity.rotate(ellipse, rng.uniform(0, 180)), len(shapes) + 1))
    lakes = rasterize(shapes, out_shape=(n, n), transform=Affine.identity(), dtype="uint8")
    for lake_id in range(1, len(shapes) + 1):
        inside = lakes == lake_id
        if inside.any():
            dem[inside] = np.percentile(dem[inside], 10)
    steps, half, low, high = 48, max(2, n // 25), n // 10, n - n // 10
    y = int(np.argmin(dem[n // 4: 3 * n // 4, 0])) + n // 4
    ys = []
    for x in np.linspace(0, n - 1, steps):
        top = min(max(low, y - half), high - 2 * half - 1)
        window = dem[top: top + 2 * half + 1, int(x)] + rng.uniform(0, 60, 2 * half + 1).astype(F32)
        y = top + int(np.argmin(window))
        ys.append(y)
    ys = np.convolve(np.pad(ys, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # soften the zigzag
    points = list(zip(np.linspace(0, n - 1, steps) + 0.5, ys + 0.5))
    width = max(1.2, 60.0 / spacing)
    river = rasterize([(LineString(points).buffer(width / 2), 1)], out_shape=(n, n),
                      transform=Affine.identity(), dtype="uint8", all_touched=width < 2)
    return (lakes > 0) | (river > 0)


@dataclass(frozen=True)
class Storm:
    start: date
    days: int  # how long its low-elevation snow lasts
    drop: float  # metres the snowline drops on the first day


def storms(seed: int, tile: str, hydro_year: int) -> list[Storm]:
    """Snowfall events of the hydrological year starting 1 Sep `hydro_year` (between October and May)."""
    rng = stream(seed, tile, 7, hydro_year)
    first = date(hydro_year, 10, 1)
    return sorted((Storm(first + timedelta(days=int(rng.integers(0, 243))), int(rng.integers(3, 9)),
                         float(rng.uniform(300, 900))) for _ in range(int(rng.integers(5, 10)))),
                  key=lambda s: s.start)


def snowline(seed: int, tile: str, day: date) -> tuple[float, int]:
    """The regional snowline (m) of a day and the age in days of its last snowfall."""
    xs = [d for d, _ in _SNOWLINE]
    line = float(np.interp(day.timetuple().tm_yday, xs, [z for _, z in _SNOWLINE], period=365))
    hydro_year = day.year if day.month >= 9 else day.year - 1
    age, drop = 365, 0.0
    for storm in storms(seed, tile, hydro_year):
        since = (day - storm.start).days
        if since >= 0:
            age = min(age, since)
            if since < storm.days:
                drop = max(drop, storm.drop * (1 - since / storm.days))
    return line - drop, age


def surface_classes(land: Landscape, day: date) -> np.ndarray:
    """Class code per R2 pixel for that day: vegetation, rock, water, or fresh/old/thin snow (never on water)."""
    line, age = snowline(land.seed, land.grid.tile, day)
    classes = np.where(land.rock, np.uint8(ROCK), np.uint8(VEGETATION))
    classes[land.water] = WATER
    above = land.snow_z - F32(line - PATCHY_BAND_M)  # 0 at the bottom of the patchy band
    full = (above > 2 * PATCHY_BAND_M) & ~land.water
    thin = (above > 0) & ~full & ~land.water & (land.patch < above / F32(2 * PATCHY_BAND_M))
    fresh = age <= FRESH_DAYS or day.month in (12, 1, 2)
    classes[full] = FRESH_SNOW if fresh else OLD_SNOW
    classes[thin] = THIN_SNOW
    return classes

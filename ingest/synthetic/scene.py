"""One acquisition over the landscape: sun, clouds and their shadows, cirrus, aerosols, swath edge, masks.

All on the R2 grid; R1 rasters replicate it (MAJA computes its masks at coarse resolution too). Mask bits follow
products.md §1.3: CLM bit0 = all clouds ∪ shadows, bit1 = all clouds (incl. cirrus and the 1–2 px extension rim),
bits 2/3 subsets, bit4 rim, bit5/bit6 shadows of clouds inside/outside the image, bit7 cirrus. MG2 bit0 water,
bit1 = CLM bit1, bit2 snow, bit3 = CLM bit5 ∪ bit6, bit4 hidden surface (always 0, near-nadir view), bit5
topographic shadow, bit6 sun too low (local incidence > 84°), bit7 sun tangent (|cos i| < 0.02) — bits 4/5 in
the order MAJA's writer concatenates them (HID then SHD), and the MTD says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ingest.synthetic.landscape import Landscape, stream, surface_classes
from ingest.synthetic.noise import F32, dilate, fbm, quantile
from ingest.synthetic.spectra import BRIGHT_CLOUD, DARK_CLOUD, FRESH_SNOW, OLD_SNOW, NO_CLOUD

EDGE_CHANCE = 0.25  # share of dates cut by a swath edge when not forced


@dataclass(frozen=True, eq=False)
class Scene:
    """Truth and masks of one acquisition on the R2 grid."""

    sun_zenith: float  # degrees, at the ROI centre
    sun_azimuth: float  # degrees clockwise from north
    classes: np.ndarray  # uint8 surface class (spectra.py)
    cloud_type: np.ndarray  # uint8 NO_CLOUD / BRIGHT_CLOUD / DARK_CLOUD
    alpha: np.ndarray  # float32 cloud opacity in [0, 1]
    shadow: np.ndarray  # bool, true cloud shadow (not under a cloud)
    cloud: np.ndarray  # bool, true cloud (thick, thin, dark thin or cirrus)
    edge: np.ndarray  # bool, outside the swath
    illumination: np.ndarray  # float32, SRE/FRE factor of the terrain
    clm: np.ndarray  # uint8
    mg2: np.ndarray  # uint8
    iab: np.ndarray  # uint8
    vap: np.ndarray  # uint8, water vapour ×20
    aot: np.ndarray  # uint8, AOT ×200


def sun_angles(when: datetime, lon: float, lat: float) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees) from NOAA's low-precision formulas (~0.1°, plenty for angles)."""
    doy = when.timetuple().tm_yday
    hours = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * math.pi / 365 * (doy - 1 + (hours - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g) - 0.014615 * math.cos(2 * g)
                       - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g) - 0.006758 * math.cos(2 * g)
            + 0.000907 * math.sin(2 * g) - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    hour_angle = math.radians((hours * 60 + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))
    azimuth = math.degrees(math.atan2(math.sin(hour_angle),
                                      math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
    return zenith, (azimuth + 180) % 360


def roi_lonlat(land: Landscape) -> tuple[float, float]:
    from pyproj import Transformer

    half = land.size * 10  # R2 pixels × 20 m / 2
    to_ll = Transformer.from_crs(land.grid.epsg, 4326, always_xy=True)
    return to_ll.transform(land.grid.ulx + half, land.grid.uly - half)


def build_scene(land: Landscape, when: datetime, *, cloud_cover: float | None = None,
                swath_edge: bool | None = None) -> Scene:
    """Everything of one date; random draws come from a stream of (seed, tile, date)."""
    n = land.size
    rng = stream(land.seed, land.grid.tile, 2, when.date().toordinal())
    r = rng.random()
    drawn = rng.uniform(0, 0.03) if r < 0.3 else rng.uniform(0.05, 0.6) if r < 0.7 else rng.uniform(0.6, 0.95)
    cover = drawn if cloud_cover is None else min(max(cloud_cover, 0.0), 1.0)
    edge_on = rng.random() < EDGE_CHANCE if swath_edge is None else swath_edge
    corner, legs = int(rng.integers(4)), rng.uniform((0.15, 0.6), (0.6, 1.0))
    cirrus_on, cirrus_cover, cirrus_alpha = rng.random() < 0.2, rng.uniform(0.05, 0.35), rng.uniform(0.08, 0.2)
    dark_on, height, rim = rng.random() < 0.5, rng.uniform(1000, 3000), int(rng.integers(1, 3))
    aot_base = rng.uniform(0.05, 0.35) if rng.random() < 0.9 else rng.uniform(0.5, 0.95)
    cloud_cell = n / math.exp(rng.uniform(math.log(5), math.log(25)))  # from stratus sheets to cumulus

    zenith, azimuth = sun_angles(when, *roi_lonlat(land))
    classes = surface_classes(land, when.date())
    full_snow = (classes == FRESH_SNOW) | (classes == OLD_SNOW)

    shift = height * math.tan(math.radians(min(zenith, 80))) / land.spacing
    drow = round(shift * math.cos(math.radians(azimuth)))  # shadows fall away from the sun
    dcol = round(-shift * math.sin(math.radians(azimuth)))
    pad = max(abs(drow), abs(dcol)) + 1
    field = fbm(rng, (n + 2 * pad, n + 2 * pad), cloud_cell, 5, gain=0.55)
    roi = field[pad:pad + n, pad:pad + n]
    threshold = np.inf if cover <= 0 else -np.inf if cover >= 1 else quantile(roi, 1 - cover)
    casters = field > threshold
    bright = casters[pad:pad + n, pad:pad + n]
    # Opacity ramps from 0.35 at a cloud's edge to 1 in its core (an overcast sky is all core).
    alpha = np.where(bright, np.clip(F32(0.35) + (roi - F32(threshold)) / F32(0.06), 0.35, 1), F32(0))
    cast = casters[pad - drow:pad - drow + n, pad - dcol:pad - dcol + n]
    inside = np.arange(n) - drow
    cols = np.arange(n) - dcol
    from_inside = ((inside >= 0) & (inside < n))[:, None] & ((cols >= 0) & (cols < n))[None, :]
    del field, casters

    dark = np.zeros((n, n), bool)
    if dark_on and full_snow.any():
        f = fbm(rng, (n, n), n / 10, 3)
        dark = (f > quantile(f, 0.8)) & full_snow & ~bright
    cirrus = np.zeros((n, n), bool)
    if cirrus_on:
        f = fbm(rng, (n, n), n / 3, 3)
        cirrus = f > quantile(f, 1 - cirrus_cover)
    cloud_type = np.where(dark, np.uint8(DARK_CLOUD), np.where(bright | cirrus, np.uint8(BRIGHT_CLOUD),
                                                                np.uint8(NO_CLOUD)))
    alpha[dark] = 1
    np.maximum(alpha, np.where(cirrus, F32(cirrus_alpha), F32(0)), out=alpha)
    core = bright | dark
    cloud = core | cirrus
    shadow = cast & ~cloud
    subset = fbm(rng, (n, n), n / 30, 2)

    clm = np.zeros((n, n), np.uint8)
    extension = dilate(core, rim) & ~core
    all_clouds = cloud | extension
    bits = {1: all_clouds, 2: (bright & (alpha >= 0.5)) | (dark & (subset > 0.5)), 3: core & (subset > 0.45),
            4: extension, 5: shadow & from_inside, 6: shadow & ~from_inside, 7: cirrus}
    for bit, mask in bits.items():
        clm |= mask.astype(np.uint8) << bit
    clm |= (all_clouds | shadow).astype(np.uint8)

    illumination, topo = _terrain(land, zenith, azimuth)
    mg2 = land.water.astype(np.uint8) | (clm & 2) | ((full_snow & ~all_clouds & ~shadow).astype(np.uint8) << 2)
    mg2 |= (shadow.astype(np.uint8) << 3) | topo
    iab = all_clouds.astype(np.uint8) | ((all_clouds | land.water).astype(np.uint8) << 1)

    smooth = fbm(rng, (n, n), n / 2, 2)
    aot = aot_base * (F32(0.6) + F32(0.8) * smooth) * np.exp(-(land.dem - 200) / F32(5000))
    season = 1.55 + 0.95 * math.cos(2 * math.pi * (when.timetuple().tm_yday - 196) / 365)
    vap = F32(season) * (F32(1.2) - F32(0.4) * smooth) * np.exp(-(land.dem - 200) / F32(2500))
    vap_dn = np.clip(np.rint(vap * 20), 1, 255).astype(np.uint8)
    aot_dn = np.clip(np.rint(aot * 200), 1, 255).astype(np.uint8)

    edge = _swath_edge(n, corner, legs) if edge_on else np.zeros((n, n), bool)
    for a in (clm, mg2, iab, vap_dn, aot_dn):
        a[edge] = 0
    return Scene(zenith, azimuth, classes, cloud_type, alpha, shadow, cloud, edge, illumination, clm, mg2, iab,
                 vap_dn, aot_dn)


def _terrain(land: Landscape, zenith: float, azimuth: float) -> tuple[np.ndarray, np.ndarray]:
    """SRE/FRE illumination factor and the MG2 topographic bits (5 shadow, 6 sun too low, 7 tangent)."""
    z, a = math.radians(zenith), math.radians(azimuth)
    cos_i = F32(math.cos(z)) * np.cos(land.slope)
    cos_i += F32(math.sin(z)) * np.sin(land.slope) * np.cos(F32(a) - land.aspect)
    illumination = np.clip(cos_i / F32(math.cos(z)), 0.15, 2.0).astype(F32)
    topo = ((cos_i <= 0).astype(np.uint8) << 5) | (((cos_i > 0) & (cos_i < 0.1)).astype(np.uint8) << 6)
    topo |= (np.abs(cos_i) < 0.02).astype(np.uint8) << 7
    return illumination, topo


def _swath_edge(n: int, corner: int, legs: np.ndarray) -> np.ndarray:
    """A triangle cut from one corner, as where a tile meets the edge of the 290 km swath."""
    rows = np.arange(n, dtype=F32) / n
    cols = rows.copy()
    if corner in (1, 3):
        cols = cols[::-1]
    if corner in (2, 3):
        rows = rows[::-1]
    return (cols[None, :] / F32(legs[0]) + rows[:, None] / F32(legs[1])) < 1

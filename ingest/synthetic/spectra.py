"""Surface classes and their reflectance (products.md §6 table, ×10000, textbook magnitudes).

Red-edge bands B5/B6/B7 are not in the table: they are interpolated between B4 and B8 with a vegetation-like red
edge (12 %, 60 %, 90 % of the way), which keeps snow and rock flat and vegetation steep, as observed.
"""

from __future__ import annotations

import numpy as np

BANDS_R1 = ("B2", "B3", "B4", "B8")
BANDS_R2 = ("B5", "B6", "B7", "B8A", "B11", "B12")
BANDS = BANDS_R1 + BANDS_R2

# Surface class codes, also band 5 of the truth sidecar.
VEGETATION, ROCK, WATER, FRESH_SNOW, OLD_SNOW, THIN_SNOW = 1, 2, 3, 4, 5, 6
SNOW_CLASSES = (FRESH_SNOW, OLD_SNOW, THIN_SNOW)
CLASS_NAMES = {VEGETATION: "vegetation", ROCK: "rock/soil", WATER: "water", FRESH_SNOW: "fresh snow",
               OLD_SNOW: "old/shaded snow", THIN_SNOW: "thin snow / mixed"}
# Cloud types of a pixel: none, bright (thick, or thin at edges by blending), thin "dark" cloud over snow.
NO_CLOUD, BRIGHT_CLOUD, DARK_CLOUD = 0, 1, 2

SHADOW_FACTOR = 0.35  # cloud shadow = class × 0.35
NOISE = 0.10  # uniform ±10 % multiplicative noise per pixel and band

#            B2    B3    B4  B8/B8A  B11   B12
_TABLE = {
    0: (0, 0, 0, 0, 0, 0),
    VEGETATION: (300, 600, 400, 3500, 1800, 900),
    ROCK: (900, 1200, 1500, 2300, 3000, 2500),
    WATER: (600, 500, 300, 200, 100, 50),
    FRESH_SNOW: (9000, 8800, 8500, 7500, 900, 600),
    OLD_SNOW: (3500, 3300, 3000, 2500, 500, 300),
    THIN_SNOW: (1500, 1400, 1200, 1800, 800, 500),
}
_CLOUDS = {
    NO_CLOUD: (0, 0, 0, 0, 0, 0),
    BRIGHT_CLOUD: (6000, 5800, 5600, 5800, 4000, 2800),
    DARK_CLOUD: (2600, 2500, 2400, 2400, 700, 500),
}


def _expand(six: tuple[int, ...]) -> list[float]:
    b2, b3, b4, b8, b11, b12 = six
    edge = [b4 + f * (b8 - b4) for f in (0.12, 0.60, 0.90)]
    return [b2, b3, b4, b8, *edge, b8, b11, b12]


def _lut(table: dict[int, tuple[int, ...]]) -> np.ndarray:
    out = np.zeros((max(table) + 1, len(BANDS)), dtype=np.float32)
    for code, six in table.items():
        out[code] = _expand(six)
    return out


def class_spectra() -> np.ndarray:
    """(class code, band) → mean reflectance ×10000, bands in `BANDS` order."""
    return _lut(_TABLE)


def cloud_spectra() -> np.ndarray:
    """(cloud type, band) → reflectance ×10000 of the cloud itself."""
    return _lut(_CLOUDS)

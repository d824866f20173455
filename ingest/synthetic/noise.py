"""Smooth random fields and small raster helpers, numpy only.

Fields are value noise: a random lattice interpolated with smoothstep weights (C1, no lattice creases), summed
over octaves (fBm). That is blurred white noise at a cost linear in the pixels, whatever the feature size,
which keeps a full 5490² field under a second without scipy.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _axis(n: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(n, dtype=np.float64) + 0.5) / cell
    i = np.floor(x).astype(np.intp)
    f = (x - i).astype(F32)
    return i, f * f * (3 - 2 * f)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Noise in [0, 1) varying over `cell` pixels."""
    h, w = shape
    cell = max(float(cell), 1.0)
    iy, fy = _axis(h, cell)
    ix, fx = _axis(w, cell)
    lattice = rng.random((int(iy[-1]) + 2, int(ix[-1]) + 2), dtype=F32)
    rows = lattice[:, ix] * (1 - fx) + lattice[:, ix + 1] * fx
    out = rows[iy]
    out *= (1 - fy)[:, None]
    low = rows[iy + 1]
    low *= fy[:, None]
    out += low
    return out


def fbm(rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int, *, gain: float = 0.5,
        ridged: bool = False, min_cell: float = 2.0) -> np.ndarray:
    """Fractal sum of value noise in [0, 1]; `ridged` folds each octave into sharp crests (mountain ridges)."""
    total = np.zeros(shape, dtype=F32)
    weight, amp = 0.0, 1.0
    for _ in range(octaves):
        if cell < min_cell and weight > 0:
            break
        layer = value_noise(rng, shape, cell)
        if ridged:
            layer = 1 - np.abs(2 * layer - 1)
            layer *= layer
        total += F32(amp) * layer
        weight += amp
        amp *= gain
        cell /= 2
    total /= F32(weight)
    return total


def up2(a: np.ndarray) -> np.ndarray:
    """20 m → 10 m by pixel replication, so that an R1 pixel always agrees with the R2 pixel it lies in."""
    return a.repeat(2, axis=0).repeat(2, axis=1)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)² square, by shifted ORs."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, 1:] |= out[:-1, :-1]
        grown[1:, :-1] |= out[:-1, 1:]
        grown[:-1, 1:] |= out[1:, :-1]
        grown[:-1, :-1] |= out[1:, 1:]
        out = grown
    return out


def quantile(a: np.ndarray, q: float, max_samples: int = 2_000_000) -> float:
    """Quantile estimated on a regular subsample (exact enough to set a cover fraction, much cheaper)."""
    step = max(1, int(np.sqrt(a.size / max_samples)))
    return float(np.quantile(a[::step, ::step], q))

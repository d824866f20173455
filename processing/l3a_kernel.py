"""The per-pixel L3A update, fused in one numba loop: one pass over a block per input date, whatever the bands.

Why one fused loop: the update reads ten int16 bands and three masks and updates float accumulators; numpy would
make a temporary per operation (classification, weights, interpolation, ten weighted sums) and run at a few per
cent of the memory bandwidth; one loop touches each byte once (docs/benchmarks.md measures it against a copy).

State of a block (one resolution group), WASP's `UpdateSynthesisFunctor` rules (products.md §4):
* land (not cloud, water or snow): acc[b] += w·ρ[b] (ρ directionally corrected), wsum += w, dsum += w·day,
  nobs += 1; the first land observation discards whatever snow, water or cloud value was kept before;
* snow or water (not cloud), never seen as land: keep the current ρ (weight 0), flag snow or water (water wins),
  date = day; seen as land: unchanged;
* cloud: never seen at all → keep ρ, flag cloud; cloud before → keep ρ only if its blue is darker; land, snow or
  water before: unchanged;
* a date whose pixel is no-data in any band of the group leaves the pixel unchanged.
Non-land states keep their value in `acc` with wsum = 0. A land weight is floored at `W_FLOOR`, so a pixel seen only
with zero weights (a clear hole under a huge cloud) still gets the plain mean of its land values, never 0/0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from processing.l3a_weights import land_weight

NODATA_FLAG, CLOUD, SNOW, WATER, LAND = 0, 1, 2, 3, 4  # FLG codes (WASP; 5 shadow and 6 saturation unused)
NODATA = -10000
W_FLOOR = 1e-6
WGT_SCALE = 1000.0


@njit(nogil=True, cache=True, inline="always")
def _bilinear(grid, i0, i1, fy, j0, j1, fx):
    top = grid[i0, j0] + (grid[i0, j1] - grid[i0, j0]) * fx
    bottom = grid[i1, j0] + (grid[i1, j1] - grid[i1, j0]) * fx
    return top + (bottom - top) * fy


def axis_samples(start: int, count: int, resolution: float, step: float, offset: float, size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear indices and fractions, along one axis, of the pixel centres `start … start+count-1` (pixels of
    `resolution` metres from the product's corner) in a coarse grid of `size` samples `step` apart."""
    pos = (np.arange(start, start + count, dtype=np.float64) + 0.5) * resolution / step - offset
    pos = np.clip(pos, 0.0, size - 1)
    i0 = np.floor(pos).astype(np.int32)
    i1 = np.minimum(i0 + 1, size - 1).astype(np.int32)
    return i0, i1, (pos - i0).astype(np.float32)


@njit(nogil=True, cache=True)
def update(refl, clm, mg2, aot, blue_now, cloud_bits,
           cgrid, cy0, cy1, cfy, cx0, cx1, cfx,
           fgrid, fy0, fy1, ffy, fx0, fx1, ffx, correct,
           w_date, day, aot_scale, aot_max, w_min, w_max,
           acc, wsum, dsum, blue, flag, nobs):
    """Fold one input date into the state of a block (see the module docstring)."""
    nb, rows, cols = refl.shape
    for r in range(rows):
        a0, a1, ay = cy0[r], cy1[r], cfy[r]
        b0, b1, by = fy0[r], fy1[r], ffy[r]
        for c in range(cols):
            valid = True
            for b in range(nb):
                if refl[b, r, c] == NODATA:
                    valid = False
                    break
            if not valid:
                continue
            cloud = (clm[r, c] & cloud_bits) != 0
            water = (mg2[r, c] & 1) != 0
            snow = (mg2[r, c] & 4) != 0
            state = flag[r, c]
            if not (cloud or water or snow):
                w_cloud = _bilinear(cgrid, a0, a1, ay, cx0[c], cx1[c], cfx[c])
                w = land_weight(w_date, aot[r, c], w_cloud, aot_scale, aot_max, w_min, w_max)
                if w < W_FLOOR:
                    w = W_FLOOR
                if state != LAND:
                    for b in range(nb):
                        acc[b, r, c] = 0.0
                    wsum[r, c] = 0.0
                    dsum[r, c] = 0.0
                    flag[r, c] = LAND
                for b in range(nb):
                    value = np.float32(refl[b, r, c])
                    if correct:
                        corrected = value * _bilinear(fgrid[b], b0, b1, by, fx0[c], fx1[c], ffx[c])
                        if corrected >= 0:
                            value = corrected
                    acc[b, r, c] += w * value
                wsum[r, c] += w
                dsum[r, c] += w * day
                if nobs[r, c] < 255:
                    nobs[r, c] += 1
            elif not cloud:
                if state != LAND:
                    for b in range(nb):
                        acc[b, r, c] = refl[b, r, c]
                    dsum[r, c] = day
                    flag[r, c] = WATER if water else SNOW
            else:
                darker = state == CLOUD and blue_now[r, c] < blue[r, c]
                if state == NODATA_FLAG or darker:
                    for b in range(nb):
                        acc[b, r, c] = refl[b, r, c]
                    dsum[r, c] = day
                    blue[r, c] = blue_now[r, c]
                    flag[r, c] = CLOUD


@njit(nogil=True, cache=True)
def finish(acc, wsum, dsum, flag, out_refl, out_wgt, out_dts):
    """The composite (int16 ρ×10000), WGT (int16 ×1000) and DTS (int16 days from the synthesis date) of a block;
    no-data (−10000) where no date had a valid observation."""
    nb, rows, cols = acc.shape
    for r in range(rows):
        for c in range(cols):
            state = flag[r, c]
            if state == NODATA_FLAG:
                for b in range(nb):
                    out_refl[b, r, c] = NODATA
                out_wgt[r, c] = NODATA
                out_dts[r, c] = NODATA
                continue
            if state == LAND:
                total = wsum[r, c]
                for b in range(nb):
                    out_refl[b, r, c] = _to_int16(acc[b, r, c] / total)
                out_wgt[r, c] = _to_int16(total * WGT_SCALE)
                out_dts[r, c] = _to_int16(dsum[r, c] / total)
            else:
                for b in range(nb):
                    out_refl[b, r, c] = _to_int16(acc[b, r, c])
                out_wgt[r, c] = 0
                out_dts[r, c] = _to_int16(dsum[r, c])


@njit(nogil=True, cache=True, inline="always")
def _to_int16(x):
    v = np.floor(x + 0.5)
    if v < NODATA + 1:
        v = NODATA + 1  # a value never collides with no-data
    elif v > 32767:
        v = 32767
    return np.int16(v)


@njit(nogil=True, cache=True)
def blue_at_half(b2, out):
    """B2 averaged over 2×2 pixels (10 m → 20 m) for the cloud rule of the 20 m bands (WASP resamples B2 likewise);
    +inf where a 10 m pixel is no-data, so such a pixel never counts as darker."""
    rows, cols = out.shape
    for r in range(rows):
        for c in range(cols):
            total = 0.0
            bad = False
            for dr in range(2):
                for dc in range(2):
                    rr, cc = 2 * r + dr, 2 * c + dc
                    if rr >= b2.shape[0] or cc >= b2.shape[1] or b2[rr, cc] == NODATA:
                        bad = True
                    else:
                        total += b2[rr, cc]
            out[r, c] = np.inf if bad else total / 4.0

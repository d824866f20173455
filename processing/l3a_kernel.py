"""The per-pixel L3A update, fused in one numba kernel: each input byte read once, the state once per group of dates.

Why fused: the update reads the bands and three masks of a date and updates float accumulators; numpy would make a
temporary per operation (classification, weights, interpolation, weighted sums) and run at a few per cent of the
memory bandwidth. The kernel walks rows, folds every date of a group into a row while it is in cache, and keeps
the common land path free of branches (docs/benchmarks.md measures it against a copy).

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


NODATA_FLAG, CLOUD, SNOW, WATER, LAND = 0, 1, 2, 3, 4  # FLG codes (WASP; 5 shadow and 6 saturation unused)
NODATA = -10000
W_FLOOR = 1e-6
WGT_SCALE = 1000.0


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
def _grid_row(grid, i, j0, j1, fx, out):
    """Row `i` of a coarse grid, linearly interpolated at the pixel columns (j0, j1, fx)."""
    for c in range(out.shape[0]):
        a = grid[i, j0[c]]
        out[c] = a + (grid[i, j1[c]] - a) * fx[c]


@njit(nogil=True, cache=True)
def _lerp(top, bottom, fy, out):
    for c in range(out.shape[0]):
        out[c] = top[c] + (bottom[c] - top[c]) * fy


@njit(nogil=True, cache=True)
def update(refl, clm, mg2, aot, blue_now, count, cloud_bits,
           cgrid, cy0, cy1, cfy, cx0, cx1, cfx,
           fgrid, fy0, fy1, ffy, fx0, fx1, ffx, correct,
           w_date, day, aot_scale, aot_max, w_min, w_max,
           acc, wsum, dsum, blue, flag, nobs):
    """Fold `count` input dates (the first of the group buffers, in order) into the state of a block.

    Inputs are stacked by date: refl (dates, bands, rows, cols), clm/mg2/aot/blue_now (dates, rows, cols), cgrid
    (dates, …) and fgrid (dates, bands, …) on shared axes; correct, w_date, day per date. Rows are the outer loop and
    dates the inner one, so a row of the state stays in cache while every date of the group folds into it: the
    state crosses memory once per group, not once per date.

    Per row and date, in passes the compiler vectorises: the coarse grids interpolated at every column (the two
    coarse rows around it are cached until the row crosses one); each pixel's kind and land weight (0 unless land);
    every band updated without a branch — `keep` is 0 where a first land observation replaces a kept snow, water or
    cloud value. The rarer snow, water and cloud pixels are then handled one by one (spatially coherent, so their
    branches are predictable). W_aot is `land_weight`'s formula in branch-free form."""
    _, nb, rows, cols = refl.shape
    w_cloud = np.empty(cols, np.float32)
    factor = np.ones((nb, cols), np.float32)
    cloud_rows = np.empty((count, 2, cols), np.float32)
    factor_rows = np.ones((count, 2, nb, cols), np.float32)
    weight = np.empty(cols, np.float32)
    keep = np.empty(cols, np.float32)
    kind = np.empty(cols, np.uint8)  # 0 skip (no-data), 1 land, 2 snow or water, 3 cloud
    # W_aot = max(w_min, w_max − (w_max − w_min)·AOT/AOT_max): linear down to w_min at AOT_max, never below
    w_lo, w_hi = np.float32(w_min), np.float32(w_max)
    slope = np.float32((w_max - w_min) / (aot_scale * aot_max))
    zero, one, floor = np.float32(0), np.float32(1), np.float32(W_FLOOR)
    last_c0, last_c1, last_f0, last_f1 = -1, -1, -1, -1
    for r in range(rows):
        new_c = cy0[r] != last_c0 or cy1[r] != last_c1  # crossed a coarse row: every 24 or 12 pixel rows
        new_f = fy0[r] != last_f0 or fy1[r] != last_f1
        last_c0, last_c1, last_f0, last_f1 = cy0[r], cy1[r], fy0[r], fy1[r]
        for g in range(count):
            if new_c:
                _grid_row(cgrid[g], cy0[r], cx0, cx1, cfx, cloud_rows[g, 0])
                _grid_row(cgrid[g], cy1[r], cx0, cx1, cfx, cloud_rows[g, 1])
            _lerp(cloud_rows[g, 0], cloud_rows[g, 1], cfy[r], w_cloud)
            if correct[g]:
                if new_f:
                    for b in range(nb):
                        _grid_row(fgrid[g, b], fy0[r], fx0, fx1, ffx, factor_rows[g, 0, b])
                        _grid_row(fgrid[g, b], fy1[r], fx0, fx1, ffx, factor_rows[g, 1, b])
                for b in range(nb):
                    _lerp(factor_rows[g, 0, b], factor_rows[g, 1, b], ffy[r], factor[b])
            else:
                factor[:] = one
            dayf = np.float32(day[g])
            for c in range(cols):
                kind[c] = np.uint8(1)
            for b in range(nb):
                for c in range(cols):
                    kind[c] = kind[c] if refl[g, b, r, c] != NODATA else np.uint8(0)
            others = 0
            wd = np.float32(w_date[g])
            for c in range(cols):
                cloud = np.uint8((clm[g, r, c] & cloud_bits) != 0)
                surface = np.uint8((mg2[g, r, c] & 5) != 0)  # water (bit 0) or snow (bit 2)
                k = kind[c] * (np.uint8(1) + (surface | cloud) + cloud)
                kind[c] = k
                others += np.int64(k > 1)
                land = k == 1
                wa = w_hi - slope * np.float32(aot[g, r, c])
                wa = wa if wa > w_lo else w_lo
                wc = w_cloud[c]
                wc = wc if wc < one else one
                wc = wc if wc > zero else zero
                w = wd * wa * wc
                w = w if w > floor else floor
                weight[c] = w if land else zero
                keep[c] = zero if (land and flag[r, c] != LAND) else one
            for b in range(nb):
                for c in range(cols):
                    value = np.float32(refl[g, b, r, c])
                    if value >= 0:
                        value *= factor[b, c]  # WASP keeps a negative value uncorrected
                    acc[b, r, c] = acc[b, r, c] * keep[c] + weight[c] * value
            for c in range(cols):
                land = kind[c] == 1
                wsum[r, c] = wsum[r, c] * keep[c] + weight[c]
                dsum[r, c] = dsum[r, c] * keep[c] + weight[c] * dayf
                nobs[r, c] += np.uint8(1) if land and nobs[r, c] < 255 else np.uint8(0)
                flag[r, c] = LAND if land else flag[r, c]
            if others > 0:
                _others(refl[g], mg2[g], blue_now[g], r, kind, dayf, acc, dsum, blue, flag)


@njit(nogil=True, cache=True)
def _others(refl, mg2, blue_now, r, kind, dayf, acc, dsum, blue, flag):  # one date: refl (bands, rows, cols)
    """Snow, water and cloud pixels of row `r`: WASP's replacement rules."""
    nb = refl.shape[0]
    for c in range(kind.shape[0]):
        state = flag[r, c]
        if kind[c] == 2:
            if state != LAND:
                for b in range(nb):
                    acc[b, r, c] = refl[b, r, c]
                dsum[r, c] = dayf
                flag[r, c] = WATER if (mg2[r, c] & 1) != 0 else SNOW
        elif kind[c] == 3:
            if state == NODATA_FLAG or (state == CLOUD and blue_now[r, c] < blue[r, c]):
                for b in range(nb):
                    acc[b, r, c] = refl[b, r, c]
                dsum[r, c] = dayf
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


@njit(nogil=True, cache=True)
def halve_mean(src, out):
    """One overview level of int16 bands (bands, rows, cols): the mean of each 2×2 window's valid pixels (a window
    cut by the edge takes what it has), rounded; no-data where none is valid — GDAL's AVERAGE with a no-data value."""
    nb, rows, cols = src.shape
    for b in range(nb):
        for r in range(out.shape[1]):
            for c in range(out.shape[2]):
                total = 0.0
                n = 0
                for dr in range(2):
                    for dc in range(2):
                        rr, cc = 2 * r + dr, 2 * c + dc
                        if rr < rows and cc < cols and src[b, rr, cc] != NODATA:
                            total += src[b, rr, cc]
                            n += 1
                out[b, r, c] = _to_int16(total / n) if n else NODATA

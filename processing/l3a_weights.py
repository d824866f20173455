"""The weights of the L3A synthesis and its directional model (WASP @88d3f64, products.md §4), on coarse grids.

Why coarse grids: the distance-to-cloud weight is two Gaussian blurs of a 240 m cloud mask (σ = 480 m and 2.4 km)
and the directional correction varies over 5 km angle grids. Both are computed once per input date for the whole
tile (a 458² grid at most), then interpolated bilinearly at each 10/20 m pixel by the block kernel: blocks need no
halo and stay independent, whatever the blur radius.

Deviations from WASP, all deliberate and documented in docs/architecture.md:
* the 240 m cloud mask is the cloud *fraction* of each 240 m cell thresholded at 0.5 (WASP: bicubic resampling of
  the binary mask, then the same threshold — for a 12× reduction both are a local mean);
* one coarse grid per date, from CLM_R2, serves both resolutions (WASP computes it from CLM_R1 and CLM_R2, which
  MAJA derives from the same coarse mask);
* the blur has a zero-flux (edge-replicating) boundary, as ITK's default, truncated at 5 σ (WASP: 801 px, i.e. the
  whole tile — the difference is below 1e-5);
* the combined weight (1 − Gs)(1 − Gl) is interpolated, not Gs and Gl separately;
* the directional factor M(θs,0,0)/M(θs,θv,φ) is computed at the angle-grid nodes and interpolated, rather than
  interpolating the angles (an azimuth does not interpolate across 0/360°).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from numba import njit

from processing.raster_io import RasterInputError

HOTSPOT_XI0 = math.radians(1.5)  # hot-spot width of the Li-Sparse-like kernel (WASP xsi_0)
TRUNCATE_SIGMAS = 5.0


@dataclass(frozen=True)
class CoarseGrid:
    """A small grid of values over the product, and where its samples are.

    Sample (i, j) sits at x = ulx + (j + offset)·step, y = uly − (i + offset)·step: offset 0.5 for cell centres
    (the 240 m cloud grid), 0 for nodes on cell corners (the 5 km angle grids).
    """

    values: np.ndarray  # float32 (rows, cols) or (bands, rows, cols)
    step: float  # metres between samples
    offset: float  # 0.5: cell centres; 0: nodes at the corners


@dataclass(frozen=True)
class ViewGeometry:
    """Sun and view angles of one L2A (degrees), as 5 km grids when the MTD has them, else their means."""

    sun_zenith: np.ndarray  # (rows, cols) grid, or (1, 1) mean
    sun_azimuth: np.ndarray
    view: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # band → (zenith, azimuth) grids
    step: float = 5000.0
    source: str = "grids"  # "grids", "means" or "none"


def date_weight(days: int, half_window: int, at_edge: float) -> float:
    """W_date = 1 − (|d|/half)(1 − at_edge): 1 at the synthesis date, `at_edge` at the window's edges.

    WASP computes `|d| / half` with C++ integer division, so its weight is 1 everywhere inside the window; landsurf
    implements the documented linear form.
    """
    return 1.0 - (min(abs(days), half_window) / half_window) * (1.0 - at_edge)


@njit(nogil=True, cache=True)
def land_weight(w_date: float, aot_dn: int, w_cloud: float, aot_scale: float, aot_max: float, w_min: float,
                w_max: float) -> float:
    """W = W_date · W_aot · W_cloud for one clear pixel, each factor in [0, 1] (WASP TotalWeight)."""
    aot = aot_dn / aot_scale
    if aot < 0:
        w_aot = 0.0
    elif aot < aot_max:
        w_aot = w_min + (w_max - w_min) * (1.0 - aot / aot_max)
    else:
        w_aot = w_min
    w = w_date * w_aot * w_cloud
    return min(max(w, 0.0), 1.0)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The n×n operator of a normalised 1-D Gaussian blur with an edge-replicating boundary."""
    radius = max(1, math.ceil(TRUNCATE_SIGMAS * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    op = np.zeros((n, n))
    rows = np.arange(n)
    for k, g in zip(offsets, kernel):
        np.add.at(op, (rows, np.clip(rows + k, 0, n - 1)), g)
    return op


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a small 2-D grid (rows and columns as two matrix products)."""
    rows, cols = image.shape
    return gaussian_matrix(rows, sigma) @ image.astype(np.float64) @ gaussian_matrix(cols, sigma).T


def cloud_weight_grid(cloud: np.ndarray, factor: int, *, threshold: float, sigma_small: float,
                      sigma_large: float) -> np.ndarray:
    """W_cloud on the coarse grid from a full-resolution binary cloud mask: `factor` pixels per coarse cell.

    Cells overlapping the raster's edge take the fraction of their pixels inside it. Returns float32 in [0, 1].
    """
    rows, cols = cloud.shape
    gh, gw = -(-rows // factor), -(-cols // factor)
    padded = np.zeros((gh * factor, gw * factor), np.uint8)
    padded[:rows, :cols] = cloud
    counts = padded.reshape(gh, factor, gw, factor).sum(axis=(1, 3), dtype=np.int32)
    inside = np.zeros((gh * factor, gw * factor), np.uint8)
    inside[:rows, :cols] = 1
    area = inside.reshape(gh, factor, gw, factor).sum(axis=(1, 3), dtype=np.int32)
    binary = (counts >= threshold * area).astype(np.float64)
    small = gaussian_blur(binary, sigma_small)
    large = gaussian_blur(binary, sigma_large)
    weight = (1.0 - small) * (1.0 - large)
    weight[(small >= 1.0 - 1e-9) | (large >= 1.0 - 1e-9)] = 0.0
    return np.clip(weight, 0.0, 1.0).astype(np.float32)


def read_cloud_grid(clm_path: Path, bits: int, coarse_m: float, *, threshold: float, sigma_small: float,
                    sigma_large: float) -> CoarseGrid:
    """The cloud-distance weight of one date from its CLM_R2 (or any CLM) file."""
    try:
        with rasterio.open(clm_path) as ds:
            res = abs(ds.transform.a)
            factor = coarse_m / res
            if abs(factor - round(factor)) > 1e-9 or round(factor) < 1:
                raise RasterInputError(f"{Path(clm_path).name}: {res:g} m pixels do not divide the {coarse_m:g} m "
                                       "cloud grid", "give MUSCATE masks (10 or 20 m)")
            clm = ds.read(1)
    except rasterio.errors.RasterioError as exc:
        raise RasterInputError(f"cannot read the cloud mask {clm_path}: {exc}", "check the L2A's CLM file") from exc
    cloud = (clm & bits) != 0
    values = cloud_weight_grid(cloud, round(factor), threshold=threshold, sigma_small=sigma_small,
                               sigma_large=sigma_large)
    return CoarseGrid(values, float(coarse_m), 0.5)


def _kernels(ts: np.ndarray, tv: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F_V (Ross-Thick) and F_R (Li-Sparse-like with hot spot) of WASP's DirectionalModel, angles in radians."""
    tan_s, tan_v = np.tan(ts), np.tan(tv)
    cos_s, cos_v = np.cos(ts), np.cos(tv)
    delta = np.sqrt(np.maximum(tan_s ** 2 + tan_v ** 2 - 2 * tan_s * tan_v * np.cos(phi), 0.0))
    mass = 1 / cos_s + 1 / cos_v
    cos_xi = np.clip(cos_s * cos_v + np.sin(ts) * np.sin(tv) * np.cos(phi), -1.0, 1.0)
    xi = np.arccos(cos_xi)
    sin_xi = np.sqrt(1 - cos_xi ** 2)
    trig = tan_s * tan_v * np.sin(phi)
    cos_t = np.clip(np.sqrt(delta ** 2 + trig ** 2) / mass, -1.0, 1.0)
    t = np.arccos(cos_t)
    sin_t = np.sqrt(1 - cos_t ** 2)
    f_v = mass / np.pi * (t - sin_t * cos_t - np.pi) + (1 + cos_xi) / 2 / cos_s / cos_v
    f_r = (4 / 3 / np.pi / (cos_s + cos_v) * ((np.pi / 2 - xi) * cos_xi + sin_xi)
           * (1 + 1 / (1 + xi / HOTSPOT_XI0)) - 1 / 3)
    return f_v, f_r


def directional_factor(sun_zenith, sun_azimuth, view_zenith, view_azimuth, k_v: float, k_r: float) -> np.ndarray:
    """M(θs, 0, 0) / M(θs, θv, φs − φv), M = 1 + kV·F_V + kR·F_R: multiplies a reflectance to bring it to nadir view
    at the same sun zenith. Degrees in; NaN angles (outside a detector) or a non-positive model give 1."""
    ts = np.radians(np.asarray(sun_zenith, dtype=np.float64))
    tv = np.radians(np.asarray(view_zenith, dtype=np.float64))
    phi = np.radians(np.asarray(sun_azimuth, dtype=np.float64) - np.asarray(view_azimuth, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        fv0, fr0 = _kernels(ts, np.zeros_like(tv), np.zeros_like(phi))
        fv, fr = _kernels(ts, tv, phi)
        factor = (1 + k_v * fv0 + k_r * fr0) / (1 + k_v * fv + k_r * fr)
    return np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)


def directional_grid(geometry: ViewGeometry, bands: Sequence[str], coefficients: Mapping[str, Sequence[float]],
                     extent_m: tuple[float, float]) -> CoarseGrid:
    """The factor of each band at the angle-grid nodes over a product of `extent_m` (height, width in metres):
    (bands, rows, cols) float32 with nodes on the grid's corners, 1 where angles are missing. Means give a constant
    grid of the same shape, so that every date of a synthesis has the same geometry."""
    step = geometry.step if geometry.source == "grids" else 5000.0
    shape = (math.ceil(extent_m[0] / step) + 1, math.ceil(extent_m[1] / step) + 1)
    out = np.ones((len(bands), *shape), np.float32)
    for i, band in enumerate(bands):
        if band not in geometry.view:
            continue
        zen, azi = geometry.view[band]
        k_v, k_r = coefficients[band]
        values = directional_factor(geometry.sun_zenith, geometry.sun_azimuth, zen, azi, k_v, k_r)
        out[i] = _fit(values, shape)
    return CoarseGrid(out, step, 0.0)


def _fit(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A grid cropped or edge-padded to `shape` (a 1×1 grid becomes a constant)."""
    values = values[: shape[0], : shape[1]]
    pad = ((0, shape[0] - values.shape[0]), (0, shape[1] - values.shape[1]))
    return np.pad(values, pad, mode="edge")


def _strip(doc: ET.Element) -> ET.Element:
    for el in doc.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return doc


def _values(el: ET.Element | None) -> np.ndarray | None:
    if el is None:
        return None
    rows = [[float(v) for v in (row.text or "").split()] for row in el.iterfind("Values_List/VALUES")]
    if not rows or any(len(r) != len(rows[0]) for r in rows) or not rows[0]:
        return None
    return np.array(rows, np.float64)


def _mean(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def read_geometry(mtd: Path | None, bands: Sequence[str]) -> ViewGeometry:
    """Sun and view angles of an L2A from its MTD_ALL.xml: the 5 km grids (view grids of all detectors merged, the
    first defined value wins), else the mean angles, else none (no directional correction for that date)."""
    nan = np.full((1, 1), np.nan)
    if mtd is None:
        return ViewGeometry(nan, nan, {}, source="none")
    try:
        doc = _strip(ET.parse(mtd).getroot())
    except (ET.ParseError, OSError) as exc:
        raise RasterInputError(f"cannot read the angles of {Path(mtd).name}: {exc}", "give the L2A's MTD_ALL.xml"
                               ) from exc
    grids = doc.find("Geometric_Informations/Angles_Grids_List")
    sun_z = _values(grids.find("Sun_Angles_Grids/Zenith")) if grids is not None else None
    sun_a = _values(grids.find("Sun_Angles_Grids/Azimuth")) if grids is not None else None
    if sun_z is not None and sun_a is not None and sun_z.shape == sun_a.shape:
        step = _mean(grids.findtext("Sun_Angles_Grids/Zenith/COL_STEP"))
        view: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for band_el in grids.iterfind("Viewing_Incidence_Angles_Grids_List/Band_Viewing_Incidence_Angles_Grids_List"):
            band = band_el.get("band_id", "")
            if band not in bands:
                continue
            zen, azi = np.full(sun_z.shape, np.nan), np.full(sun_z.shape, np.nan)
            for det in band_el.iterfind("Viewing_Incidence_Angles_Grids"):
                z, a = _values(det.find("Zenith")), _values(det.find("Azimuth"))
                if z is None or a is None or z.shape != sun_z.shape or a.shape != sun_z.shape:
                    continue
                take = np.isnan(zen) & np.isfinite(z) & np.isfinite(a)
                zen[take], azi[take] = z[take], a[take]
            view[band] = (zen, azi)
        if view and math.isfinite(step) and step > 0:
            return ViewGeometry(sun_z, sun_a, view, float(step), "grids")
    means = doc.find("Geometric_Informations/Mean_Value_List")
    if means is None:
        return ViewGeometry(nan, nan, {}, source="none")
    sun = (np.full((1, 1), _mean(means.findtext("Sun_Angles/ZENITH_ANGLE"))),
           np.full((1, 1), _mean(means.findtext("Sun_Angles/AZIMUTH_ANGLE"))))
    view = {}
    for el in means.iterfind("Mean_Viewing_Incidence_Angle_List/Mean_Viewing_Incidence_Angle"):
        if el.get("band_id") in bands:
            view[el.get("band_id")] = (np.full((1, 1), _mean(el.findtext("ZENITH_ANGLE"))),
                                       np.full((1, 1), _mean(el.findtext("AZIMUTH_ANGLE"))))
    if not view or not np.isfinite(sun[0]).all():
        return ViewGeometry(nan, nan, {}, source="none")
    return ViewGeometry(sun[0], sun[1], view, step=1e12, source="means")

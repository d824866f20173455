"""Synthetic MUSCATE Sentinel-2 L2A deliveries, faithful to products.md §1 and §6 (issue 4).

`generate_l2a` writes one product `<ID>.zip` (one top folder `<ID>/`) or the folder itself, where
`<ID> = {PLATFORM}_{YYYYMMDD}-{HHMMSS}-{mmm}_L2A_T{TILE}_C_V{major}-{minor}`: FRE and SRE of B2 B3 B4 B8 (R1, 10 m)
and B5 B6 B7 B8A B11 B12 (R2, 20 m), int16 ρ×10000 with −10000 where EDG = 1; ATB_R1/R2; MASKS/ CLM, MG2, SAT,
EDG, IAB at R1 and R2; QKL_ALL.jpg; MTD_ALL.xml. GeoTIFFs in EPSG:326zz/327zz from the tile's upper-left corner;
`size` R1 pixels a side (10980 = full tile, R2 = size/2). Output is deterministic in (seed, tile, date, size,
options): same arguments, same bytes, zip included. Products appear atomically (built in a hidden temporary
folder of the output directory, then renamed), so an inbox never sees half a delivery.

Ground truth, written outside the product, in `truth_dir` (default: next to it):
* `<ID>_TRUTH.tif` — uint8, R2 grid of the product (same CRS, transform and size), no no-data value, DEFLATE,
  bands named by their descriptions: 1 `snow` (0/1, true surface snow, fresh, old or thin, also under clouds),
  2 `cloud` (0/1, true cloud: thick, thin edges, dark thin cloud over snow, cirrus; the CLM extension rim is
  not a cloud), 3 `shadow` (0/1, true cloud shadow not under a cloud), 4 `water` (0/1, lakes and river, static),
  5 `class` (surface class: 1 vegetation, 2 rock/soil, 3 water, 4 fresh snow, 5 old snow, 6 thin snow — the
  spectra of `ingest.synthetic.spectra`). Truth covers the whole grid, also outside the swath.
* `T<TILE>_ALT_R2.tif` — the DEM, int16 metres, same R2 grid; static for a (seed, tile, size), so one per
  directory (products of different seeds or sizes need different truth directories).
The daily snow truth of any day (for snow-duration checks) is `surface_classes(build_landscape(...), day)`.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import rasterio

from ingest.synthetic.grid import FULL_R1, TileGrid, tile_grid
from ingest.synthetic.landscape import Landscape, build_landscape, stream
from ingest.synthetic.mtd import ANGLE_STEP_M, Angles, build_mtd, product_files
from ingest.synthetic.noise import up2
from ingest.synthetic.raster import ENV, FolderSink, Sink, ZipSink, write_quicklook, write_reflectances, write_tif
from ingest.synthetic.scene import Scene, build_scene, sun_angles
from ingest.synthetic.spectra import BANDS, SNOW_CLASSES

PLATFORMS = ("SENTINEL2A", "SENTINEL2B")
TRUTH_BANDS = ("snow", "cloud", "shadow", "water", "class")


@dataclass(frozen=True)
class GeneratedProduct:
    path: Path  # the zip, or the product folder
    product_id: str
    truth_path: Path
    dem_path: Path
    cloud_percent: int  # as in the MTD: CLM bit0 over valid pixels
    snow_percent: int  # as in the MTD: MG2 bit2 over valid pixels
    acquired: datetime
    platform: str


def product_id(platform: str, when: datetime, tile: str, version: str = "1-0") -> str:
    return (f"{platform}_{when:%Y%m%d-%H%M%S}-{when.microsecond // 1000:03d}_L2A_T{tile_grid(tile).tile}"
            f"_C_V{_version(version)}")


def generate_l2a(out_dir: Path, tile: str, when: datetime | date, *, seed: int = 0, size: int = 1098,
                 version: str = "1-0", platform: str | None = None, as_zip: bool = True,
                 production: datetime | None = None, cloud_cover: float | None = None,
                 swath_edge: bool | None = None, deflate: bool = False, truth_dir: Path | None = None,
                 landscape: Landscape | None = None) -> GeneratedProduct:
    """Write one L2A product and its truth sidecars.

    `cloud_cover` (0–1) overrides the drawn cover (1 = fully cloudy); `swath_edge` forces or forbids the
    no-data triangle; `deflate` also compresses the bands; `landscape` reuses a built landscape (a series).
    A naive `when` is UTC; a date alone is sensed at 10:40 UTC. `(out_dir, when, tile)` is accepted too.
    """
    if isinstance(tile, date) and isinstance(when, str):
        tile, when = when, tile
    grid = tile_grid(tile)
    if size % 2 or not 64 <= size <= FULL_R1:
        raise ValueError(f"size must be an even number of 10 m pixels in [64, {FULL_R1}], got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    when = _utc(when)
    platform = platform or PLATFORMS[(when.date().toordinal() // 5) % 2]
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    produced = _utc(production) if production else datetime.combine(
        when.date() + timedelta(days=2), time(3, 14, 27, 318000), timezone.utc)
    pid = product_id(platform, when, grid.tile, version)
    land = landscape or build_landscape(grid, size // 2, seed)
    if (land.grid, land.size, land.seed) != (grid, size // 2, seed):
        raise ValueError("the landscape given was built for another tile, size or seed")
    scene = build_scene(land, when, cloud_cover=cloud_cover, swath_edge=swath_edge)
    out_dir, truth_dir = Path(out_dir), Path(truth_dir or out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth_path = truth_dir / f"{pid}_TRUTH.tif"
    dem_path = truth_dir / f"T{grid.tile}_ALT_R2.tif"
    target = out_dir / (f"{pid}.zip" if as_zip else pid)
    with rasterio.Env(**ENV), TemporaryDirectory(dir=out_dir, prefix=".landsurf-generate-") as tmp:
        staged = Path(tmp) / target.name
        if as_zip:
            with zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                cloud_pct, snow_pct = _write_product(ZipSink(zf, pid, produced), pid, grid, land, scene, when,
                                                     produced, platform, deflate)
        else:
            cloud_pct, snow_pct = _write_product(FolderSink(staged), pid, grid, land, scene, when, produced,
                                                 platform, deflate)
        _write_truth(Path(tmp), truth_path, dem_path, grid, land, scene)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged, target)
    return GeneratedProduct(target, pid, truth_path, dem_path, cloud_pct, snow_pct, when, platform)


def iter_series(out_dir: Path, tile: str, start: date, end: date, every_days: int = 5, *, seed: int = 0,
                size: int = 1098, version: str = "1-0", as_zip: bool = True, deflate: bool = False,
                truth_dir: Path | None = None, overcast: Collection[date] = ()) -> Iterator[GeneratedProduct]:
    """Products every `every_days` from `start` to `end` inclusive, alternating SENTINEL2A/B, sensed at a fixed
    time of the tile between 10:30 and 10:50 UTC (± 20 s); dates in `overcast` are fully cloudy."""
    if every_days < 1:
        raise ValueError(f"every_days must be >= 1, got {every_days}")
    grid = tile_grid(tile)
    land = build_landscape(grid, size // 2, seed)
    base = 10 * 3600 + 30 * 60 + 20 + zlib.crc32(grid.tile.encode()) % 1160  # ± 20 s stays in 10:30-10:50
    for k in range((end - start).days // every_days + 1):
        day = start + timedelta(days=k * every_days)
        rng = stream(seed, grid.tile, 5, day.toordinal())
        seconds = base + int(rng.integers(-20, 21))
        when = datetime.combine(day, time(seconds // 3600, seconds // 60 % 60, seconds % 60,
                                          int(rng.integers(0, 1000)) * 1000), timezone.utc)
        yield generate_l2a(out_dir, grid.tile, when, seed=seed, size=size, version=version,
                           platform=PLATFORMS[k % 2], as_zip=as_zip, deflate=deflate, truth_dir=truth_dir,
                           cloud_cover=1.0 if day in overcast else None, landscape=land)


def generate_series(out_dir: Path, tile: str, start: date, end: date, every_days: int = 5, *, seed: int = 0,
                    size: int = 1098, version: str = "1-0", as_zip: bool = True, deflate: bool = False,
                    truth_dir: Path | None = None, overcast: Collection[date] = ()) -> list[GeneratedProduct]:
    return list(iter_series(out_dir, tile, start, end, every_days, seed=seed, size=size, version=version,
                            as_zip=as_zip, deflate=deflate, truth_dir=truth_dir, overcast=overcast))


def _write_product(sink: Sink, pid: str, grid: TileGrid, land: Landscape, scene: Scene, when: datetime,
                   produced: datetime, platform: str, deflate: bool) -> tuple[int, int]:
    files = product_files(pid)
    transforms = {"R1": grid.transform(10), "R2": grid.transform(20)}
    streams = [stream(land.seed, grid.tile, 3, when.date().toordinal(), i) for i in range(len(BANDS))]
    sat, quicklook = write_reflectances(sink, files, scene, streams, transforms, grid.epsg, deflate=deflate)
    atb = np.stack([scene.vap, scene.aot])
    masks = {"CLM": scene.clm, "MG2": scene.mg2, "SAT": None, "EDG": scene.edge.astype(np.uint8),
             "IAB": scene.iab}
    for group, transform in transforms.items():
        for name, mask in masks.items():
            data = sat[group] if mask is None else up2(mask) if group == "R1" else mask
            write_tif(sink, files[f"{name}_{group}"], data, transform, grid.epsg)
        data = up2(atb.transpose(1, 2, 0)).transpose(2, 0, 1) if group == "R1" else atb
        write_tif(sink, files[f"ATB_{group}"], data, transform, grid.epsg, nodata=0)
    write_quicklook(sink, files["thumbnail"], quicklook)
    valid = ~scene.edge
    cloud_pct = _percent(scene.clm & 1, valid)
    snow_pct = _percent((scene.mg2 >> 2) & 1, valid)
    sizes = {group: sink.shapes[files[key]] for group, key in (("R1", "FRE_B2"), ("R2", "FRE_B5"))}
    sink.write_bytes(files["metadata"], build_mtd(
        product_id=pid, platform=platform, acquired=when, produced=produced, grid=grid, sizes=sizes,
        angles=_angles(land, scene, when), orbit=1 + zlib.crc32(grid.tile.encode()) % 143,
        cloud_percent=cloud_pct, snow_percent=snow_pct, corners=_corners(grid, sizes["R1"][0] * 10),
        band_compression="DEFLATE" if deflate else "None"))
    return cloud_pct, snow_pct


def _write_truth(tmp: Path, truth_path: Path, dem_path: Path, grid: TileGrid, land: Landscape,
                 scene: Scene) -> None:
    snow = np.isin(scene.classes, SNOW_CLASSES)
    truth = np.stack([snow, scene.cloud, scene.shadow, land.water]).astype(np.uint8)
    truth = np.concatenate([truth, scene.classes[None]])
    transform = grid.transform(20)
    write_tif(tmp, truth_path.name, truth, transform, grid.epsg, descriptions=TRUTH_BANDS)
    os.replace(tmp / truth_path.name, truth_path)
    write_tif(tmp, dem_path.name, np.rint(land.dem).astype(np.int16), transform, grid.epsg,
              descriptions=("elevation",))
    os.replace(tmp / dem_path.name, dem_path)


def _percent(flag: np.ndarray, valid: np.ndarray) -> int:
    """Rounded percentage (half up) of flagged pixels among valid ones."""
    total = int(valid.sum())
    return 0 if total == 0 else math.floor(100 * int(flag[valid].sum()) / total + 0.5)


def _angles(land: Landscape, scene: Scene, when: datetime) -> Angles:
    from pyproj import Transformer

    rng = stream(land.seed, land.grid.tile, 4, when.date().toordinal())
    zenith = rng.uniform(2, 10)
    azimuth = (105.0 if rng.random() < 0.5 else 285.0) + rng.uniform(-5, 5)
    view = {b: (zenith + 0.02 * i, azimuth + 0.1 * i) for i, b in enumerate(BANDS)}
    to_ll = Transformer.from_crs(land.grid.epsg, 4326, always_xy=True)
    nodes = math.ceil(land.size * 20 / ANGLE_STEP_M) + 1
    zen_grid, azi_grid = [], []
    for r in range(nodes):
        row = [sun_angles(when, *to_ll.transform(land.grid.ulx + c * ANGLE_STEP_M, land.grid.uly - r * ANGLE_STEP_M))
               for c in range(nodes)]
        zen_grid.append([z for z, _ in row])
        azi_grid.append([a for _, a in row])
    return Angles(scene.sun_zenith, scene.sun_azimuth, view, zen_grid, azi_grid)


def _corners(grid: TileGrid, extent: int) -> dict[str, tuple[float, float, float, float]]:
    from pyproj import Transformer

    to_ll = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    x0, y0 = grid.ulx, grid.uly
    points = {"upperLeft": (x0, y0), "upperRight": (x0 + extent, y0), "lowerRight": (x0 + extent, y0 - extent),
              "lowerLeft": (x0, y0 - extent), "center": (x0 + extent // 2, y0 - extent // 2)}
    return {name: (*reversed(to_ll.transform(x, y)), x, y) for name, (x, y) in points.items()}


def _utc(t: datetime | date) -> datetime:
    if not isinstance(t, datetime):
        return datetime.combine(t, time(10, 40), timezone.utc)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _version(version: str) -> str:
    major, sep, minor = version.replace(".", "-").partition("-")
    if not (major.isdigit() and sep and minor.isdigit()):
        raise ValueError(f"version must look like 1-0 (or 1.0), got {version!r}")
    return f"{int(major)}-{int(minor)}"

"""The monthly Level-3A synthesis of one tile (WASP-like, products.md §4), as one typed stage.

`synthesize(inputs, when, params, out_dir)` folds the L2As acquired within ±23 days of `when` (the 15th of a month
by convention) into a weighted-average composite of flat reflectance, and writes the product's COGs, quicklook and
metadata in `out_dir/<ID>/`. Three passes, each a set of independent tasks, run on Dask (a `LocalCluster`, any
scheduler address, or in-process for small jobs — `processing.raster_io.dask_client`):
1. per date, the 240 m distance-to-cloud weight and the directional factors (small grids, `l3a_weights`);
2. per block of whole COG blocks, every date's window folded into the block's state by a fused numba kernel
   (`l3a_kernel`), memory bounded by the block and flat in the number of dates (`l3a_block`);
3. per output, the COG assembled from the block pieces (`l3a_output`).

Conventions (see docs/architecture.md): DTS is in days from the synthesis date (negative before it), not WASP's
day of year, so that December/January windows are well defined; NOBS (our extension) is the number of clear land
observations averaged into a pixel; inputs are folded in acquisition order whatever order they are given in.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from catalog.collections import processing_software
from catalog.errors import BadRequest
from ingest.model import CogFile
from ingest.settings import IngestSettings
from processing.l3a_block import (GROUPS, BlockTask, DateGrids, DateInput, KernelParams, close_datasets,
                                  overview_factors, run_block)
from processing.l3a_output import MtdFacts, build_mtd, encode_cog, output_bands, write_vrt
from processing.l3a_weights import date_weight, directional_grid, read_cloud_grid, read_geometry
from processing.params import check_keys, load_params
from processing.raster_io import Grid, RasterInputError, dask_client, grid_of, require_grid, write_bytes
from processing.settings import ProcessingSettings

BANDS = GROUPS["R1"][0] + GROUPS["R2"][0]
REQUIRED = tuple(f"FRE_{b}" for b in BANDS) + tuple(f"{m}_{g}" for m in ("CLM", "MG2", "ATB") for g in GROUPS)
BLOCK_ROWS = 512  # R2 rows per block: one COG block row at 20 m, two at 10 m
BLOCK_COLS = 1536  # R2 columns per block: three COG blocks at 20 m, six at 10 m (~0.4 GB per worker)
Progress = Callable[[str, int, int], None]


class L3AInputError(BadRequest):
    """The inputs cannot make one synthesis: outside the window, of several tiles, duplicated, or incomplete."""


@dataclass(frozen=True)
class L3AParams:
    """The `l3a` parameter set (processing/params/l3a.toml), typed; `version_hash` identifies it."""

    half_window_days: int
    date_weight_min: float
    aot_weight_min: float
    aot_weight_max: float
    aot_max: float
    aot_quantification: float
    coarse_resolution_m: float
    cloud_threshold: float
    cloud_sigma_small_px: float
    cloud_sigma_large_px: float
    cloud_mask_bits: int
    directional_correction: bool
    scattering: dict[str, tuple[float, float]]
    version_hash: str = ""
    values: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any], version_hash: str) -> "L3AParams":
        names = {f for f in cls.__dataclass_fields__ if f not in ("version_hash", "values")}
        check_keys("l3a", values, names)
        missing = sorted(set(BANDS) - set(values["scattering"]))
        if missing:
            raise L3AInputError(f"parameter set l3a: no scattering coefficients for {', '.join(missing)}",
                                "give [kV, kR] for every band")
        typed = {k: values[k] for k in names} | {
            "scattering": {b: (float(v[0]), float(v[1])) for b, v in values["scattering"].items()}}
        return cls(**typed, version_hash=version_hash, values=values)

    @classmethod
    def load(cls, name: str = "l3a") -> "L3AParams":
        values, version_hash = load_params(name)
        return cls.from_dict(values, version_hash)

    def kernel(self) -> KernelParams:
        return KernelParams(self.cloud_mask_bits, float(self.aot_quantification), self.aot_max,
                            self.aot_weight_min, self.aot_weight_max)


@dataclass(frozen=True)
class L3AInput:
    """One L2A given to a synthesis: its id and published files (asset key → path); `mtd` gives its angles."""

    product_id: str
    files: Mapping[str, Path]
    mtd: Path | None = None

    @property
    def platform(self) -> str:
        return self.product_id.split("_")[0]

    @property
    def acquired(self) -> datetime:
        stamp = self.product_id.split("_")[1]
        return datetime.strptime(stamp, "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc)

    @property
    def tile(self) -> str:
        return self.product_id.split("_")[3].removeprefix("T")


def l3a_input(product_id: str, files: Mapping[str, Path | str]) -> L3AInput:
    """An input from an L2A's published files keyed as its item's assets (`metadata` is the MTD, for angles)."""
    paths = {k: Path(v) for k, v in files.items()}
    return L3AInput(product_id, {k: v for k, v in paths.items() if k in REQUIRED}, paths.get("metadata"))


@dataclass(frozen=True)
class L3AProduct:
    """A written synthesis: what the orchestrator publishes (files keyed as the L3A collection's assets)."""

    product_id: str
    tile: str
    date: date
    platform: str
    version: str
    folder: Path
    files: dict[str, CogFile]
    cloud_percent: float
    snow_percent: float
    inputs: tuple[str, ...]  # L2A product ids, in acquisition order: the item's `derived_from`
    window: tuple[date, date]
    params_hash: str
    epsg: int
    directional: dict[str, str]  # input id → "grids" | "means" | "none" | "off"
    timings: dict[str, float]


def synthesis_date(year: int, month: int) -> date:
    """The date of a monthly synthesis: the 15th (Theia's L3A are dated so)."""
    return date(year, month, 15)


def window(when: date, params: L3AParams) -> tuple[date, date]:
    """First and last acquisition day an input may have."""
    from datetime import timedelta

    half = timedelta(days=params.half_window_days)
    return when - half, when + half


def platform_of(inputs: Sequence[L3AInput]) -> str:
    """SENTINEL2X when several Sentinel-2 platforms contribute, else the single one."""
    platforms = {i.platform for i in inputs}
    return "SENTINEL2X" if len(platforms) > 1 else platforms.pop()


def product_id(platform: str, when: date, tile: str, version: str) -> str:
    return f"{platform}_{when:%Y%m%d}-000000-000_L3A_T{tile}_C_V{version}"


def _check(inputs: Sequence[L3AInput], when: date, params: L3AParams) -> list[L3AInput]:
    if not inputs:
        raise L3AInputError(f"no L2A given for the synthesis of {when}", "give the L2As of the ±23-day window")
    try:
        ordered = sorted(inputs, key=lambda i: i.acquired)
        tiles = {i.tile for i in ordered}
    except (IndexError, ValueError) as exc:
        raise L3AInputError(f"an input id is not a MUSCATE L2A id: {exc}", "give L2A product ids") from exc
    if len(tiles) != 1:
        raise L3AInputError(f"inputs of several tiles: {', '.join(sorted(tiles))}", "give the L2As of one tile")
    ids = [i.product_id for i in ordered]
    if len(set(ids)) != len(ids) or len({i.acquired for i in ordered}) != len(ids):
        raise L3AInputError("an acquisition is given twice (same id or same sensing time)",
                            "give each acquisition once, in its current version")
    first, last = window(when, params)
    for i in ordered:
        if not first <= i.acquired.date() <= last:
            raise L3AInputError(f"{i.product_id} is outside the window {first} – {last} of {when}",
                                "give only L2As acquired within ±23 days of the synthesis date")
        missing = [k for k in REQUIRED if k not in i.files]
        if missing:
            raise L3AInputError(f"{i.product_id} lacks {', '.join(missing)}", "give every FRE band, CLM, MG2, ATB")
    return ordered


def _grids(inputs: Sequence[L3AInput]) -> dict[str, Grid]:
    """The R1/R2 grids of the synthesis (from the first input), every file of every input checked against them."""
    first = inputs[0]
    grids = {"R1": grid_of(first.files["FRE_B2"], "R1 band"), "R2": grid_of(first.files["FRE_B5"], "R2 band")}
    if not grids["R2"].scaled(2).matches(grids["R1"]):
        raise RasterInputError(f"{first.product_id}: R1 is not R2 at twice the resolution", "give MUSCATE L2As")
    for i in inputs:
        for key in REQUIRED:
            group = "R1" if key.endswith("R1") or key[4:] in GROUPS["R1"][0] else "R2"
            require_grid(i.files[key], grids[group], f"{i.product_id} {key}")
    return grids


def date_grids(date_input: DateInput, mtd: str | None, params: L3AParams, extent_m: tuple[float, float]
               ) -> DateGrids:
    """Pass 1 for one date (runs on a worker): W_cloud at 240 m and the directional factors of each group over a
    product of `extent_m` (height, width in metres)."""
    cloud = read_cloud_grid(Path(date_input.files["CLM_R2"]), params.cloud_mask_bits, params.coarse_resolution_m,
                            threshold=params.cloud_threshold, sigma_small=params.cloud_sigma_small_px,
                            sigma_large=params.cloud_sigma_large_px)
    geometry = read_geometry(Path(mtd) if mtd else None, BANDS)
    factors = {g: directional_grid(geometry, GROUPS[g][0], params.scattering, extent_m) for g in GROUPS}
    return DateGrids(cloud, factors, geometry.source)


def _plan(grid_r2: Grid, scratch: Path, block: tuple[int, int] | None) -> list[BlockTask]:
    """Blocks of whole COG blocks at both resolutions (`BLOCK_ROWS` × `BLOCK_COLS` R2 pixels): a full tile makes
    44, enough to keep a few workers busy to the end. `block` (R2 rows, columns) overrides the shape (tests)."""
    width, height = grid_r2.width, grid_r2.height
    block_rows, step = block or (BLOCK_ROWS, BLOCK_COLS)
    crs = grid_r2.crs
    t = grid_r2.transform
    levels = {}
    for group, (_, _, scale) in GROUPS.items():
        factors = overview_factors(width * scale, height * scale)
        # a block makes its own overviews when its pixels tile every level (else the encoder builds them)
        if all((block_rows * scale) % f == 0 and (step * scale) % f == 0 for f in factors):
            levels[group] = tuple(factors)
    tasks = []
    for row0 in range(0, height, block_rows):
        for col0 in range(0, width, step):
            tasks.append(BlockTask(len(tasks), row0, min(block_rows, height - row0), col0, min(step, width - col0),
                                   str(scratch), crs, (t.a, t.b, t.c, t.d, t.e, t.f), levels))
    return tasks


def synthesize(inputs: Sequence[L3AInput], when: date, params: L3AParams, out_dir: Path, *, version: str = "1-0",
               scheduler: str | None = None, settings: ProcessingSettings | None = None,
               block: tuple[int, int] | None = None, compress: str | None = None,
               progress: Progress | None = None) -> L3AProduct:
    """Write the L3A of `when` from `inputs` into `out_dir/<ID>/` and describe it.

    `scheduler`: None follows the settings (`dask_scheduler`, else a LocalCluster for large work, else in-process);
    `"inline"` runs in this process; `"local"` forces a LocalCluster; anything else is a Dask scheduler address.
    `compress`: the COG compression, by default the one ingest publishes L2As with (`LANDSURF_INGEST_COMPRESS`).
    `block` (R2 rows, columns) overrides the block shape. `progress(stage, done, total)` follows the passes.
    The folder appears complete or not at all (written as `.<ID>.<random>.part`, then renamed; a crash leaves such
    a hidden folder, which any cleanup may remove when no synthesis runs).
    """
    started = time.perf_counter()
    settings = settings or ProcessingSettings()
    ordered = _check(inputs, when, params)
    grids = _grids(ordered)
    tile, platform = ordered[0].tile, platform_of(ordered)
    pid = product_id(platform, when, tile, version)
    final = Path(out_dir) / pid
    if final.exists():
        raise L3AInputError(f"{final} exists", "remove it, or give another version")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{pid}.", suffix=".part", dir=out_dir))  # never another job's
    scratch = part / "blocks"
    scratch.mkdir()
    dates = [DateInput(i.product_id, {k: str(v) for k, v in i.files.items()}, (i.acquired.date() - when).days,
                       date_weight((i.acquired.date() - when).days, params.half_window_days, params.date_weight_min),
                       params.directional_correction and i.mtd is not None) for i in ordered]
    mtds = [str(i.mtd) if i.mtd else None for i in ordered]
    work = grids["R1"].width * grids["R1"].height * len(ordered)
    timings: dict[str, float] = {}
    try:
        with _client(scheduler, settings, work) as client:
            tasks = _plan(grids["R2"], scratch, block)
            run = _Runner(client, progress)
            t0 = time.perf_counter()
            r2 = grids["R2"]
            extent = (r2.height * r2.resolution, r2.width * r2.resolution)
            per_date = run.map("grids", date_grids, [(d, m, params, extent) for d, m in zip(dates, mtds)])
            timings["grids_s"] = time.perf_counter() - t0
            grids_ref = run.share(per_date)
            t0 = time.perf_counter()
            try:
                blocks = run.map("blocks", run_block, [(t, dates, grids_ref, params.kernel()) for t in tasks])
            finally:
                opened = {p for d in dates for p in d.files.values()}
                client.run(close_datasets, opened) if client is not None else close_datasets(opened)
            timings["blocks_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            files = _encode(run, part, pid, blocks, grids, "1" if client is not None else "ALL_CPUS",
                            compress or IngestSettings().compress)
            timings["encode_s"] = time.perf_counter() - t0
        counts = [sum(b.flag_counts[k] for b in blocks) for k in range(5)]
        valid = sum(counts[1:])
        cloud_pct = round(100 * counts[1] / valid, 2) if valid else 0.0
        snow_pct = round(100 * counts[2] / valid, 2) if valid else 0.0
        shutil.rmtree(scratch)
        from processing.quicklook import l3a_quicklook

        files["thumbnail"] = write_bytes(part / f"{pid}_QKL_ALL.jpg", l3a_quicklook(
            {k: f.path for k, f in files.items()}), "thumbnail", "image/jpeg")
        first, last = window(when, params)
        geoposition = {g: (grid.transform.c, grid.transform.f, grid.transform.a, grid.transform.e, grid.height,
                           grid.width) for g, grid in grids.items()}
        mtd = build_mtd(MtdFacts(
            pid, platform, tile, when, first, last, version, datetime.now(timezone.utc), grids["R2"].epsg or 0,
            geoposition, {k: f.path.name for k, f in files.items()} | {"thumbnail": f"{pid}_QKL_ALL.jpg"},
            _half_up(cloud_pct), _half_up(snow_pct), [i.product_id for i in ordered], params.values,
            params.version_hash, f"landsurf {processing_software()['landsurf']}"))
        files["metadata"] = write_bytes(part / f"{pid}_MTD_ALL.xml", mtd, "metadata", "application/xml")
        part.rename(final)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    files = {k: CogFile(f.key, final / f.path.name, f.size, f.checksum, f.media_type) for k, f in files.items()}
    timings["total_s"] = time.perf_counter() - started
    directional = {i.product_id: g.angles if params.directional_correction else "off"
                   for i, g in zip(ordered, per_date)}
    return L3AProduct(pid, tile, when, platform, version, final, files, cloud_pct, snow_pct,
                      tuple(i.product_id for i in ordered), (first, last), params.version_hash,
                      grids["R2"].epsg or 0, directional, {k: round(v, 3) for k, v in timings.items()})


def _half_up(x: float) -> int:
    return int(x + 0.5)


def _encode(run: "_Runner", part: Path, pid: str, blocks: list, grids: dict[str, Grid], threads: str,
            compress: str) -> dict[str, CogFile]:
    from rasterio.crs import CRS

    args = []
    for band in sorted(output_bands(), key=lambda b: (b.group, not b.continuous)):  # largest first: R1, then R2
        grid = grids[band.group]
        t = grid.transform
        vrt = write_vrt(part / "blocks" / f"{band.key}.vrt", band, blocks, (grid.height, grid.width),
                        CRS.from_user_input(grid.crs).to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f))
        args.append((str(vrt), str(part / f"{pid}_{band.key}.tif"), band.key, band.continuous, threads, compress))
    return {cog.key: cog for cog in run.map("encode", encode_cog, args)}


class _Runner:
    """The same three passes in-process or on Dask: `map` keeps the order of its arguments."""

    def __init__(self, client, progress: Progress | None) -> None:
        self.client, self.progress = client, progress

    def share(self, values: list) -> list:
        return self.client.scatter(values, broadcast=True) if self.client is not None else values

    def map(self, stage: str, fn, args: list[tuple]) -> list:
        total = len(args)
        if self.client is None:
            out = []
            for done, a in enumerate(args, start=1):
                out.append(fn(*a))
                if self.progress:
                    self.progress(stage, done, total)
            return out
        from distributed import as_completed

        futures = [self.client.submit(fn, *a, pure=False) for a in args]
        try:
            for done, _ in enumerate(as_completed(futures, loop=self.client.loop), start=1):
                if self.progress:
                    self.progress(stage, done, total)
            return self.client.gather(futures)
        finally:
            for f in futures:
                f.cancel()


def _client(scheduler: str | None, settings: ProcessingSettings, work: int):
    if scheduler == "inline":
        return dask_client(settings.model_copy(update={"dask_scheduler": None, "dask_min_work": work + 1}), 0)
    if scheduler == "local":
        return dask_client(settings.model_copy(update={"dask_scheduler": None, "dask_min_work": 0}), work)
    if scheduler:
        return dask_client(settings.model_copy(update={"dask_scheduler": scheduler}), work)
    return dask_client(settings, work)

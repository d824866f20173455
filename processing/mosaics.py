"""Overview COGs of the monthly mosaics (catalog/mosaics.py says how the tiler uses them).

`build_overview(collection, month)` registers the month's search, reads the month's current items in the search's
order, and — unless the recorded overview was made from exactly these items (ids, versions, checksums), zoom and
bands — mosaics them first-valid onto the WebMercatorQuad tile grid of `mosaic_overview_zoom` (rio-tiler's own
`mosaic_reader`, one grid tile at a time: memory is one tile, whatever the area), writes a COG with internal
overviews into staging, renames it to a new name under `mosaics/<collection>/<YYYY-MM>/` in the store, records it
in `landsurf.mosaic_overviews` (one statement: the switch), and only then removes the file it replaces.

It runs as the `processing.mosaic_overview` job (processing/queue.py), planned after every publication of an L3A
of the month (processing/plan.py `after_derived`) and debounced: the job waits `mosaic_debounce_s`, and its
queueing lock folds every publication in that time into one build. `landsurf mosaics build` runs it by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import morecantile
import numpy as np
import psycopg
import rasterio
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import from_bounds
from rasterio.windows import Window
from rio_tiler.errors import EmptyMosaicError, NoAssetFoundError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader
from rio_tiler.mosaic.methods import FirstMethod

from catalog import __version__
from catalog.collections import S2_L3A
from catalog.database import session
from catalog.errors import BadRequest, DatabaseError
from catalog.logging import get_logger
from catalog.mosaics import TMS_ID, checked_month, month_interval, overview_path, register_monthly_mosaic
from catalog.settings import CatalogSettings
from catalog.store import AssetStore
from processing.derive import TransientDeriveError, product_lock
from processing.settings import ProcessingSettings

log = get_logger(__name__)

NODATA = -10000
TILE = 256
FORMAT = 1  # bump when the file's layout changes: every overview is rebuilt
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": 256}


def _l3a_bands() -> list[str]:
    from processing.l3a_output import output_bands

    return [b.key for b in output_bands() if b.key.startswith("FRC_")]


def supported(collection: str) -> tuple[list[str], dict[str, Any]]:
    """The bands an overview of `collection` holds and the render parameters of its mosaics."""
    if collection != S2_L3A:
        raise BadRequest(f"monthly mosaics are made of the {S2_L3A} collection, not {collection[:100]!r}",
                         f"give --collection {S2_L3A}")
    from processing.colormaps import renders

    return _l3a_bands(), renders("l3a")


@dataclass(frozen=True)
class MonthItem:
    id: str
    version: str
    bbox: tuple[float, float, float, float]
    files: dict[str, Path]
    checksums: dict[str, str]


def month_items(conn: psycopg.Connection, store: AssetStore, collection: str, month: str,
                bands: list[str]) -> list[MonthItem]:
    """The month's current items in the registered search's order (datetime desc, id asc): first-valid order."""
    start, end = month_interval(month).split("/")
    rows = conn.execute(
        "SELECT id, content->'properties'->>'version', content->'assets', ST_XMin(geometry), ST_YMin(geometry), "
        "ST_XMax(geometry), ST_YMax(geometry) FROM pgstac.items WHERE collection = %s AND datetime >= %s "
        "AND datetime <= %s ORDER BY datetime DESC, id ASC", (collection, start, end)).fetchall()
    out = []
    for item_id, version, assets, *bbox in rows:
        assets = assets or {}
        files = {k: store.path(PurePosixPath(a["href"])) for k, a in assets.items()
                 if k in bands and a.get("href")}
        checksums = {k: assets[k].get("file:checksum", "") for k in files}
        out.append(MonthItem(item_id, version or "", tuple(bbox), files, checksums))
    return out


def inputs_signature(items: list[MonthItem], zoom: int, bands: list[str]) -> str:
    """Same items (ids, versions, files), zoom, bands and software → same overview: nothing to rebuild."""
    blob = json.dumps({"items": [[i.id, i.version, i.checksums] for i in items], "zoom": zoom, "bands": bands,
                       "format": FORMAT, "software": __version__}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grid:
    zoom: int
    x0: int
    y0: int
    columns: int  # grid tiles across
    rows: int

    @property
    def width(self) -> int:
        return self.columns * TILE

    @property
    def height(self) -> int:
        return self.rows * TILE


def overview_grid(items: list[MonthItem], zoom: int, max_pixels: int) -> Grid:
    """The WebMercatorQuad tiles of `zoom` that cover the items: the overview's pixels are theirs."""
    tms = morecantile.tms.get(TMS_ID)
    w = min(i.bbox[0] for i in items)
    s = min(i.bbox[1] for i in items)
    e = max(i.bbox[2] for i in items)
    n = max(i.bbox[3] for i in items)
    ul, lr = tms.tile(w, n, zoom), tms.tile(e, s, zoom)
    grid = Grid(zoom, ul.x, ul.y, lr.x - ul.x + 1, lr.y - ul.y + 1)
    if grid.width * grid.height > max_pixels:
        raise BadRequest(f"the overview at zoom {zoom} would be {grid.width}×{grid.height} pixels, more than "
                         f"LANDSURF_PROCESSING_MOSAIC_OVERVIEW_MAX_PIXELS={max_pixels}",
                         "lower LANDSURF_PROCESSING_MOSAIC_OVERVIEW_ZOOM or raise the limit")
    return grid


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def write_overview(items: list[MonthItem], grid: Grid, bands: list[str], out: Path, *,
                   resampling: str = "average") -> int:
    """Mosaic the items first-valid, tile by tile of the grid, into a COG at `out`; the grid tiles with data."""
    tms = morecantile.tms.get(TMS_ID)
    left, _, _, top = tms.xy_bounds(morecantile.Tile(grid.x0, grid.y0, grid.zoom))
    _, bottom, right, _ = tms.xy_bounds(morecantile.Tile(grid.x0 + grid.columns - 1, grid.y0 + grid.rows - 1,
                                                         grid.zoom))
    plain = out.with_name(out.stem + ".grid.tif")
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=len(bands), dtype="int16",
                   crs="EPSG:3857", transform=from_bounds(left, bottom, right, top, grid.width, grid.height),
                   nodata=NODATA, tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate", zlevel=1,
                   interleave="pixel", BIGTIFF="IF_SAFER")

    def read(item: MonthItem, x: int, y: int, z: int, **kwargs: Any) -> ImageData:
        # the bands one after the other (rio-tiler's multi-asset reader starts a thread per asset and tile)
        parts = []
        for band in bands:
            with Reader(str(item.files[band]), tms=tms) as src:
                parts.append(src.tile(x, y, z, **kwargs))
        return ImageData.create_from_list(parts)

    filled = 0
    with rasterio.Env(**GDAL_ENV), rasterio.open(plain, "w", **profile) as dst:
        for k, name in enumerate(bands, start=1):
            dst.set_band_description(k, name)
        for row in range(grid.rows):
            for col in range(grid.columns):
                x, y = grid.x0 + col, grid.y0 + row
                bounds = tuple(tms.bounds(morecantile.Tile(x, y, grid.zoom)))
                under = [i for i in items if _intersects(i.bbox, bounds) and set(bands) <= set(i.files)]
                if not under:
                    continue
                try:
                    img, _ = mosaic_reader(under, read, x, y, grid.zoom, pixel_selection=FirstMethod(), threads=0,
                                           tilesize=TILE, resampling_method=resampling,
                                           reproject_method=resampling)
                except (NoAssetFoundError, EmptyMosaicError, TileOutsideBounds):
                    continue
                data = img.array.filled(NODATA).astype("int16")
                dst.write(data, window=Window(col * TILE, row * TILE, TILE, TILE))
                filled += 1
    try:
        gdal_copy(str(plain), str(out), driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE=str(TILE),
                  OVERVIEW_RESAMPLING="AVERAGE", NUM_THREADS="2", BIGTIFF="IF_SAFER")
        with open(out, "rb") as fh:
            os.fsync(fh.fileno())
    finally:
        plain.unlink(missing_ok=True)
    return filled


@dataclass(frozen=True)
class OverviewOutcome:
    status: str  # built | unchanged | removed | empty
    collection: str
    month: str
    search_id: str
    path: str | None = None
    items: int = 0
    seconds: float = 0.0


def _remove_file(store: AssetStore, relpath: str | None) -> None:
    if not relpath:
        return
    try:
        store.path(relpath).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("replaced overview not removed", path=relpath, error=str(exc))


def build_overview(settings: CatalogSettings, collection: str, month: str, *, force: bool = False) -> OverviewOutcome:
    """Register the month's mosaic and (re)build its overview when its inputs changed. Idempotent; one run per
    collection-month at a time (an advisory lock, as derived products have)."""
    checked_month(month)
    bands, renders = supported(collection)
    processing = ProcessingSettings()
    zoom = processing.mosaic_overview_zoom
    store = AssetStore.from_settings(settings)
    key = f"mosaic-{collection}-{month}"
    started = time.monotonic()
    try:
        with product_lock(settings, key):
            with session(settings, "ingest") as conn:
                search_id = register_monthly_mosaic(conn, collection, month, renders)
                items = month_items(conn, store, collection, month, bands)
                row = conn.execute("SELECT search_hash, inputs_signature, path FROM landsurf.mosaic_overviews "
                                   "WHERE collection = %s AND month = %s", (collection, month)).fetchone()
            if not items:  # every item withdrawn: the dynamic mosaic (empty) answers again
                if row is not None:
                    with session(settings, "ingest") as conn:
                        conn.execute("DELETE FROM landsurf.mosaic_overviews WHERE collection = %s AND month = %s",
                                     (collection, month))
                    _remove_file(store, row[2])
                return OverviewOutcome("removed" if row else "empty", collection, month, search_id)
            signature = inputs_signature(items, zoom, bands)
            if (row is not None and not force and row[0] == search_id and row[1] == signature
                    and store.path(row[2]).is_file()):
                return OverviewOutcome("unchanged", collection, month, search_id, row[2], len(items))
            grid = overview_grid(items, zoom, processing.mosaic_overview_max_pixels)
            relpath = overview_path(collection, month, signature)
            if force and row is not None and row[2] == str(relpath):
                relpath = relpath.with_name(f"{relpath.stem}-{uuid.uuid4().hex[:6]}.tif")
            from ingest.settings import IngestSettings

            staging = IngestSettings.staging_dir(settings) / f"derive-mosaic-{uuid.uuid4().hex[:16]}"  # swept if killed
            staging.mkdir(parents=True, exist_ok=True)
            try:
                staged = staging / relpath.name
                write_overview(items, grid, bands, staged, resampling=processing.mosaic_overview_resampling)
                final = store.path(relpath)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            with session(settings, "ingest") as conn:
                conn.execute(
                    "INSERT INTO landsurf.mosaic_overviews (collection, month, search_hash, path, bands, max_zoom, "
                    "inputs_signature, items, built_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now()) "
                    "ON CONFLICT (collection, month) DO UPDATE SET search_hash = EXCLUDED.search_hash, "
                    "path = EXCLUDED.path, bands = EXCLUDED.bands, max_zoom = EXCLUDED.max_zoom, "
                    "inputs_signature = EXCLUDED.inputs_signature, items = EXCLUDED.items, built_at = now()",
                    (collection, month, search_id, str(relpath), bands, zoom, signature, len(items)))
            if row is not None and row[2] != str(relpath):
                _remove_file(store, row[2])  # after the switch: a reader of the old row falls back, then reads anew
    except (DatabaseError, psycopg.OperationalError, OSError, rasterio.errors.RasterioIOError) as exc:
        raise TransientDeriveError(f"overview of {collection} {month}: {exc}",
                                   "the job is retried with backoff") from exc
    seconds = time.monotonic() - started
    log.info("mosaic overview built", collection=collection, month=month, items=len(items), path=str(relpath),
             seconds=round(seconds, 2))
    return OverviewOutcome("built", collection, month, search_id, str(relpath), len(items), seconds)


def months_of(settings: CatalogSettings, collection: str) -> list[str]:
    """Every month that has current items in the collection, newest first."""
    with session(settings, "ingest") as conn:
        rows = conn.execute("SELECT DISTINCT to_char(datetime AT TIME ZONE 'UTC', 'YYYY-MM') AS m FROM pgstac.items "
                            "WHERE collection = %s ORDER BY m DESC", (collection,)).fetchall()
    return [r[0] for r in rows]


def register(app, catalog: CatalogSettings, task_name: str, queue: str) -> None:
    """Declare the overview build task on the job queue's app (processing/queue.py calls this)."""
    import procrastinate

    from ingest.settings import IngestSettings

    ingest, processing = IngestSettings(), ProcessingSettings()

    @app.task(name=task_name, queue=queue,
              retry=procrastinate.RetryStrategy(max_attempts=processing.derive_max_attempts,
                                                wait=ingest.retry_wait_seconds,
                                                exponential_wait=ingest.retry_exponential,
                                                retry_exceptions={TransientDeriveError}))
    def mosaic_overview(collection: str, month: str, cause: str = "request") -> str:
        return build_overview(catalog, collection, month).status


def defer_mosaic_overview(app, collection: str, month: str, *, cause: str, delay_s: float = 0.0) -> int | None:
    """Queue a month's overview build `delay_s` from now; None when one is already waiting (its queueing lock: the
    publications of a month in that while make one build). Its lock runs one build of a month at a time."""
    from procrastinate.exceptions import AlreadyEnqueued

    from processing.queue import MOSAIC_TASK

    key = f"mosaic-{collection}-{month}"
    options: dict[str, Any] = {"lock": key, "queueing_lock": key, "priority": -2}
    if delay_s > 0:
        options["schedule_in"] = {"seconds": delay_s}
    try:
        return app.tasks[MOSAIC_TASK].configure(**options).defer(collection=collection, month=month, cause=cause)
    except AlreadyEnqueued:
        return None


def queue_overview(settings: CatalogSettings, collection: str, month: str, cause: str,
                   delay_s: float | None = None) -> int | None:
    """Queue the month's overview build after `mosaic_debounce_s`; None when one is already waiting (it will see
    this publication too)."""
    from ingest.settings import IngestSettings
    from processing.queue import opened

    supported(collection)
    delay = ProcessingSettings().mosaic_debounce_s if delay_s is None else delay_s
    with opened(settings, IngestSettings()) as app:
        job = defer_mosaic_overview(app, collection, checked_month(month), cause=cause, delay_s=delay)
    if job is not None:
        log.info("mosaic overview queued", collection=collection, month=month, job=job, cause=cause)
    return job

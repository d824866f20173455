"""The DEM of a tile, registered once as an item of the `dem` collection and read by every snow map of the tile.

Why a collection: the DEM is an input with a lineage like any other (a snow map's `derived_from` can point at it,
a replaced DEM is a new version with the old one kept as history) and it is served, downloaded and tiled like any
asset. One current item per tile: the item's datetime is a fixed nominal date (`DEM_DATETIME`), so the tile alone
is the product key of `catalog.publish`; its id carries the checksum of the COG, so registering the same file twice
is a duplicate, and another file becomes the current version (its `version` is the registration time).

Any GDAL-readable DEM is accepted (GeoTIFF, a VRT mosaic of Copernicus DEM tiles …): one already on the tile's 20 m
grid (the generator's `T<TILE>_ALT_R2.tif`, possibly a smaller region aligned on it) is kept as it is; anything
else is resampled (bilinear) onto the full tile's 20 m grid. Heights are int16 metres, no-data −32768.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from shapely.geometry import box
from shapely.geometry.polygon import orient

from catalog.collections import COG, COLLECTIONS, DEM, EXTENSIONS, processing_software
from catalog.database import session
from catalog.publish import Published, publish_product
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, product_prefix
from ingest.model import CogFile
from ingest.settings import IngestSettings
from ingest.synthetic.grid import FULL_R1, tile_grid
from processing.raster_io import Grid, RasterInputError, write_cog

DEM_KEY = "DEM"
DEM_NODATA = -32768
DEM_DATETIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
R2 = 20


@dataclass(frozen=True)
class PreparedDem:
    """The tile's DEM as a COG on its 20 m grid, ready to publish."""

    tile: str
    cog: CogFile
    grid: Grid
    resampled: bool  # False: the source was already on the tile's 20 m grid
    source: str  # the source file's name


def tile_r2_grid(tile: str) -> Grid:
    """The full tile's 20 m grid (5490 × 5490 from the tile's upper-left corner)."""
    g = tile_grid(tile)
    n = FULL_R1 // 2
    return Grid(n, n, g.transform(R2), f"EPSG:{g.epsg}")


def prepare_dem(tile: str, source: Path, out: Path) -> PreparedDem:
    """Write `source` as the tile's DEM COG at `out` (int16 m, no-data −32768)."""
    full = tile_r2_grid(tile)
    try:
        with rasterio.open(source) as ds:
            aligned = _aligned_part(ds, full)
            if aligned is not None:
                data = _as_int16(ds.read(1), ds.nodata)
                grid = aligned
            else:
                if ds.crs is None:
                    raise RasterInputError(f"the DEM {source} has no CRS", "give a georeferenced DEM")
                if not _overlaps(transform_bounds(ds.crs, full.crs, *ds.bounds), full.bounds):
                    raise RasterInputError(f"the DEM {source.name} has no height on tile {tile}",
                                           "give a DEM that covers the tile")
                data = np.full((full.height, full.width), DEM_NODATA, np.float32)
                reproject(rasterio.band(ds, 1), data, dst_transform=full.transform, dst_crs=full.crs,
                          src_nodata=ds.nodata, dst_nodata=DEM_NODATA, resampling=Resampling.bilinear,
                          num_threads=2)
                data = _as_int16(data, DEM_NODATA)
                grid = full
    except RasterioError as exc:
        raise RasterInputError(f"cannot read the DEM {source}: {exc}", "give a GDAL-readable DEM file") from exc
    if not (data != DEM_NODATA).any():
        raise RasterInputError(f"the DEM {source.name} has no height on tile {tile}",
                               "give a DEM that covers the tile")
    cog = write_cog(out, data, grid, DEM_KEY, nodata=DEM_NODATA, description="elevation (m)", own_overviews=True)
    return PreparedDem(tile_grid(tile).tile, cog, grid, aligned is None, source.name)


def dem_item(prepared: PreparedDem, href: str, now: datetime | None = None) -> dict[str, Any]:
    """The STAC item of a prepared DEM (asset at `href`, store-relative)."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    geometry, bbox = _footprint(prepared.grid)
    g = prepared.grid
    epsg = g.epsg
    t = g.transform
    left, bottom, right, top = g.bounds
    asset = {
        **COLLECTIONS[DEM].item_assets[DEM_KEY], "href": href,
        "file:size": prepared.cog.size, "file:checksum": prepared.cog.checksum,
        "proj:shape": [g.height, g.width], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "proj:bbox": [left, bottom, right, top],
    }
    return {
        "type": "Feature", "stac_version": "1.1.0",
        "stac_extensions": [EXTENSIONS[k] for k in ("raster", "proj", "file", "grid", "processing", "version")],
        "id": dem_item_id(prepared.tile, prepared.cog.checksum),
        "collection": DEM, "geometry": geometry, "bbox": bbox,
        "properties": {
            "datetime": DEM_DATETIME.isoformat().replace("+00:00", "Z"),
            "created": stamp.isoformat().replace("+00:00", "Z"),
            "grid:code": f"MGRS-{prepared.tile}", "proj:epsg": epsg, "proj:code": f"EPSG:{epsg}",
            "version": f"{stamp:%Y%m%d}.{stamp:%H%M%S}", "processing:level": "DEM",
            "processing:software": processing_software(),
            "processing:datetime": stamp.isoformat().replace("+00:00", "Z"),
            "landsurf:source": prepared.source, "landsurf:resampled": prepared.resampled,
        },
        "assets": {DEM_KEY: asset},
        # STAC wants a collection link beside `collection`; publication keeps only links the API cannot build
        "links": [{"rel": "collection", "href": f"../../{DEM}", "type": "application/json"}],
    }


def dem_item_id(tile: str, checksum: str) -> str:
    return f"T{tile}_DEM_{checksum.removeprefix('1220')[:12]}"


def register_dem(settings: CatalogSettings, tile: str, dem_path: Path) -> Published:
    """Prepare `dem_path` for `tile` and publish it in the `dem` collection (atomic, idempotent)."""
    code = tile_grid(tile).tile
    staging = IngestSettings.staging_dir(settings) / f"dem-{code}-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        prepared = prepare_dem(code, Path(dem_path), staging / f"T{code}_DEM.tif")
        item_id = dem_item_id(code, prepared.cog.checksum)
        final_name = f"{item_id}_{DEM_KEY}.tif"
        prepared.cog.path.rename(staging / final_name)
        prepared = PreparedDem(prepared.tile, CogFile(DEM_KEY, staging / final_name, prepared.cog.size,
                                                      prepared.cog.checksum, COG),
                               prepared.grid, prepared.resampled, prepared.source)
        rel = product_prefix(DEM, code, DEM_DATETIME, item_id)
        store = AssetStore.from_settings(settings)
        return publish_product(settings, dem_item(prepared, store.href(rel / final_name)), staging, rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published (renamed into the store)


def current_dem(settings: CatalogSettings, tile: str) -> Path | None:
    """The store file of the tile's current DEM, or None (the snow map then runs pass 1 only)."""
    code = tile_grid(tile).tile
    with session(settings, "ingest") as conn:
        row = conn.execute(
            "SELECT content->'assets'->%s->>'href' FROM pgstac.items WHERE collection = %s "
            "AND content->'properties'->>'grid:code' = %s ORDER BY datetime DESC LIMIT 1",
            (DEM_KEY, DEM, f"MGRS-{code}")).fetchone()
    if row is None or row[0] is None:
        return None
    return AssetStore.from_settings(settings).path(PurePosixPath(row[0]))


def _aligned_part(ds: rasterio.DatasetReader, full: Grid) -> Grid | None:
    """The source's grid when it lies on the tile's 20 m grid (same CRS, 20 m, whole-pixel offset, inside)."""
    if ds.crs is None or not _same_crs(ds.crs, full.crs):
        return None
    t, f = ds.transform, full.transform
    col, row = (t.c - f.c) / R2, (f.f - t.f) / R2
    if not (math.isclose(t.a, R2) and math.isclose(t.e, -R2) and t.b == 0 and t.d == 0):
        return None
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = round(col), round(row)
    if col < 0 or row < 0 or col + ds.width > full.width or row + ds.height > full.height:
        return None
    return Grid(ds.width, ds.height, Affine(R2, 0, f.c + col * R2, 0, -R2, f.f - row * R2), full.crs)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _same_crs(crs: rasterio.crs.CRS, other: str) -> bool:
    return crs == rasterio.crs.CRS.from_user_input(other)


def _as_int16(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Heights rounded to int16 metres; no-data, non-finite and out-of-range values become −32768."""
    v = values.astype(np.float32, copy=False)
    bad = ~np.isfinite(v)
    bad |= v < -32767
    bad |= v > 32767
    if nodata is not None:
        bad |= v == np.float32(nodata)
    out = np.rint(np.where(bad, np.float32(0), v)).astype(np.int16)
    out[bad] = DEM_NODATA
    return out


def _footprint(grid: Grid) -> tuple[dict[str, Any], list[float]]:
    """Lon/lat polygon of the grid's extent, densified so that it follows the UTM square."""
    left, bottom, right, top = grid.bounds
    extent = box(left, bottom, right, top)
    to_lonlat = Transformer.from_crs(grid.crs, 4326, always_xy=True)
    step = max(grid.resolution, min(right - left, top - bottom) / 16)
    lonlat = shapely.transform(shapely.segmentize(extent, step), lambda xy: np.column_stack(
        to_lonlat.transform(xy[:, 0], xy[:, 1])))
    lonlat = orient(shapely.set_precision(lonlat, 1e-7))
    return json.loads(shapely.to_geojson(lonlat)), list(lonlat.bounds)

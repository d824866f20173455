"""The STAC item of an L2A product: what users search on, and every asset with its full definition.

Assets carry the collection's whole `item_assets` definition (title, eo:bands, raster:bands, gsd, roles):
pgSTAC strips what equals the collection's definition when it stores the item and restores it when it
serves it, whereas a key missing from the item would be stored as "absent" and never shown.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pystac
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.features import shapes
from shapely.geometry import box, shape
from shapely.geometry.polygon import orient

from catalog import __version__
from catalog.collections import COLLECTIONS, EXTENSIONS as DECLARED, S2_L2A, processing_software
from ingest.model import CogSet, L2AProduct, RasterFile

# what an L2A item may declare (sat and view only when it has such fields), at the versions the catalog declares
EXTENSIONS = {name: DECLARED[name] for name in ("eo", "raster", "proj", "file", "grid", "mgrs", "processing",
                                                 "version", "sat", "view")}
S2_RELATIVE_ORBITS = 143
MAX_VERTICES = 1000
FOOTPRINT_PIXELS = 256  # the valid-data mask is polygonised at about this size: a few hundred vertices at most


def build_item(product: L2AProduct, cogs: CogSet, hrefs: Callable[[str], str], *,
               collection_href: str | None = None, processing_version: str | None = None,
               now: datetime | None = None) -> pystac.Item:
    """The item of `product`, whose assets are the staged `cogs` at the URLs `hrefs(key)` gives.

    STAC requires a `collection` link beside the `collection` field; without `collection_href` it is relative to
    the item's API URL (`/collections/{id}/items/{item}`).
    """
    geometry, bbox = footprint(product, cogs)
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    props = _properties(product, processing_version or __version__, stamp)
    item = pystac.Item(id=product.product_id, geometry=geometry, bbox=bbox, datetime=product.acquired,
                       properties=props, collection=S2_L2A)
    definitions = COLLECTIONS[S2_L2A].item_assets
    for key, cog in cogs.files.items():
        if key not in definitions:
            raise ValueError(f"asset {key} has no definition in {S2_L2A} item_assets")
        fields = copy.deepcopy(definitions[key]) | {"file:size": cog.size, "file:checksum": cog.checksum}
        if key in product.rasters:
            fields |= _proj(product.rasters[key], product)
        item.add_asset(key, pystac.Asset(href=hrefs(key), title=fields.pop("title", None),
                                         media_type=fields.pop("type", cog.media_type),
                                         roles=fields.pop("roles", None), extra_fields=fields))
    used = {"eo", "raster", "proj", "file", "grid", "mgrs", "processing", "version"}
    used |= {prefix for prefix in ("sat", "view") if any(k.startswith(prefix + ":") for k in props)}
    item.add_link(pystac.Link("collection", collection_href or f"../../{S2_L2A}", pystac.MediaType.JSON))
    item.stac_extensions = [EXTENSIONS[name] for name in EXTENSIONS if name in used]
    return item


def _properties(product: L2AProduct, processing_version: str, stamp: datetime) -> dict[str, Any]:
    tile = product.tile
    props: dict[str, Any] = {
        "platform": "sentinel-" + product.platform.removeprefix("SENTINEL").lower(),
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "grid:code": f"MGRS-{tile}",
        "mgrs:utm_zone": int(tile[:2]),
        "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:],
        "proj:code": f"EPSG:{product.epsg}",
        "proj:epsg": int(product.epsg),
        "processing:level": product.level,
        "processing:software": processing_software(),
        "processing:version": processing_version,
        "processing:datetime": _iso(product.produced),
        "version": product.version,
        "created": _iso(stamp),
        "updated": _iso(stamp),
    }
    if product.cloud_percent is not None:
        props["eo:cloud_cover"] = float(product.cloud_percent)
    if product.snow_percent is not None:
        props["eo:snow_cover"] = float(product.snow_percent)
    if product.orbit is not None:  # MUSCATE's ORBIT_NUMBER: relative (1..143) or absolute is not documented
        props["sat:relative_orbit" if product.orbit <= S2_RELATIVE_ORBITS else "sat:absolute_orbit"] = product.orbit
    if product.sun_azimuth is not None:
        props["view:sun_azimuth"] = product.sun_azimuth % 360
    if product.sun_zenith is not None:
        props["view:sun_elevation"] = 90.0 - product.sun_zenith
    zeniths = [z for band, (z, _) in product.view_angles.items()
               if math.isfinite(z) and (f"FRE_{band}" in product.rasters or not product.rasters)]
    if zeniths:
        props["view:incidence_angle"] = float(np.mean(zeniths))
    return props


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _proj(raster: RasterFile, product: L2AProduct) -> dict[str, Any]:
    """Grid of one asset (R1 and R2 differ), so clients place pixels without opening the file."""
    a, b, c, d, e, f = raster.transform or _group_transform(product, raster.group)
    left, right = sorted((c, c + a * raster.width))
    bottom, top = sorted((f, f + e * raster.height))
    return {"proj:shape": [raster.height, raster.width], "proj:transform": [a, b, c, d, e, f],
            "proj:bbox": [left, bottom, right, top]}


def _group_transform(product: L2AProduct, group: str) -> tuple[float, ...]:
    ulx, uly, xdim, ydim, _, _ = product.geoposition[group]
    return (xdim, 0.0, ulx, 0.0, ydim, uly)


def footprint(product: L2AProduct, cogs: CogSet) -> tuple[dict[str, Any], list[float]]:
    """Lon/lat geometry and bbox of the valid data (EDG = 0), densified so that its edges follow the UTM grid.

    Without an edge mask it is the raster extent. The mask is read from the COG's overviews, so the cost does not
    grow with the tile size; the outline is widened so that it still contains every valid pixel.
    """
    key = next((k for k in ("EDG_R2", "EDG_R1") if k in product.rasters), None)
    ref = product.rasters[key] if key else next(iter(product.rasters.values()))
    a, _, c, _, e, f = ref.transform or _group_transform(product, ref.group)
    extent = box(min(c, c + a * ref.width), min(f, f + e * ref.height),
                 max(c, c + a * ref.width), max(f, f + e * ref.height))
    geom = extent
    if key:
        path = cogs.files[key].path if key in cogs.files else ref.path
        geom = _valid_outline(path, extent) or extent
    step = max(abs(a), min(extent.bounds[2] - extent.bounds[0], extent.bounds[3] - extent.bounds[1]) / 16)
    to_lonlat = Transformer.from_crs(product.epsg, 4326, always_xy=True)
    lonlat = shapely.transform(shapely.segmentize(geom, step), lambda xy: np.column_stack(
        to_lonlat.transform(xy[:, 0], xy[:, 1])))
    lonlat = shapely.set_precision(lonlat, 1e-7)
    lonlat = orient(lonlat) if lonlat.geom_type == "Polygon" else shapely.MultiPolygon(
        [orient(p) for p in lonlat.geoms])
    return json.loads(shapely.to_geojson(lonlat)), list(lonlat.bounds)  # lists, not tuples: JSON schema arrays


def _valid_outline(path: Path, extent: shapely.Polygon) -> shapely.Geometry | None:
    """The union of the valid (0) areas of an edge mask, or None when the mask marks nothing valid."""
    with rasterio.open(path) as ds:
        factor = max(1, math.ceil(max(ds.width, ds.height) / FOOTPRINT_PIXELS))
        shape_ = (math.ceil(ds.height / factor), math.ceil(ds.width / factor))
        edge = ds.read(1, out_shape=shape_, resampling=Resampling.nearest)
        transform = ds.transform * Affine.scale(ds.width / shape_[1], ds.height / shape_[0])
    valid = edge == 0
    if valid.all():
        return extent
    if not valid.any():
        return None
    parts = [shape(g) for g, _ in shapes(valid.astype("uint8"), mask=valid, transform=transform)]
    pixel = abs(transform.a)
    # one sampled pixel for the sampling, one for the simplification: the outline still holds every valid pixel
    outline = shapely.union_all(parts).buffer(2 * pixel, join_style="mitre").simplify(pixel)
    outline = outline.intersection(extent)
    if shapely.get_num_coordinates(outline) > MAX_VERTICES:  # a speckled mask: its hull is a fair footprint
        outline = outline.convex_hull
    if outline.geom_type not in ("Polygon", "MultiPolygon"):
        polys = [g for g in getattr(outline, "geoms", []) if g.geom_type == "Polygon"]
        outline = shapely.MultiPolygon(polys) if polys else None
    return outline if outline is not None and not outline.is_empty else None

"""Derived products through the one product path: inputs read from the catalog (current published items), the
algorithm run into a staging directory, the STAC item built, and `catalog.publish.publish_product` (atomic,
idempotent, one current version per product, older versions kept as history).

Every derived item records its making: `derived_from` links to all its inputs (the L2A and the DEM of a snow map,
the L2As of an L3A, the snow maps of an SCD), `processing:software` (landsurf's version and the parameter set's
hash), `processing:version` (the product version: software version + parameter-set hash), and
`landsurf:inputs_hash`, the signature `processing.derive` compares to decide whether a product must be made again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from catalog import __version__
from catalog.collections import (COLLECTIONS, DEM, EXTENSIONS, HISTORY_SUFFIX, S2_L2A, S2_L3A, S2_SCD, S2_SNOW,
                                 processing_software)
from catalog.database import session
from catalog.publish import Published, publish_product
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, api_path, product_prefix
from ingest.model import CogFile
from processing.derive import DerivedRequest, DeriveInputError, parse_l2a_id
from processing.raster_io import Grid, grid_of

SNOW_KEYS = ("FRE_B3", "FRE_B4", "FRE_B11", "CLM_R2", "MG2_R2")


@dataclass
class InputItem:
    """One published input: its id, collection, acquisition time and asset files in the store."""

    id: str
    collection: str
    datetime: str
    files: dict[str, Path]
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def acquired(self) -> datetime:
        return datetime.fromisoformat(self.datetime.replace("Z", "+00:00"))


@dataclass
class Inputs:
    items: list[InputItem]
    params: Any
    params_hash: str
    dem: InputItem | None = None
    note: str | None = None  # why an input one might expect is not used (a DEM that does not cover the product)

    @property
    def ids(self) -> list[str]:
        return [i.id for i in self.items] + ([self.dem.id] if self.dem else [])


def _items(settings: CatalogSettings, collection: str, tile: str, first: datetime, last: datetime,
           keys: tuple[str, ...] | None = None) -> list[InputItem]:
    """Current items of `collection` for `tile` with first ≤ datetime < last, in time order."""
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT id, collection, content->'properties', content->'assets' FROM pgstac.items "
            "WHERE collection = %s AND content->'properties'->>'grid:code' = %s AND datetime >= %s AND datetime < %s "
            "ORDER BY datetime, id", (collection, f"MGRS-{tile}", first, last)).fetchall()
    store = AssetStore.from_settings(settings)
    out = []
    for item_id, coll, props, assets in rows:
        files = {k: store.path(PurePosixPath(a["href"])) for k, a in (assets or {}).items()
                 if a.get("href") and (keys is None or k in keys)}
        out.append(InputItem(item_id, coll, props["datetime"], files, props))
    return out


def current_dem_item(settings: CatalogSettings, tile: str) -> InputItem | None:
    """The tile's current DEM item (the snow maps' snowline and pass 2), or None (pass-1-only mode)."""
    dems = _items(settings, DEM, tile, datetime(1900, 1, 1, tzinfo=timezone.utc),
                  datetime(2100, 1, 1, tzinfo=timezone.utc), ("DEM",))
    return dems[-1] if dems else None


def _dem_covers(dem: InputItem, l2a: InputItem) -> bool:
    """Does the DEM lie on the product's 20 m grid and cover it (a registered DEM may be an aligned part only)?"""
    from processing.raster_io import RasterInputError
    from processing.snow import dem_window

    try:
        dem_window(dem.files["DEM"], grid_of(l2a.files["CLM_R2"], "CLM_R2"))
    except (RasterInputError, KeyError):
        return False
    return True


def _day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def resolve_inputs(settings: CatalogSettings, req: DerivedRequest) -> Inputs:
    """The current inputs of a request, read from the catalog; `DeriveInputError` when there are none."""
    req = req.validate()
    if req.kind == "snow":
        from processing.snow import SnowParams

        _, tile, when = parse_l2a_id(req.l2a_id)
        l2as = _items(settings, S2_L2A, tile, when, when + timedelta(milliseconds=1), SNOW_KEYS)
        if not l2as:
            raise DeriveInputError(f"no current L2A of T{tile} acquired {when:%Y-%m-%d %H:%M:%S} is published "
                                   f"(asked for {req.l2a_id})", "ingest the L2A first")
        params = SnowParams.load()
        dem, note = current_dem_item(settings, tile), None
        if dem is not None and not _dem_covers(dem, l2as[0]):
            note = f"the DEM {dem.id} does not cover this product: pass 1 only"
            dem = None  # the documented pass-1-only mode, said in the item, rather than no snow map at all
        return Inputs(l2as[:1], params, params.version, dem, note)
    if req.kind == "l3a":
        from processing.l3a import REQUIRED, L3AParams, window

        params = L3AParams.load()
        first, last = window(req.synthesis_date, params)
        l2as = _items(settings, S2_L2A, req.tile, _day(first), _day(last) + timedelta(days=1),
                      tuple(REQUIRED) + ("metadata",))
        if not l2as:
            raise DeriveInputError(f"no L2A of T{req.tile} acquired in {first} – {last} is published",
                                   f"the L3A of {req.month} needs at least one L2A of its ±23-day window")
        return Inputs(l2as, params, params.version_hash)
    from processing.scd import ScdParams

    params = ScdParams.load()
    margin = timedelta(days=params.date_margin_days)
    snows = _items(settings, S2_SNOW, req.tile, _day(req.start) - margin, _day(req.stop) + margin +
                   timedelta(days=1), ("SNW_R2",))
    if not snows:
        raise DeriveInputError(f"no snow map of T{req.tile} sensed in {req.start} – {req.stop} "
                               f"(± {params.date_margin_days} days) is published", "make the snow maps first")
    return Inputs(snows, params, params.version)


def next_version(settings: CatalogSettings, req: DerivedRequest) -> str:
    """The version a new run publishes ("1.0" first, then "1.1", …): above every current or history version."""
    req = req.validate()
    first, last = req.datetime_range
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT content->'properties'->>'version' FROM pgstac.items WHERE collection = ANY(%s) "
            "AND datetime >= %s AND datetime < %s AND content->'properties'->>'grid:code' = %s",
            ([req.collection, req.collection + HISTORY_SUFFIX], first, last, f"MGRS-{req.tile}")).fetchall()
    best = (0, -1)
    for (v,) in rows:
        try:
            major, minor = (int(x) for x in str(v).replace("-", ".").split(".")[:2])
        except ValueError:
            continue
        best = max(best, (major, minor))
    return "1.0" if best == (0, -1) else f"{best[0]}.{best[1] + 1}"


# ------------------------------------------------------------------------------------------------ items


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _proj(grid: Grid) -> dict[str, Any]:
    t = grid.transform
    left, bottom, right, top = grid.bounds
    return {"proj:shape": [grid.height, grid.width], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "proj:bbox": [left, bottom, right, top]}


def _assets(collection: str, files: dict[str, CogFile], rel: PurePosixPath, staging: Path,
            store: AssetStore) -> dict[str, dict]:
    definitions = COLLECTIONS[collection].item_assets
    assets = {}
    for key, cog in files.items():
        if key not in definitions:
            raise ValueError(f"asset {key} has no definition in {collection} item_assets")
        fields = copy.deepcopy(definitions[key]) | {"file:size": cog.size, "file:checksum": cog.checksum}
        if cog.media_type and not cog.media_type.startswith("image/tiff"):
            fields["type"] = cog.media_type  # e.g. the SCD quicklook is a PNG
        else:
            fields |= _proj(grid_of(cog.path))
        fields["href"] = store.href(rel / cog.path.relative_to(staging))
        assets[key] = fields
    return assets


def _common(req: DerivedRequest, inputs: Inputs, signature: str, version: str, level: str, lineage: str,
            grid: Grid, kind_params: str) -> dict[str, Any]:
    tile = req.tile
    now = datetime.now(timezone.utc)
    return {
        "grid:code": f"MGRS-{tile}", "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:], "proj:code": f"EPSG:{grid.epsg}", "proj:epsg": grid.epsg,
        "processing:level": level,
        "processing:software": processing_software() | {f"landsurf-params-{kind_params}": inputs.params_hash},
        "processing:version": f"{__version__}+{inputs.params_hash}",
        "processing:datetime": _iso(now),
        "processing:lineage": lineage,
        "version": version,
        "created": _iso(now), "updated": _iso(now),
        "landsurf:inputs_hash": signature,
        "landsurf:params": {"name": kind_params, "hash": inputs.params_hash},
        "landsurf:request": req.as_args(),  # what to ask for to make it again (the lineage cascade)
    }


def _links(collection: str, inputs: Inputs) -> list[dict]:
    links = [{"rel": "collection", "href": api_path("collections", collection), "type": "application/json"}]
    for i in inputs.items + ([inputs.dem] if inputs.dem else []):
        links.append({"rel": "derived_from", "href": api_path("collections", i.collection, "items", i.id),
                      "type": "application/geo+json", "title": i.id})
    return links


def _item(item_id: str, collection: str, geometry: dict, bbox: list, props: dict, assets: dict,
          links: list, extensions: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.1.0",
            "stac_extensions": [EXTENSIONS[e] for e in extensions], "id": item_id, "collection": collection,
            "geometry": geometry, "bbox": bbox, "properties": props, "assets": assets, "links": links}


def _l2a_geometry(settings: CatalogSettings, item: InputItem) -> tuple[dict, list]:
    with session(settings, "ingest") as conn:
        full = conn.execute("SELECT pgstac.get_item(%s, %s)", (item.id, item.collection)).fetchone()[0]
    return full["geometry"], full["bbox"]


def _grid_geometry(grid: Grid) -> tuple[dict, list]:
    from processing.dem import _footprint

    return _footprint(grid)


def make_and_publish(settings: CatalogSettings, req: DerivedRequest, inputs: Inputs, signature: str,
                     version: str, staging: Path, progress: Callable[[str, int, int], None] | None = None
                     ) -> Published:
    """Run the algorithm into `staging`, build the item, publish it (files and item, all or nothing)."""
    from processing import colormaps

    store = AssetStore.from_settings(settings)
    vid = version.replace(".", "-")
    staging.mkdir(parents=True, exist_ok=True)
    if req.kind == "snow":
        from processing.quicklook import snow_quicklook
        from processing.raster_io import write_bytes
        from processing.snow import SnowInputs, snow_map, snow_product_id

        l2a = inputs.items[0]
        f = l2a.files
        missing = [k for k in SNOW_KEYS if k not in f]
        if missing:
            raise DeriveInputError(f"{l2a.id} has no {', '.join(missing)} asset", "re-deliver a complete L2A")
        pid = snow_product_id(l2a.id, vid)
        out = staging / pid
        if progress:
            progress("snow map", 0, 2)
        product = snow_map(SnowInputs(l2a.id, f["FRE_B3"], f["FRE_B4"], f["FRE_B11"], f["CLM_R2"],
                                      inputs.dem.files["DEM"] if inputs.dem else None, f.get("MG2_R2")),
                           inputs.params, out, product_id=pid)
        files = dict(product.files)
        files["thumbnail"] = write_bytes(out / f"{pid}_QKL_ALL.jpg", snow_quicklook(
            files["SNW_R2"].path, f), "thumbnail", "image/jpeg")
        if progress:
            progress("snow map", 1, 2)
        rel = product_prefix(S2_SNOW, req.tile, l2a.acquired, pid)
        geometry, bbox = _l2a_geometry(settings, l2a)
        mode = "pass 1 only (no DEM)" if product.pass1_only else ("passes 1 and 2" if product.pass2 else
                                                                  "pass 1 (no snowline found)")
        props = {"datetime": l2a.datetime,
                 **{k: l2a.properties[k] for k in ("platform", "constellation", "instruments")
                    if k in l2a.properties},
                 **_common(req, inputs, signature, version, "L2B",
                           f"LIS-like snow map of {l2a.id}, {mode}"
                           + (f", DEM {inputs.dem.id}" if inputs.dem else "")
                           + (f" ({inputs.note})" if inputs.note else ""), product.grid, "snow"),
                 "eo:snow_cover": product.snow_percent, "eo:cloud_cover": product.cloud_percent,
                 "landsurf:zs": product.zs, "landsurf:pass1_only": product.pass1_only,
                 "landsurf:pass2": product.pass2, "renders": colormaps.renders("snow")}
        item = _item(pid, S2_SNOW, geometry, bbox, props, _assets(S2_SNOW, files, rel, out, store),
                     _links(S2_SNOW, inputs), ("eo", "raster", "proj", "file", "grid", "mgrs", "processing",
                                               "version", "render"))
        return publish_product(settings, item, out, rel)
    if req.kind == "l3a":
        from processing.l3a import l3a_input, synthesize

        l3a_inputs = [l3a_input(i.id, i.files) for i in inputs.items]
        product = synthesize(l3a_inputs, req.synthesis_date, inputs.params, staging, version=vid,
                             progress=progress)
        when = _day(product.date)
        rel = product_prefix(S2_L3A, req.tile, when, product.product_id)
        grid = grid_of(product.files["FLG_R2"].path)
        geometry, bbox = _grid_geometry(grid)
        used = set(product.inputs)
        inputs = Inputs([i for i in inputs.items if i.id in used], inputs.params, inputs.params_hash)
        platform = "sentinel-2x" if product.platform == "SENTINEL2X" else \
            "sentinel-" + product.platform.removeprefix("SENTINEL").lower()
        props = {"datetime": _iso(when), "platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
                 **_common(req, inputs, signature, version, "L3A",
                           f"WASP-like monthly synthesis of {len(product.inputs)} L2A acquired "
                           f"{product.window[0]} – {product.window[1]}", grid, "l3a"),
                 "eo:cloud_cover": product.cloud_percent, "eo:snow_cover": product.snow_percent,
                 "landsurf:window": [product.window[0].isoformat(), product.window[1].isoformat()],
                 "landsurf:directional": product.directional, "renders": colormaps.renders("l3a")}
        item = _item(product.product_id, S2_L3A, geometry, bbox, props,
                     _assets(S2_L3A, product.files, rel, product.folder, store), _links(S2_L3A, inputs),
                     ("eo", "raster", "proj", "file", "grid", "mgrs", "processing", "version", "render"))
        return publish_product(settings, item, product.folder, rel)
    from processing.quicklook import scd_quicklook
    from processing.raster_io import write_bytes
    from processing.scd import scd, scd_product_id

    pid = scd_product_id(req.tile, req.start, req.stop, vid)
    out = staging / pid
    if progress:
        progress("snow-cover duration", 0, 2)
    product = scd([(i.acquired, i.files["SNW_R2"]) for i in inputs.items], req.start, req.stop, inputs.params,
                  out, tile=req.tile, product_id=pid)
    files = dict(product.files)
    files["thumbnail"] = write_bytes(out / f"{pid}_QKL_ALL.png", scd_quicklook(files["SCD"].path), "thumbnail",
                                     "image/png")
    if progress:
        progress("snow-cover duration", 1, 2)
    used = {Path(p) for _, p in product.inputs}
    inputs = Inputs([i for i in inputs.items if i.files["SNW_R2"] in used], inputs.params, inputs.params_hash)
    start = _day(req.start)
    rel = product_prefix(S2_SCD, req.tile, start, pid)
    geometry, bbox = _grid_geometry(product.grid)
    props = {"datetime": _iso(start), "start_datetime": _iso(start), "end_datetime": _iso(req.end_datetime),
             "constellation": "sentinel-2",
             **_common(req, inputs, signature, version, "L3B",
                       f"snow-cover duration of T{req.tile} {req.start} – {req.stop} from "
                       f"{len(inputs.items)} snow maps", product.grid, "scd"),
             "renders": colormaps.renders("scd")}
    item = _item(pid, S2_SCD, geometry, bbox, props, _assets(S2_SCD, files, rel, out, store),
                 _links(S2_SCD, inputs), ("raster", "proj", "file", "grid", "mgrs", "processing", "version",
                                          "render"))
    return publish_product(settings, item, out, rel)

"""Monthly mosaics: one registered search per collection-month, and the overview COG that answers its small zooms.

A dynamic mosaic tile reads every item under it: at zoom 7 and below a tile covers hundreds of kilometres, so its
time grows with the number of items (docs/benchmarks.md, the 2-core figures in the stack notes). Each month of a
collection of syntheses therefore gets:

* a registered search (`register_monthly_mosaic`, on a writable connection: reads never write), its metadata
  naming it (`"sentinel2-l3a 2024-04"`) and carrying the collection's render parameters;
* an overview COG in EPSG:3857 on the tile grid of its `max_zoom`, with the items' bands and internal overviews,
  made by processing/mosaics.py and recorded in `landsurf.mosaic_overviews`.

The tiler's mosaic backend (`OverviewBackend`) answers a tile of that search at z <= max_zoom from the overview
(response header `X-Landsurf-Source: overview`) and every other tile dynamically from the items (`dynamic`). The
same query parameters work on both: the overview reader maps each asset name to its band, so `assets`,
`expression`, `rescale` and `nodata` mean what they mean on the items. A request the overview cannot answer the
same way (another pixel selection, an asset it does not hold, per-asset options, another tiling scheme) or an
overview file that cannot be read falls back to the dynamic mosaic.

`GET /raster/mosaics` lists the monthly mosaics with their tile URLs (public, read-only).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from threading import Lock
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import attr
from fastapi import APIRouter, Path, Query, Request
from psycopg_pool import ConnectionPool
from rasterio.errors import RasterioIOError
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.mosaic.methods import FirstMethod
from rio_tiler.models import ImageData
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from titiler.core.dependencies import DefaultDependency
from titiler.pgstac import model
from titiler.pgstac.backend import PGSTACBackend

from catalog.errors import BadRequest, NotFound, StoreError
from catalog.logging import get_logger
from catalog.store import AssetStore

log = get_logger(__name__)

SOURCE_HEADER = "X-Landsurf-Source"
OVERVIEW_DIR = "mosaics"
KIND = "landsurf:monthly"
TMS_ID = "WebMercatorQuad"
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def checked_month(month: str) -> str:
    """`YYYY-MM`, or a `BadRequest` saying so."""
    if not isinstance(month, str) or not _MONTH.match(month):
        raise BadRequest(f"month {str(month)[:40]!r} is not YYYY-MM", "give a month such as 2024-04")
    return month


def month_interval(month: str) -> str:
    """The RFC 3339 interval of a calendar month (both ends inside it)."""
    year, number = (int(v) for v in checked_month(month).split("-"))
    last = calendar.monthrange(year, number)[1]
    return f"{year:04d}-{number:02d}-01T00:00:00Z/{year:04d}-{number:02d}-{last:02d}T23:59:59.999Z"


# first-valid in this order: what the overview builder reproduces (processing/mosaics.py `month_items`)
MONTH_SORT = [{"field": "datetime", "direction": "desc"}, {"field": "id", "direction": "asc"}]


def monthly_search(collection: str, month: str) -> str:
    """The search JSON of a collection-month's mosaic (current items whose datetime is in the month)."""
    search = model.PgSTACSearch.model_validate(
        {"collections": [collection], "datetime": month_interval(month), "sortby": MONTH_SORT})
    return search.model_dump_json(by_alias=True, exclude_none=True)


def monthly_metadata(collection: str, month: str, defaults: dict[str, Any] | None = None) -> str:
    """Its metadata: a name people read, what it is (for the listing), the render parameters of its items."""
    meta: dict[str, Any] = {"type": "mosaic", "name": f"{collection} {month}",
                            KIND: {"collection": collection, "month": month}}
    if defaults:
        meta["defaults"] = defaults
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def register_monthly_mosaic(conn, collection: str, month: str, defaults: dict[str, Any] | None = None) -> str:
    """Store the month's search (idempotent: the hash is that of the search and metadata); its hash.
    On a writable connection (the ingest role), like `catalog.tiles.register_collection_mosaics`."""
    row = conn.execute("SELECT hash FROM pgstac.search_query(%s::jsonb, _metadata => %s::jsonb)",
                       (monthly_search(collection, month), monthly_metadata(collection, month, defaults))).fetchone()
    return row[0]


def overview_path(collection: str, month: str, signature: str) -> PurePosixPath:
    """Store-relative path of an overview: a new name per build, so a rebuild never overwrites a file in use."""
    return PurePosixPath(OVERVIEW_DIR, collection, checked_month(month), f"{collection}_{month}_{signature}.tif")


def render_query(render: dict[str, Any]) -> str:
    """A render-extension object (or a search's `defaults` entry) as tiler query parameters."""
    pairs: list[tuple[str, str]] = []
    for key, value in render.items():
        if key in ("title", "minmax_zoom", "tilematrixsets"):
            continue
        if key == "assets":
            pairs += [("assets", str(a)) for a in value]
        elif key == "rescale":
            pairs += [("rescale", ",".join(str(v) for v in r)) for r in value]
        elif isinstance(value, (dict, list)):
            pairs.append((key, json.dumps(value, separators=(",", ":"))))
        else:
            pairs.append((key, str(value)))
    return urlencode(pairs, safe=",")


# ------------------------------------------------------------------------------------------------ reading


CEILING_TTL_S = 30.0
_ceiling: dict[str, float] = {"zoom": -1, "at": 0.0}
_ceiling_lock = Lock()


def zoom_ceiling(pool: ConnectionPool) -> int:
    """The highest zoom any overview answers: a tile above it needs no look-up (the dynamic tiles pay nothing).
    Known values are kept `CEILING_TTL_S`; "no overview at all" is asked again each time, so the first overview
    built is used at once."""
    now = time.monotonic()
    with _ceiling_lock:
        if _ceiling["zoom"] >= 0 and now - _ceiling["at"] < CEILING_TTL_S:
            return int(_ceiling["zoom"])
    with pool.connection() as conn:
        zoom = conn.execute("SELECT coalesce(max(max_zoom), -1) FROM landsurf.mosaic_overviews").fetchone()[0]
    with _ceiling_lock:
        _ceiling.update(zoom=zoom, at=now)
    return int(zoom)


@dataclass(frozen=True)
class Overview:
    path: str
    bands: tuple[str, ...]
    max_zoom: int
    built_at: datetime


def find_overview(pool: ConnectionPool, search_hash: str) -> Overview | None:
    """The overview recorded for a search, if any (one indexed look-up on the read-only pool; not cached, so a
    rebuild is used from the next tile on)."""
    with pool.connection() as conn:
        row = conn.execute("SELECT path, bands, max_zoom, built_at FROM landsurf.mosaic_overviews "
                           "WHERE search_hash = %s ORDER BY built_at DESC LIMIT 1", (search_hash,)).fetchone()
    return Overview(row[0], tuple(row[1]), row[2], row[3]) if row else None


def _asset_names(assets: Any) -> list[str] | None:
    """Plain asset names, or None when an asset carries options (band indexes, an expression of its own)."""
    names = []
    for asset in assets if isinstance(assets, (list, tuple)) else [assets]:
        if isinstance(asset, str):
            names.append(asset)
        elif isinstance(asset, dict) and set(asset) <= {"name", "indexes"} and \
                asset.get("indexes") in (None, 1, (1,), [1]):
            names.append(asset["name"])
        else:
            return None
    return names


_PASSED = ("tilesize", "buffer", "padding", "nodata", "unscale", "resampling_method", "reproject_method")


@attr.s
class OverviewBackend(PGSTACBackend):
    """titiler-pgstac's backend, answering the small zooms of a search that has an overview from that overview."""

    store: AssetStore | None = attr.ib(default=None)
    state: Any = attr.ib(default=None)  # the request's state: where the answer's source is written

    def _mark(self, source: str) -> None:
        if self.state is not None:
            self.state.landsurf_source = source

    def _usable(self, z: int, kwargs: dict[str, Any]) -> Overview | None:
        if self.store is None or getattr(self.tms, "id", None) != TMS_ID or z > zoom_ceiling(self.pool):
            return None
        selection = kwargs.get("pixel_selection")
        kind = selection if isinstance(selection, type) else type(selection)  # titiler passes the class
        if selection is not None and kind is not FirstMethod:
            return None
        names = _asset_names(kwargs.get("assets") or [])
        if not names:
            return None
        found = find_overview(self.pool, self.input)
        if found is None or z > found.max_zoom or not set(names) <= set(found.bands):
            return None
        return found

    def tile(self, x: int, y: int, z: int, search_options: dict | None = None, **kwargs: Any):  # type: ignore
        overview = self._usable(z, kwargs)
        if overview is not None:
            try:
                img = read_overview_tile(self.store.published_file(overview.path), overview.bands, self.tms,
                                         x, y, z, **kwargs)
            except (TileOutsideBounds, RasterioIOError, NotFound, StoreError, OSError) as exc:
                log.warning("overview not used; dynamic mosaic instead", search=self.input, overview=overview.path,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}")
            else:
                self._mark("overview")
                if not img.mask.any():
                    raise EmptyMosaicError(f"no data in tile {z}-{x}-{y}")
                return img, [f"overview:{PurePosixPath(overview.path).name}"]
        self._mark("dynamic")
        return super().tile(x, y, z, search_options=search_options, **kwargs)


def read_overview_tile(path, bands: tuple[str, ...], tms, x: int, y: int, z: int, *, assets: Any,
                       expression: str | None = None, **kwargs: Any) -> ImageData:
    """A tile of the assets' bands from an overview file, as the items' mosaic would give it: one read of the
    bands asked for (their blocks decoded once), bands named b1…bN in the order asked, then the expression."""
    names = _asset_names(assets) or []
    options = {k: v for k, v in kwargs.items() if k in _PASSED}
    with Reader(str(path), tms=tms) as src:
        img = src.tile(x, y, z, indexes=[bands.index(n) + 1 for n in names], **options)
    img.band_names = [f"b{i + 1}" for i in range(img.count)]
    img.band_descriptions = [f"{n}_b1" for n in names]
    return img.apply_expression(expression) if expression else img


class OverviewBackendParams(DefaultDependency):
    """The backend's arguments: the tiler's read-only pool and store, and the request's state."""

    def __init__(self, request: Request):
        self.pool = request.app.state.dbpool
        self.store = request.app.state.landsurf_store
        self.state = request.state


class SourceHeader:
    """Adds `X-Landsurf-Source: overview | dynamic` to a mosaic tile's answer, as its backend recorded it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                source = (scope.get("state") or {}).get("landsurf_source")
                if source:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (SOURCE_HEADER.lower().encode(), source.encode())]}
            await send(message)

        await self.app(scope, receive, sending)


# ------------------------------------------------------------------------------------------------ listing


_LIST_SQL = """
SELECT DISTINCT ON (s.metadata->'{kind}'->>'collection', s.metadata->'{kind}'->>'month')
       s.hash, s.metadata, o.max_zoom, o.built_at, o.items, o.search_hash = s.hash AS current
FROM pgstac.searches s
LEFT JOIN landsurf.mosaic_overviews o
       ON o.collection = s.metadata->'{kind}'->>'collection' AND o.month = s.metadata->'{kind}'->>'month'
WHERE s.metadata ? '{kind}'
  AND (%(collection)s::text IS NULL OR s.metadata->'{kind}'->>'collection' = %(collection)s)
  AND (%(month)s::text IS NULL OR s.metadata->'{kind}'->>'month' = %(month)s)
ORDER BY s.metadata->'{kind}'->>'collection', s.metadata->'{kind}'->>'month' DESC,
         (o.search_hash = s.hash) DESC NULLS LAST, s.lastused DESC
""".format(kind=KIND)


def _entry(request: Request, row: tuple) -> dict[str, Any]:
    search_hash, metadata, max_zoom, built_at, items, current = row
    which = metadata[KIND]
    base = str(request.base_url).rstrip("/")
    searches = f"{base}/searches/{quote(search_hash)}"
    renders = {}
    for name, render in (metadata.get("defaults") or {}).items():
        query = render_query(render)
        renders[name] = {
            "title": render.get("title", name),
            "tiles": f"{searches}/tiles/{TMS_ID}/{{z}}/{{x}}/{{y}}.png?{query}",
            "tilejson": f"{searches}/{TMS_ID}/tilejson.json?{query}",
        }
    overview = None
    if current:
        overview = {"max_zoom": max_zoom, "built_at": built_at.isoformat(), "items": items}
    return {"collection": which["collection"], "month": which["month"], "name": metadata.get("name"),
            "search_id": search_hash,
            "tiles": f"{searches}/tiles/{TMS_ID}/{{z}}/{{x}}/{{y}}.png",
            "info": f"{searches}/info", "renders": renders, "overview": overview}


def mosaics_router() -> APIRouter:
    """`GET /mosaics[?collection=]` and `GET /mosaics/{collection}/{month}`: public, read-only."""
    router = APIRouter(tags=["Monthly mosaics"])

    def rows(request: Request, collection: str | None, month: str | None, limit: int, offset: int) -> list:
        if collection is not None and "\x00" in collection:
            raise BadRequest("the collection id contains a NUL byte", "give a collection id of GET /collections")
        with request.app.state.dbpool.connection() as conn:
            return conn.execute(_LIST_SQL + " LIMIT %(limit)s OFFSET %(offset)s",
                                {"collection": collection, "month": month, "limit": limit,
                                 "offset": offset}).fetchall()

    @router.get("/mosaics", operation_id="mosaics.list")
    def list_mosaics(
        request: Request,
        collection: Annotated[str | None, Query(max_length=256, description="Only this collection's months.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000, description="Page start.")] = 0,
    ) -> dict[str, Any]:
        """The monthly mosaics, newest month first: each one's search id, tile URL templates (per render of its
        items) and overview (the zooms it answers, when it was built)."""
        found = [_entry(request, r) for r in rows(request, collection, None, limit, offset)]
        return {"mosaics": found, "returned": len(found), "limit": limit, "offset": offset}

    @router.get("/mosaics/{collection}/{month}", operation_id="mosaics.get")
    def get_mosaic(request: Request,
                   collection: Annotated[str, Path(max_length=256, description="Collection id.")],
                   month: Annotated[str, Path(max_length=7, description="YYYY-MM")]) -> dict[str, Any]:
        """One month's mosaic: a stable address for its current search id and tile URLs."""
        found = rows(request, collection, checked_month(month), 1, 0)
        if not found:
            raise NotFound(f"no monthly mosaic of {collection[:100]!r} for {month}",
                           "list them with GET /raster/mosaics; a month is registered when its products are in")
        return _entry(request, found[0])

    return router

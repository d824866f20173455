"""The tiler: titiler-pgstac's factories assembled into a sub-application mounted at /raster.

Built here rather than imported from `titiler.pgstac.main` so that nothing is constructed at
import time, settings come from one place, and the readers read assets straight from the store
(the tiler never fetches over HTTP from its own process, nor from any host not allowed).

Reads never write: the tiler's pool runs with `pgstac.readonly`, so no item, tile or mosaic request
adds a row to `pgstac.searches`. Registering a mosaic search is a write (an admin token, like any
write), done on a separate pool; the plain mosaic of each collection is registered by
`landsurf db migrate` (`register_collection_mosaics`), and the list of stored searches is an
operator view.
"""

from __future__ import annotations

import json
import os
from threading import Lock
from typing import Annotated, Any, Literal

# titiler-pgstac retries look-ups on OperationalError, which includes a cancelled statement: with
# retries a stalled database costs (retries + 1) × the statement timeout. One attempt keeps every
# request bounded by one timeout. The library reads this once, when titiler.pgstac is imported.
os.environ.setdefault("TITILER_PGSTAC_API_RETRY", "0")

import jinja2  # noqa: E402
import psycopg  # noqa: E402
from cql2 import Expr  # noqa: E402
import pystac  # noqa: E402
from cachetools import TTLCache  # noqa: E402
from fastapi import Depends, FastAPI, Path, Query, Request, status  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.routing import NoMatchFound  # noqa: E402
from starlette.templating import Jinja2Templates  # noqa: E402
from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402
from titiler.core.dependencies import create_colormap_dependency  # noqa: E402
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers  # noqa: E402
from titiler.core.factory import AlgorithmFactory, ColorMapFactory, MultiBaseTilerFactory, TMSFactory  # noqa: E402
from titiler.core.middleware import CacheControlMiddleware  # noqa: E402
from titiler.extensions import stacRenderExtension, wmtsExtension  # noqa: E402
from titiler.mosaic.errors import MOSAIC_STATUS_CODES  # noqa: E402
from titiler.mosaic.extensions.wmts import wmtsExtension as wmtsExtensionMosaic  # noqa: E402
from titiler.pgstac import model  # noqa: E402
from titiler.pgstac.dependencies import SearchIdParams, SearchParams, register_search_in_db  # noqa: E402
from titiler.pgstac.errors import PGSTAC_STATUS_CODES  # noqa: E402
from titiler.pgstac.extensions import searchInfoExtension  # noqa: E402
from titiler.pgstac.factory import MosaicTilerFactory  # noqa: E402
from titiler.pgstac.reader import PgSTACReader, SimpleSTACReader  # noqa: E402

from rio_tiler import errors as rt  # noqa: E402
from rio_tiler.colormap import ColorMaps  # noqa: E402
from rio_tiler.colormap import cmap as default_colormaps  # noqa: E402

from catalog.auth import require_role  # noqa: E402
from catalog.errors import BadRequest, NotFound  # noqa: E402
from catalog.mosaics import OverviewBackend, OverviewBackendParams, SourceHeader, mosaics_router  # noqa: E402
from catalog.proxy import ErrorShield  # noqa: E402
from catalog.settings import CatalogSettings  # noqa: E402
from catalog.store import AssetStore  # noqa: E402

# GDAL configuration of every read, given per request (titiler's environment dependency), not
# written into the process environment.
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": 256, "VSI_CACHE": True,
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": True, "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff"}
ITEM_CACHE_S = 60
# rio-tiler errors caused by what the client asked (titiler maps them all to 500)
CLIENT_FAULTS = {rt.PointOutsideBounds: 404, rt.InvalidBufferSize: 400, rt.InvalidBounds: 400,
                 rt.InvalidColorMapName: 400, rt.InvalidMosaicMethod: 400, rt.AssetAsBandError: 400,
                 rt.InvalidPointDataError: 400, rt.InvalidGeographicBounds: 400, rt.MaxArraySizeError: 400,
                 rt.NoAssetFoundError: 204}

TEMPLATES = Jinja2Templates(
    env=jinja2.Environment(
        autoescape=jinja2.select_autoescape(["html", "xml"]),
        loader=jinja2.ChoiceLoader(
            [jinja2.PackageLoader("titiler.pgstac", "templates"), jinja2.PackageLoader("titiler.core", "templates")]
        ),
    )
)


class MountedRootPath:
    """Make a mounted app build its URLs with the mount prefix (Starlette 1.x uses app_root_path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            # in place: the outer app's middlewares (metrics) read what the sub-app's router sets
            scope["app_root_path"] = scope.get("root_path", "")
            scope["landsurf_mount"] = scope["app_root_path"]
        await self.app(scope, receive, send)


def _store_readers(store: AssetStore) -> tuple[type, type]:
    """Reader classes that read assets straight from the store (published files only), never over HTTP
    from their own process, and refuse any other href unless an operator allowed its remote prefix."""

    def _map(info: Any) -> Any:
        info["url"] = store.readable(info["url"])
        return info

    class StoreItemReader(PgSTACReader):
        def _get_asset_info(self, asset):  # type: ignore[override]
            return _map(super()._get_asset_info(asset))

    class StoreMosaicReader(SimpleSTACReader):
        def _get_asset_info(self, asset):  # type: ignore[override]
            return _map(super()._get_asset_info(asset))

    return StoreItemReader, StoreMosaicReader


def _item_dependency():
    """The item of a tile request: one bounded look-up on the read-only pool, cached a minute."""
    cache: TTLCache = TTLCache(maxsize=1024, ttl=ITEM_CACHE_S)
    lock = Lock()

    def item_params(request: Request,
                    collection_id: Annotated[str, Path(description="STAC Collection Identifier")],
                    item_id: Annotated[str, Path(description="STAC Item Identifier")]) -> pystac.Item:
        if "\x00" in collection_id + item_id or len(collection_id) > 256 or len(item_id) > 256:
            raise NotFound("no such item", "use the collection and item ids of a search result")
        key = (collection_id, item_id)
        with lock:
            found = cache.get(key)
        if found is None:
            with request.app.state.dbpool.connection() as conn:
                found = conn.execute("SELECT pgstac.get_item(%s, %s)", (item_id, collection_id)).fetchone()[0]
            if found is None:
                raise NotFound(f"no item {item_id!r} in collection {collection_id!r}",
                               "use the collection and item ids of a search result")
            with lock:
                cache[key] = found
        return pystac.Item.from_dict(found, preserve_dict=True)

    return item_params


def collection_search(collection_id: str, *, ids: str | None = None, bbox: str | None = None,
                      datetime: str | None = None, sortby: str | None = None, filter_expr: str | None = None,
                      filter_lang: str = "cql2-text") -> str:
    """The search JSON of a collection mosaic, exactly as a registration of the same parameters stores it."""
    params: dict[str, Any] = {"collections": [collection_id]}
    try:  # every value here is the client's text: any failure to read it is the client's fault
        if datetime:
            params["datetime"] = datetime
        if ids:
            params["ids"] = ids.split(",")
        if bbox:
            params["bbox"] = [float(v) for v in bbox.split(",")]
        if sortby:
            params["sortby"] = [{"field": f.strip().lstrip("+-"),
                                 "direction": "desc" if f.strip().startswith("-") else "asc"}
                                for f in sortby.split(",") if f.strip()]
        if filter_expr:
            params["filter"] = (Expr(filter_expr).to_json() if filter_lang == "cql2-text"
                                else json.loads(filter_expr))
            params["filter-lang"] = "cql2-json"
        search = model.PgSTACSearch.model_validate(params)
    except Exception as exc:  # noqa: BLE001 - cql2 raises a bare Exception for a syntax error
        raise BadRequest(f"invalid collection mosaic parameters: {str(exc).strip().splitlines()[0][:200]}",
                         "see the parameters of /raster/api") from exc
    return search.model_dump_json(by_alias=True, exclude_none=True)


def RegisteredCollectionParams(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC Collection Identifier")],
    ids: Annotated[str | None, Query(description="Comma-separated item ids")] = None,
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy (WGS84)")] = None,
    datetime: Annotated[str | None, Query(description="RFC 3339 date-time or interval")] = None,
    sortby: Annotated[str | None, Query(description="Comma-separated fields, `-` for descending")] = None,
    filter_expr: Annotated[str | None, Query(alias="filter", description="CQL2 filter")] = None,
    filter_lang: Annotated[Literal["cql2-text", "cql2-json"], Query(alias="filter-lang")] = "cql2-text",
) -> str:
    """A collection mosaic that was registered beforehand (reads never write a search): the plain mosaic of
    each collection is registered by `landsurf db migrate`; filtered ones by an admin."""
    wanted = collection_search(collection_id, ids=ids, bbox=bbox, datetime=datetime, sortby=sortby,
                               filter_expr=filter_expr, filter_lang=filter_lang)
    with request.app.state.dbpool.connection() as conn:
        row = conn.execute("SELECT hash FROM pgstac.searches WHERE search = %s::jsonb "
                           "ORDER BY lastused DESC LIMIT 1", (wanted,)).fetchone()
    if row is None:
        raise NotFound(f"no registered mosaic of collection {collection_id!r} with these parameters",
                       "draw a registered search (/raster/searches/{id}/…), or ask an admin to register this one "
                       "with POST /raster/searches/register")
    return row[0]


def register_collection_mosaics(conn: psycopg.Connection, collection_ids: list[str]) -> list[str]:
    """Store the plain mosaic of each collection (what /raster/collections/{id}/… draws without filters).
    Idempotent; run by `landsurf db migrate` on a writable connection."""
    hashes = []
    for cid in collection_ids:
        metadata = json.dumps({"type": "mosaic", "name": f"Mosaic of collection {cid}"})
        row = conn.execute("SELECT hash FROM pgstac.search_query(%s::jsonb, _metadata => %s::jsonb)",
                           (collection_search(cid), metadata)).fetchone()
        hashes.append(row[0])
    return hashes


def _register_route(app: FastAPI, searches: MosaicTilerFactory) -> None:
    @app.post("/searches/register", response_model=model.RegisterResponse, response_model_exclude_none=True,
              tags=["Mosaic of a registered search"], operation_id="searches.Register",
              responses={200: {"description": "Register a mosaic (a pgSTAC search); needs an admin token."}})
    def register_search(request: Request, search_query=Depends(SearchParams)) -> model.RegisterResponse:
        """Register a search as a mosaic (admin token: a write, like every write)."""
        search, metadata = search_query
        with request.app.state.writepool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            info = register_search_in_db(cursor, search, metadata)
        base = str(request.base_url)
        links = []
        for rel, name, extra in (("metadata", "info", {}),
                                 ("tilejson", "tilejson", {"tileMatrixSetId": "{tileMatrixSetId}"}),
                                 ("wmts", "wmts", {})):
            try:
                href = str(app.url_path_for(name, search_id=info.id, **extra).make_absolute_url(base_url=base))
            except NoMatchFound:
                continue
            links.append(model.Link(rel=rel, href=href, templated=bool(extra) or None))
        return model.RegisterResponse(id=info.id, links=links)

    @app.get("/searches/list", response_model=model.Infos, response_model_exclude_none=True,
             tags=["Mosaic of a registered search"], operation_id="searches.List",
             dependencies=[Depends(require_role("operator"))])
    def list_searches(request: Request,
                      limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
                      offset: Annotated[int, Query(ge=0, le=1_000_000, description="Page start.")] = 0,
                      ) -> model.Infos:
        """Stored mosaics (operator token): who registered what is not public."""
        with request.app.state.dbpool.connection() as conn:
            total = conn.execute("SELECT count(*) FROM pgstac.searches").fetchone()[0]
            rows = conn.execute(
                "SELECT hash, search, _where, orderby, lastused, usecount, metadata FROM pgstac.searches "
                "ORDER BY lastused DESC, hash LIMIT %s OFFSET %s", (limit, offset)).fetchall()
        searches_out = []
        for h, search, where, orderby, lastused, usecount, metadata in rows:
            info = model.Search.model_validate({"hash": h, "search": search, "_where": where, "orderby": orderby,
                                                "lastused": lastused, "usecount": usecount,
                                                "metadata": metadata or {}})
            searches_out.append(model.Info(search=info, links=[]))
        return model.Infos(searches=searches_out, links=[],
                           context=model.Context(returned=len(searches_out), limit=limit, matched=total))


def create_tiler_app(store: AssetStore, settings: CatalogSettings, colormaps: ColorMaps | None = None) -> FastAPI:
    """The /raster sub-application: item tiles, search and collection mosaics, TMS, colormaps. `colormaps`
    (rio-tiler's by default) is what `colormap_name` may name: the products' own palettes are given by the caller
    (processing.colormaps), which catalog may not import."""
    colormaps = colormaps or default_colormaps
    colormap_dependency = create_colormap_dependency(colormaps)
    item_reader, mosaic_reader = _store_readers(store)
    app = FastAPI(title="landsurf tiles", openapi_url="/api", docs_url="/api.html")
    # titiler's map without its catch-all `Exception: 500`: an unexpected error is not a status to hide
    # behind, it reaches the error shield (logged with an id, connection closed cleanly)
    known = {exc: code for exc, code in DEFAULT_STATUS_CODES.items() if exc is not Exception}
    add_exception_handlers(
        app,
        {**known, **MOSAIC_STATUS_CODES, **PGSTAC_STATUS_CODES, **CLIENT_FAULTS,
         ValidationError: status.HTTP_422_UNPROCESSABLE_CONTENT},
    )
    app.add_middleware(ErrorShield)  # inside the sub-app's own ServerErrorMiddleware, which would answer first
    app.add_middleware(
        CacheControlMiddleware,
        cachecontrol="public, max-age=3600",
        exclude_path={r"/healthz", r"/searches(/)?$", r"/searches/list$", r".*/mosaics(/|$)"},
    )
    app.add_middleware(SourceHeader)  # X-Landsurf-Source of a mosaic tile: overview or dynamic

    def gdal_env() -> dict:
        return GDAL_ENV

    # small zooms of a search with a monthly overview come from it (catalog/mosaics.py), the rest from the items
    mosaic_kwargs = dict(
        backend=OverviewBackend, backend_dependency=OverviewBackendParams,
        dataset_reader=mosaic_reader, add_statistics=True, add_viewer=True, add_part=True,
        extensions=[searchInfoExtension(), wmtsExtensionMosaic()], templates=TEMPLATES,
        environment_dependency=gdal_env, colormap_dependency=colormap_dependency,
    )
    searches = MosaicTilerFactory(path_dependency=SearchIdParams, router_prefix="/searches/{search_id}",
                                  **mosaic_kwargs)
    # /register and /list first: /searches/{search_id} would otherwise take "register" and "list" as ids
    _register_route(app, searches)
    app.include_router(searches.router, tags=["Mosaic of a registered search"], prefix="/searches/{search_id}")

    app.include_router(mosaics_router())

    collection = MosaicTilerFactory(path_dependency=RegisteredCollectionParams,
                                    router_prefix="/collections/{collection_id}", **mosaic_kwargs)
    app.include_router(collection.router, tags=["Mosaic of a collection"], prefix="/collections/{collection_id}")

    item = MultiBaseTilerFactory(
        reader=item_reader, path_dependency=_item_dependency(),
        router_prefix="/collections/{collection_id}/items/{item_id}", add_viewer=True,
        extensions=[wmtsExtension(), stacRenderExtension()], templates=TEMPLATES,
        environment_dependency=gdal_env, colormap_dependency=colormap_dependency,
    )
    app.include_router(item.router, tags=["Item"], prefix="/collections/{collection_id}/items/{item_id}")

    app.include_router(TMSFactory(templates=TEMPLATES).router, tags=["Tiling schemes"])
    app.include_router(AlgorithmFactory(templates=TEMPLATES).router, tags=["Algorithms"])
    app.include_router(ColorMapFactory(templates=TEMPLATES, supported_colormaps=colormaps).router, tags=["Colormaps"])

    @app.get("/healthz", tags=["Health"])
    def healthz() -> dict[str, str]:
        """The tiler's own liveness: its pool answers."""
        with app.state.dbpool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    app.state.landsurf_settings = settings
    app.state.landsurf_store = store
    return app

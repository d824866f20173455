"""The tiler: titiler-pgstac's factories assembled into a sub-application mounted at /raster.

Built here rather than imported from `titiler.pgstac.main` so that nothing is constructed at
import time, settings come from one place, and the readers resolve our own public asset URLs to
store paths (the tiler never fetches through HTTP from its own process).
"""

from __future__ import annotations

import os
from typing import Any

# titiler-pgstac retries item look-ups on OperationalError, which includes a cancelled statement:
# with retries a stalled database costs (retries + 1) × the statement timeout. One attempt keeps
# every request bounded by one timeout. Read once, at import of titiler.pgstac.dependencies.
os.environ.setdefault("TITILER_PGSTAC_API_RETRY", "0")

import jinja2  # noqa: E402
from fastapi import FastAPI, status
from pydantic import ValidationError
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import AlgorithmFactory, ColorMapFactory, MultiBaseTilerFactory, TMSFactory
from titiler.core.middleware import CacheControlMiddleware
from titiler.extensions import stacRenderExtension, wmtsExtension
from titiler.mosaic.errors import MOSAIC_STATUS_CODES
from titiler.mosaic.extensions.wmts import wmtsExtension as wmtsExtensionMosaic
from titiler.pgstac.dependencies import CollectionIdParams, ItemIdParams, SearchIdParams
from titiler.pgstac.errors import PGSTAC_STATUS_CODES
from titiler.pgstac.extensions import searchInfoExtension
from titiler.pgstac.factory import MosaicTilerFactory, add_search_list_route, add_search_register_route
from titiler.pgstac.reader import PgSTACReader, SimpleSTACReader

from catalog.store import AssetStore

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
    """Reader classes that read our own public hrefs straight from the store."""

    def _map(info: Any) -> Any:
        local = store.local_for_href(info["url"])
        if local:
            info["url"] = local
        return info

    class StoreItemReader(PgSTACReader):
        def _get_asset_info(self, asset):  # type: ignore[override]
            return _map(super()._get_asset_info(asset))

    class StoreMosaicReader(SimpleSTACReader):
        def _get_asset_info(self, asset):  # type: ignore[override]
            return _map(super()._get_asset_info(asset))

    return StoreItemReader, StoreMosaicReader


def create_tiler_app(store: AssetStore, error_map: dict[type[Exception], int]) -> FastAPI:
    """The /raster sub-application: item tiles, search and collection mosaics, TMS, colormaps."""
    item_reader, mosaic_reader = _store_readers(store)
    app = FastAPI(title="landsurf tiles", openapi_url="/api", docs_url="/api.html")
    add_exception_handlers(
        app,
        {**DEFAULT_STATUS_CODES, **MOSAIC_STATUS_CODES, **PGSTAC_STATUS_CODES,
         ValidationError: status.HTTP_422_UNPROCESSABLE_CONTENT, **error_map},
    )
    app.add_middleware(
        CacheControlMiddleware,
        cachecontrol="public, max-age=3600",
        exclude_path={r"/healthz", r"/searches(/)?$", r"/searches/list$"},
    )

    mosaic_kwargs = dict(
        dataset_reader=mosaic_reader, add_statistics=True, add_viewer=True, add_part=True,
        extensions=[searchInfoExtension(), wmtsExtensionMosaic()], templates=TEMPLATES,
    )
    searches = MosaicTilerFactory(path_dependency=SearchIdParams, router_prefix="/searches/{search_id}",
                                  **mosaic_kwargs)
    app.include_router(searches.router, tags=["Mosaic of a registered search"], prefix="/searches/{search_id}")
    add_search_list_route(app, prefix="/searches", tags=["Mosaic of a registered search"])
    add_search_register_route(
        app, prefix="/searches", tags=["Mosaic of a registered search"],
        tile_dependencies=[
            searches.layer_dependency, searches.dataset_dependency, searches.pixel_selection_dependency,
            searches.process_dependency, searches.render_dependency, searches.assets_accessor_dependency,
            searches.reader_dependency, searches.backend_dependency,
        ],
    )

    collection = MosaicTilerFactory(path_dependency=CollectionIdParams,
                                    router_prefix="/collections/{collection_id}", **mosaic_kwargs)
    app.include_router(collection.router, tags=["Mosaic of a collection"], prefix="/collections/{collection_id}")

    item = MultiBaseTilerFactory(
        reader=item_reader, path_dependency=ItemIdParams,
        router_prefix="/collections/{collection_id}/items/{item_id}", add_viewer=True,
        extensions=[wmtsExtension(), stacRenderExtension()], templates=TEMPLATES,
    )
    app.include_router(item.router, tags=["Item"], prefix="/collections/{collection_id}/items/{item_id}")

    app.include_router(TMSFactory(templates=TEMPLATES).router, tags=["Tiling schemes"])
    app.include_router(AlgorithmFactory(templates=TEMPLATES).router, tags=["Algorithms"])
    app.include_router(ColorMapFactory(templates=TEMPLATES).router, tags=["Colormaps"])

    @app.get("/healthz", tags=["Health"])
    def healthz() -> dict[str, str]:
        """The tiler's own liveness: its pool answers."""
        with app.state.dbpool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    return app

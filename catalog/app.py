"""One ASGI app: the STAC API (stac-fastapi-pgstac), tiles (titiler-pgstac at /raster),
downloads, /health, /metrics and the operator views — built from settings by `create_app`,
nothing at import time and no process-global state changed.

Around the application, outermost first (each a small ASGI middleware with one job):
`ErrorShield` (an unexpected error is a 500 that closes its connection cleanly) → `PublicUrl`
(the public base of every URL; forwarded headers only from trusted proxies) → metrics →
`WriteGuard` (writes denied by default) → `RequestLimits` (every size bounded) → `RenderSlots`
(images rendered a few at a time) → stac-fastapi's own middlewares → routes.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal, Sequence

import asyncpg
import orjson
import psycopg
from brotli_asgi import BrotliMiddleware
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool, PoolTimeout
from pypgstac.version import __version__ as PYPGSTAC_VERSION
from stac_fastapi.api.middleware import ProxyHeaderMiddleware
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import Settings as StacSettings
from stac_fastapi.pgstac.db import translate_pgstac_errors
from starlette.middleware import Middleware

from catalog import __version__
from catalog.auth import WriteGuard, require_role, role_of
from catalog.collections import HISTORY_SUFFIX
from catalog.database import resolve_urls
from catalog.download import DownloadFastPath, Downloads, add_download_routes
from catalog.errors import DatabaseUnavailable, LandsurfError, SchemaMismatch
from catalog.limits import RenderSlots, RequestLimits
from catalog.logging import get_logger
from catalog.metrics import Metrics
from catalog.operations import inbox_state
from catalog.openapi import complete_path_parameters, serve_with_public_servers
from catalog.proxy import ErrorShield, PublicUrl
from catalog.publish import partition_lock_keys
from catalog.settings import CatalogSettings
from catalog.stac import LandsurfClient
from catalog.transactions import landsurf_extensions
from catalog.store import DOWNLOAD_PREFIX, AssetStore
from catalog.subscriptions import subscriptions_router
from catalog.tiles import MountedRootPath, create_tiler_app
from catalog.users import TokenCache, add_user_routes
from catalog.viewer import is_built as viewer_built, viewer_mount

log = get_logger(__name__)

# Database failures that mean "try again later", never "the server is broken".
UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    psycopg.errors.QueryCanceled,
    psycopg.OperationalError,
    PoolTimeout,
    asyncio.TimeoutError,
    ConnectionError,
)
# What pgSTAC raises for a search it cannot evaluate: the client's request is at fault.
BAD_QUERY: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,                  # 22xxx: invalid values, casts, timestamps
    asyncpg.exceptions.UndefinedFunctionError,     # an unknown CQL2 function or operator
    asyncpg.exceptions.RaiseError,                 # pgSTAC's own RAISE EXCEPTION on bad input
    asyncpg.exceptions.InvalidTextRepresentationError,
    asyncpg.exceptions.DatatypeMismatchError,      # a CQL2 expression of the wrong type (`filter=true AND 'x'`)
    asyncpg.exceptions.AmbiguousFunctionError,
    asyncpg.exceptions.IndeterminateDatatypeError,
    asyncpg.exceptions.UndefinedColumnError,
    asyncpg.exceptions.PostgresSyntaxError,        # a filter pgSTAC turned into invalid SQL
    psycopg.errors.DataError,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.RaiseException,
    psycopg.errors.DatatypeMismatch,
    json.JSONDecodeError,                          # a JSON query parameter (query, intersects, filter) that is not
)


def _error_body(code: str, description: str) -> dict[str, str]:
    return {"code": code, "description": description}


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", path=request.url.path, error=type(exc).__name__, detail=str(exc)[:200])
    return JSONResponse(
        status_code=503,
        headers={"Retry-After": "5"},
        content=_error_body("ServiceUnavailable", "the catalog database did not answer in time; retry shortly"),
    )


async def _bad_query(request: Request, exc: Exception) -> JSONResponse:
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return JSONResponse(status_code=400, content=_error_body("BadRequest", f"invalid search: {message}"))


async def _domain_error(request: Request, exc: LandsurfError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    if exc.http_status == 503:
        headers = {"Retry-After": "5"}
    return JSONResponse(status_code=exc.http_status, headers=headers,
                        content=_error_body(type(exc).__name__, str(exc)))


def add_error_handlers(app: FastAPI) -> None:
    """One map from failure to status, on every (sub-)application."""
    for exc in UNAVAILABLE:
        app.add_exception_handler(exc, _unavailable)
    for exc in BAD_QUERY:
        app.add_exception_handler(exc, _bad_query)
    app.add_exception_handler(LandsurfError, _domain_error)  # type: ignore[arg-type]


def _asyncpg_pool_kwargs(settings: CatalogSettings, read_only: bool) -> dict[str, Any]:
    server_settings = {
        "search_path": "pgstac,public",
        "application_name": "landsurf-api",
        "statement_timeout": str(settings.statement_timeout_ms),
    }
    if read_only:
        # pgSTAC otherwise records every search (INSERT … ON CONFLICT into `searches`): one write
        # transaction, WAL and a commit flush per read request, for bookkeeping the API never uses.
        server_settings["pgstac.readonly"] = "true"
    return dict(
        min_size=settings.db_min_conn,
        max_size=settings.db_max_conn,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.statement_timeout_ms / 1000 + 2,
        max_inactive_connection_lifetime=300,
        server_settings=server_settings,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset round trip (RESET ALL, UNLISTEN …): read-only requests change no session
    state — pgSTAC's settings are transaction-local — and the reset was one more query per request."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for codec in ("json", "jsonb"):
        await conn.set_type_codec(codec, encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog")


def _bounded_connection_getter(timeout: float):
    """stac-fastapi's connection getter, with a bound on waiting for the pool."""

    @asynccontextmanager
    async def get_connection(request: Request, readwrite: Literal["r", "w"] = "r") -> AsyncIterator:
        pool = request.app.state.writepool if readwrite == "w" else request.app.state.readpool
        collection = request.path_params.get("collection_id") if readwrite == "w" else None
        with translate_pgstac_errors():
            async with pool.acquire(timeout=timeout) as conn:
                if not collection:
                    yield conn
                    return
                # an item write may create a partition: take the publishers' locks (catalog.publish) until commit
                async with conn.transaction():
                    for key in partition_lock_keys(collection, collection + HISTORY_SUFFIX):
                        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
                    yield conn

    return get_connection


async def check_database(app: FastAPI, timeout: float) -> dict[str, Any]:
    """Reachable? Which pgSTAC? Does it match the library? Used by /health and at start-up."""
    async with app.state.readpool.acquire(timeout=timeout) as conn:
        version = await asyncio.wait_for(conn.fetchval("SELECT pgstac.get_version()"), timeout)
    return {"pgstac_version": version, "expected_pgstac_version": PYPGSTAC_VERSION,
            "schema_ok": version == PYPGSTAC_VERSION}


def _tiler_pool(url: str, settings: CatalogSettings, *, read_only: bool, min_size: int) -> ConnectionPool:
    options = (f"-c search_path=pgstac,public -c application_name=landsurf-tiler "
               f"-c statement_timeout={settings.statement_timeout_ms}")
    if read_only:
        options += " -c pgstac.readonly=true"  # a tile or item request never writes a search row
    return ConnectionPool(
        conninfo=url, min_size=min_size, max_size=settings.db_max_conn, timeout=settings.pool_timeout_s,
        max_idle=300, num_workers=2, open=True,
        kwargs={"options": options, "connect_timeout": max(1, int(settings.connect_timeout_s))},
    )


def create_app(settings: CatalogSettings | None = None, routers: Sequence[APIRouter] = (),
               colormaps: Any = None) -> FastAPI:
    """Build the whole API from settings. `routers` are added by the caller (the processes API lives in
    `processing`, which catalog may not import), behind the same guards and limits; a router's
    `conformance_classes` attribute, if any, joins the API's conformance, its `landing_links` the landing page. `colormaps` (a rio-tiler `ColorMaps`)
    are the names the tiler's `colormap_name` accepts: the products' palettes come from processing too."""
    settings = settings or CatalogSettings()
    urls = resolve_urls(settings)
    store = AssetStore.from_settings(settings)
    tiler = create_tiler_app(store, settings, colormaps)
    add_error_handlers(tiler)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.readpool = await asyncpg.create_pool(
                urls.api, init=_init_connection, reset=_keep_session,
                **_asyncpg_pool_kwargs(settings, read_only=True))
            app.state.writepool = await asyncpg.create_pool(
                urls.ingest, init=_init_connection, **{**_asyncpg_pool_kwargs(settings, False), "min_size": 0})
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            raise DatabaseUnavailable(f"the API cannot reach its database: {exc}",
                                      "run `landsurf db start` or check LANDSURF_DATABASE_URL") from exc
        app.state.get_connection = _bounded_connection_getter(settings.pool_timeout_s)
        info = await check_database(app, settings.connect_timeout_s)
        if not info["schema_ok"]:
            raise SchemaMismatch(
                f"the database has pgSTAC {info['pgstac_version']} but this landsurf needs {PYPGSTAC_VERSION}",
                "run `landsurf db migrate`",
            )
        tiler.state.readpool = app.state.readpool  # token look-ups of the tiler's operator views
        tiler.state.dbpool = _tiler_pool(urls.api, settings, read_only=True, min_size=1)
        tiler.state.writepool = _tiler_pool(urls.ingest, settings, read_only=False, min_size=0)
        tiler.state.dbpool.wait(timeout=settings.connect_timeout_s)
        log.info("api ready", public_url=settings.base_url, pgstac=info["pgstac_version"])
        # Everything built so far (the app, the tiler, rasterio, pydantic models: ~200k objects) lives as long as
        # the process: out of the garbage collector's generations, a full collection no longer walks it —
        # measured 3.1 → 0.5 ms of GC per request and +35 % throughput (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        yield
        tiler.state.dbpool.close()
        tiler.state.writepool.close()
        await app.state.readpool.close()
        await app.state.writepool.close()

    stac_settings = StacSettings(
        stac_fastapi_title="landsurf",
        stac_fastapi_description="Land-surface products (Sentinel-2 L2A MUSCATE, snow, L3A, snow duration).",
        stac_fastapi_landing_id="landsurf",
        stac_fastapi_version=__version__,
        enable_transactions_extensions=True,
        use_api_hydrate=settings.api_hydrate,
        openapi_url="/api",
        docs_url="/api.html",
    )
    client = functools.partial(LandsurfClient, landing_page_id="landsurf", title=stac_settings.stac_fastapi_title,
                               description=stac_settings.stac_fastapi_description)
    api = instantiate_api(client=client, settings=stac_settings,  # type: ignore[arg-type]
                          extensions=landsurf_extensions(stac_settings, store), lifespan=lifespan)
    app = api.app
    add_error_handlers(app)
    for router in routers:
        app.include_router(router)
        extra = list(getattr(router, "conformance_classes", ()))
        if extra:  # a new list: stac-fastapi's default is a module-level one
            api.client.base_conformance_classes = [*api.client.base_conformance_classes, *extra]
        api.client.extra_landing_links = (*api.client.extra_landing_links,
                                          *getattr(router, "landing_links", ()))
    for documented in (app, tiler):
        complete_path_parameters(documented)
        serve_with_public_servers(documented)

    # stac-fastapi's Brotli would re-compress PNG tiles, files and animations (processing's /timelapse); titiler
    # compresses what it should. Its ProxyHeaderMiddleware believes Forwarded/X-Forwarded-* from anyone: PublicUrl
    # replaces it.
    app.user_middleware = [
        Middleware(BrotliMiddleware, excluded_handlers=[r"^/raster/", rf"^{DOWNLOAD_PREFIX}/", r"^/timelapse"])
        if m.cls is BrotliMiddleware else m
        for m in app.user_middleware if m.cls is not ProxyHeaderMiddleware
    ]
    app.mount("/raster", MountedRootPath(tiler), name="raster")
    app.routes.append(viewer_mount("/viewer"))  # static files, GET/HEAD only
    if not viewer_built():
        log.warning("web viewer not built: /viewer has no map library", fix="run `make viewer`")
    downloads = Downloads(store, settings, TokenCache(ttl=settings.token_cache_s), metrics.registry)
    download_routes = add_download_routes(app, downloads)
    add_user_routes(app, downloads.tokens, settings.pool_timeout_s)
    app.include_router(subscriptions_router(settings))
    operator = Depends(require_role("operator"))

    @app.get("/health", tags=["Health"])
    async def health(request: Request) -> JSONResponse:
        """Ready (200) when the database answers with the pgSTAC version this code speaks; `status` is
        `degraded` when deliveries do not flow (inbox watcher dead, receipts stranded): the API still serves,
        production needs an operator. No server path is shown here (the operator views have the detail)."""
        body: dict[str, Any] = {"service": "landsurf", "version": __version__}
        try:
            body |= await check_database(request.app, settings.connect_timeout_s)
            body["database"] = "up"
        except UNAVAILABLE as exc:
            body |= {"status": "down", "database": "down", "error": type(exc).__name__, "ready": False}
            metrics.database_up.set(0)
            return JSONResponse(body, status_code=503)
        body["ready"] = body["schema_ok"]
        metrics.database_up.set(1)
        try:
            async with request.app.state.get_connection(request, "r") as conn:
                state = await inbox_state(conn, timeout=settings.connect_timeout_s)
            watcher, receipts = state["watcher"], state["deliveries"]
            body["ingest"] = {
                "ok": state["ok"], "watcher": watcher["state"], "heartbeat_age_s": watcher["heartbeat_age_s"],
                "untaken": watcher["untaken"], "oldest_untaken_age_s": watcher["oldest_untaken_age_s"],
                "open": receipts["open"], "oldest_open_age_s": receipts["oldest_open_age_s"],
                "failed": receipts["failed"], "stranded": receipts["stranded"]}
        except UNAVAILABLE as exc:
            body["ingest"] = {"ok": False, "error": type(exc).__name__}
        body["status"] = "down" if not body["ready"] else "ok" if body["ingest"]["ok"] else "degraded"
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/deliveries", tags=["Operations"], dependencies=[operator])
    async def deliveries(request: Request, status: str | None = None, limit: int = 100) -> JSONResponse:
        """Receipts of the latest deliveries: status, reason, product and delivery→searchable latency
        (operator token)."""
        limit = max(1, min(limit, 1000))
        async with request.app.state.get_connection(request, "r") as conn:
            rows = await conn.fetch(
                "SELECT id, name, checksum, status, reason, product_id, collection, attempts, received_at, "
                "finished_at, extract(epoch FROM finished_at - received_at) AS latency_s "
                "FROM landsurf.deliveries WHERE ($1::text IS NULL OR status = $1) ORDER BY id DESC LIMIT $2",
                status, limit)
            counts = await conn.fetch("SELECT status, count(*) AS n FROM landsurf.deliveries GROUP BY status")
        items = []
        for r in rows:
            row = dict(r)
            for key in ("received_at", "finished_at"):
                row[key] = row[key].isoformat() if row[key] else None
            row["latency_s"] = float(row["latency_s"]) if row["latency_s"] is not None else None
            items.append(row)
        return JSONResponse({"counts": {c["status"]: c["n"] for c in counts}, "deliveries": items})

    metrics.install(app, settings.metrics_scrape_addresses)

    async def verify(scope, token: str) -> str | None:
        return await role_of(scope["app"].state, token, settings.pool_timeout_s)

    # add_middleware puts each one outside the previous: innermost first
    app.add_middleware(RenderSlots, slots=settings.max_concurrent_renders, wait_s=settings.render_queue_s)
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(WriteGuard, verify=verify)
    app.add_middleware(DownloadFastPath, downloads=downloads, routes=download_routes)
    app.add_middleware(metrics.middleware)
    app.add_middleware(PublicUrl, settings=settings)
    app.add_middleware(ErrorShield)
    app.state.landsurf_settings = settings
    app.state.store = store
    return app

"""GET /timelapse: the router `processing.cli.api_app` adds to the catalog's app (catalog never imports processing).

Public, like search and tiles. Without any parameter it answers what it takes and its bounds (JSON); with them, the
animation (processing/timelapse.py says how it is made), or `format=json`: the plan, i.e. the frames' dates and
items, at the cost of one search. Renders run in a worker thread, at most `timelapse_concurrent` at once in this
process; the others wait `timelapse_queue_s` for a slot, then get 503 with Retry-After. The output is spooled
(memory, then a temporary file past 8 MiB) and streamed with its Content-Length.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from catalog.errors import Busy, NotFound
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from catalog.store import AssetStore
from processing.settings import ProcessingSettings
from processing.timelapse import ALIASES, MEDIA, MIN_SIZE, Plan, make_plan, parse_request, render

log = get_logger(__name__)
SPOOL_BYTES = 8 << 20
CHUNK = 1 << 20
CACHE_CONTROL = "public, max-age=300"  # a product published in the period later changes the ETag


def describe(bounds: ProcessingSettings) -> dict[str, Any]:
    """What GET /timelapse without parameters answers."""
    return {
        "description": "An animation of the clear-sky pictures of an area over a period, one frame per date, "
                       "each dated.",
        "parameters": {
            "bbox": "west,south,east,north in degrees (required; at most "
                    f"{bounds.timelapse_max_bbox_degrees:g}° a side)",
            "datetime": "start/end, dates or RFC 3339 instants (required; at most "
                        f"{bounds.timelapse_max_period_days} days)",
            "collection": f"one of {', '.join(sorted(ALIASES))} (default sentinel2-l2a)",
            "max_cloud": "largest eo:cloud_cover of an item shown, 0–100 (default 20)",
            "format": f"{' | '.join(MEDIA)} (default gif; json: the plan, no rendering)",
            "size": f"longest frame side, {MIN_SIZE}–{bounds.timelapse_max_size} px "
                    f"(default {bounds.timelapse_default_size})",
            "fps": "frames per second, 1–30 (default 2)",
        },
        "bounds": {"frames": bounds.timelapse_max_frames, "items": bounds.timelapse_max_items,
                   "frames_x_pixels": bounds.timelapse_max_pixels},
        "example": "/timelapse?bbox=0.6,44.2,0.8,44.4&datetime=2024-06-01/2024-08-31&max_cloud=20&format=gif",
    }


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, prefix="landsurf-timelapse-")


def _chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        spool.seek(0)
        while chunk := spool.read(CHUNK):
            yield chunk
    finally:
        spool.close()


def _not_modified(request: Request, etag: str) -> bool:
    match = request.headers.get("if-none-match")
    if not match:
        return False
    tags = [m.strip() for m in match.split(",")]
    return "*" in tags or etag in tags or etag.removeprefix("W/") in [t.removeprefix("W/") for t in tags]


def timelapse_router(settings: CatalogSettings, bounds: ProcessingSettings | None = None) -> APIRouter:
    """The route of the module docstring; `landing_links` joins the landing page."""
    bounds = bounds or ProcessingSettings()
    store = AssetStore.from_settings(settings)
    slots = asyncio.Semaphore(bounds.timelapse_concurrent)
    acquire_s, statement_s = settings.pool_timeout_s, settings.statement_timeout_ms / 1000
    router = APIRouter(tags=["Time-lapse"])
    router.landing_links = (  # type: ignore[attr-defined]
        ("timelapse", "application/json", "Time-lapse of an area over a period (GIF, WebP, MP4): its parameters",
         "/timelapse"),)

    async def search(request: Request, body: dict[str, Any]) -> list[dict[str, Any]]:
        async with request.app.state.readpool.acquire(timeout=acquire_s) as conn:
            found = await conn.fetchval("SELECT pgstac.search($1::text::jsonb)", orjson.dumps(body).decode(),
                                        timeout=statement_s)
        if isinstance(found, (str, bytes)):
            found = orjson.loads(found)
        return list((found or {}).get("features") or [])

    @router.get(
        "/timelapse", response_model=None, summary="Time-lapse of an area over a period",
        responses={200: {"content": {m: {} for m in MEDIA.values()}, "description": "the animation (or the plan)"},
                   304: {"description": "not modified (If-None-Match)"},
                   400: {"description": "a bad or out-of-bounds parameter, named with its bound's setting"},
                   404: {"description": "no clear item in the area and period, or an unknown collection"},
                   503: {"description": "every render slot is busy; Retry-After"}})
    async def timelapse(
        request: Request,
        bbox: str | None = Query(None, description="west,south,east,north in degrees (WGS84)."),
        datetime: str | None = Query(None, description="start/end: dates (YYYY-MM-DD) or RFC 3339 instants."),
        collection: str | None = Query(None, description="sentinel2-l2a (default), sentinel2-snow, sentinel2-l3a "
                                                         "(or l2a, snow, l3a)."),
        max_cloud: str | None = Query(None, description="Largest eo:cloud_cover shown, 0–100 (default 20)."),
        format: str | None = Query(None, description="gif (default), webp, mp4, or json: the plan only."),
        size: str | None = Query(None, description="Longest frame side in pixels."),
        fps: str | None = Query(None, description="Frames per second, 1–30 (default 2)."),
    ) -> Response:
        """The clear-sky pictures (items with `eo:cloud_cover` ≤ max_cloud) of the area, one frame per date in date
        order, cropped to the area, each with its date written on it. Without parameters: what it takes."""
        params = {"bbox": bbox, "datetime": datetime, "collection": collection, "max_cloud": max_cloud,
                  "format": format, "size": size, "fps": fps}
        if all(v is None for v in params.values()):
            return JSONResponse(describe(bounds), headers={"Cache-Control": "public, max-age=3600"})
        req = parse_request(params, bounds)
        plan: Plan = make_plan(req, await search(request, req.search(bounds.timelapse_max_items + 1)), bounds)
        headers = {"ETag": plan.etag, "Cache-Control": CACHE_CONTROL}
        if req.format == "json":
            return JSONResponse(plan.describe(), headers=headers)
        if not plan.frames:
            raise NotFound(f"no item of {req.collection} with eo:cloud_cover ≤ {req.max_cloud:g} in the area and "
                           "period", "widen the area or the period, or raise max_cloud (format=json shows the plan)")
        if _not_modified(request, plan.etag):
            return Response(status_code=304, headers=headers)
        try:
            await asyncio.wait_for(slots.acquire(), bounds.timelapse_queue_s)
        except asyncio.TimeoutError:
            raise Busy("every time-lapse render slot is busy",
                       "retry shortly (LANDSURF_PROCESSING_TIMELAPSE_CONCURRENT sets the slots)") from None
        spool = _spool()
        try:
            await run_in_threadpool(render, plan, store.readable, spool)
        except BaseException:
            spool.close()
            raise
        finally:
            slots.release()
        length = spool.tell()
        log.info("time-lapse rendered", collection=req.collection, frames=len(plan.frames), format=req.format,
                 bytes=length)
        headers |= {"Content-Length": str(length),
                    "Content-Disposition": f'inline; filename="{req.filename()}"',
                    "X-Timelapse-Frames": str(len(plan.frames))}
        return StreamingResponse(_chunks(spool), media_type=MEDIA[req.format], headers=headers)

    return router

"""Downloads of published files: Range, ETag / If-None-Match, Last-Modified, Content-Length.

Only published files are served: regular files whose real path is inside the store, reached through
no hidden component (`.staging/`, leftovers of a killed worker) — a symlink planted in the store that
points elsewhere is "not found". Producer-written bytes never run in the API's origin: every answer
carries `X-Content-Type-Options: nosniff` and a sandboxing CSP, and anything that is not an image
or a GeoTIFF is sent as an attachment.
"""

from __future__ import annotations

import mimetypes
import os
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from catalog.asgi import send_error
from catalog.errors import LandsurfError
from catalog.store import DOWNLOAD_PREFIX, AssetStore

CHUNK = 1 << 20  # 1 MiB reads: measured 5× the throughput of Starlette's 64 KiB (tiles-downloads.md, part B)
INLINE = frozenset({"image/png", "image/jpeg", "image/tiff", "image/webp"})
CACHE = "public, max-age=86400"
SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


class StoreFileResponse(FileResponse):
    chunk_size = CHUNK


def media_type(name: str) -> str:
    if name.lower().endswith((".tif", ".tiff")):
        return "image/tiff; application=geotiff"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def answer(store: AssetStore, path: str, headers_in: dict[str, str], trusted_proxy: bool,
           accel_redirect: str | None) -> Response:
    """The response for one download: the file (Range, ETag, Last-Modified), a 304, or an X-Accel-Redirect."""
    local = store.published_file(path)
    kind = media_type(local.name)
    headers = {"Cache-Control": CACHE, **SAFETY}
    if kind.split(";")[0] not in INLINE:
        headers["Content-Disposition"] = f'attachment; filename="{local.name}"'
    if accel_redirect and trusted_proxy:
        rel = local.relative_to(store.root.resolve()).as_posix()
        return Response(headers={**headers, "Content-Type": kind,
                                 "X-Accel-Redirect": accel_redirect.rstrip("/") + "/" + quote(rel)})
    response = StoreFileResponse(local, media_type=kind, headers=headers, stat_result=os.stat(local))
    etag = response.headers["etag"]
    if etag in [t.strip() for t in headers_in.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE, **SAFETY})
    return response


def add_download_route(app: FastAPI, store: AssetStore, accel_redirect: str | None = None) -> APIRoute:
    """`accel_redirect`: behind nginx, a download asked through the trusted proxy is answered with an empty
    `X-Accel-Redirect` to an internal location aliasing the store; nginx then sends the file itself (with
    sendfile, Range and conditional requests) — measured in docs/benchmarks.md. The route documents the
    download in OpenAPI; `DownloadFastPath` answers it."""

    @app.api_route(DOWNLOAD_PREFIX + "/{path:path}", methods=["GET", "HEAD"], tags=["Download"],
                   response_class=FileResponse)
    async def download(path: str, request: Request) -> Response:
        """One published file, with Range, ETag and Last-Modified (what GDAL's /vsicurl/ needs)."""
        return answer(store, path, dict(request.headers), bool(request.scope.get("landsurf_trusted_proxy")),
                      accel_redirect)

    return next(r for r in app.routes if isinstance(r, APIRoute) and r.path == DOWNLOAD_PREFIX + "/{path:path}")


class DownloadFastPath:
    """Downloads answered before the router: a download is a path check, a stat and a file (or an
    X-Accel-Redirect), and GDAL asks for thousands of 64 KiB ranges; routing and dependency resolution would be
    most of the cost of each (measured in docs/benchmarks.md). Writes, limits and other routes are untouched."""

    def __init__(self, app: ASGIApp, store: AssetStore, route: APIRoute, accel_redirect: str | None) -> None:
        self.app, self.store, self.route, self.accel = app, store, route, accel_redirect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        if not path.startswith(DOWNLOAD_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        rel = path[len(DOWNLOAD_PREFIX) + 1:]
        scope["route"], scope["path_params"] = self.route, {"path": rel}  # for the metrics' route label
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            response = answer(self.store, rel, headers, bool(scope.get("landsurf_trusted_proxy")), self.accel)
        except LandsurfError as exc:
            await send_error(send, exc.http_status, type(exc).__name__, str(exc))
            return
        await response(scope, receive, send)

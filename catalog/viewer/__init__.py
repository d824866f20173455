"""The web viewer: static files served by the app at /viewer — a page, its script and style, and MapLibre GL
copied from npm into `static/vendor/` by `make viewer` (no CDN, no network at run time).

Every file is answered under a strict Content-Security-Policy: script, worker, style, image and fetch from this
origin only, no inline script or style element, no framing. The mount has one GET/HEAD route, so route walkers
(the write-route test) see that it takes no writes.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
MAPLIBRE = STATIC / "vendor" / "maplibre-gl.mjs"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "worker-src 'self'",          # MapLibre's module worker, loaded from vendor/ beside its main module
    "connect-src 'self'",         # the STAC API and the tiles
    "img-src 'self' data: blob:",  # tiles are decoded from blobs; MapLibre's control icons are data: URIs
    "style-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-cache"),  # revalidated by ETag: a new build is seen at once
]


class SecuredFiles:
    """Starlette's StaticFiles (safe path resolution, ETag, HEAD) with the viewer's headers on every answer."""

    def __init__(self, directory: Path) -> None:
        self.files: ASGIApp = StaticFiles(directory=directory, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        await self.files(scope, receive, send_secured)


def is_built() -> bool:
    """MapLibre copied in by `make viewer`? Without it the page loads but draws no map."""
    return MAPLIBRE.is_file()


def viewer_mount(path: str = "/viewer") -> Mount:
    """The viewer's files at `path` (`path` alone redirects to `path/`, the page)."""
    files = SecuredFiles(STATIC)
    return Mount(path, app=Router(routes=[Route("/{file:path}", files, methods=["GET", "HEAD"])]), name="viewer")

"""Downloads of published files and whole products: Range, ETag / If-None-Match, Last-Modified, Content-Length and
the RFC 9530 `Repr-Digest` (the item's `file:checksum`); a streamed zip bundle of one product; optional tokens,
per-user rate and concurrency limits.

Only published files are served: regular files whose real path is inside the store, reached through no hidden
component (`.staging/`, leftovers of a killed worker) — a symlink planted in the store that points elsewhere is
"not found". Producer-written bytes never run in the API's origin: every answer carries
`X-Content-Type-Options: nosniff` and a sandboxing CSP, and anything that is not an image or a GeoTIFF is sent
as an attachment.

Where the time goes (docs/benchmarks.md, "Downloads"): a download is answered before the router
(`DownloadFastPath`); what a file needs besides its bytes — real path, validators, headers, digest — is kept per
file (`PublishedFiles`, a bounded LRU keyed by store path and re-checked against the opened file's inode on every
request); the digest is found once per file in pgSTAC (the asset of the item whose href is the path), never
recomputed; bytes are read with `preadv(RWF_NOWAIT)` on the event loop when they are in the page cache (no thread
hop) and in a worker thread when they are not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mimetypes
import os
import re
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from catalog.asgi import send_error
from catalog.collections import HISTORY_SUFFIX
from catalog.errors import BadRequest, LandsurfError, NotFound, Unauthorized
from catalog.logging import get_logger
from catalog.ratelimit import DownloadLimiter
from catalog.store import DOWNLOAD_PREFIX, AssetStore, is_foreign
from catalog.users import TokenCache, authenticate

log = get_logger(__name__)

CHUNK = 1 << 20  # 1 MiB reads: measured 5× the throughput of Starlette's 64 KiB (tiles-downloads.md, part B)
INLINE = frozenset({"image/png", "image/jpeg", "image/tiff", "image/webp"})
CACHE = "public, max-age=86400"
SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}
BUNDLE_PATH = re.compile(r"^/collections/([^/]+)/items/([^/]+)/bundle\.zip$")
BUNDLE_ROUTE = "/collections/{collection_id}/items/{item_id}/bundle.zip"
WATCH_BYTES = 8 << 20  # responses this long watch for the client leaving (a dropped connection stops the reads)
RETRY_DIGEST_S = 30.0  # a digest look-up that failed (database down) is tried again after this
TOKEN_HINT = "send `Authorization: Bearer <token>`; an operator gives users one with `landsurf users token NAME`"


class StoreFileResponse(FileResponse):
    chunk_size = CHUNK


class TooManyRequests(LandsurfError):
    """A user is over its download rate or concurrency: retry after `retry_after` seconds."""

    http_status = 429

    def __init__(self, problem: str, retry_after: int) -> None:
        super().__init__(problem, f"retry after {retry_after} s (the Retry-After header)")
        self.retry_after = retry_after


def media_type(name: str) -> str:
    if name.lower().endswith((".tif", ".tiff")):
        return "image/tiff; application=geotiff"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def repr_digest(checksum: str | None) -> str | None:
    """RFC 9530 `Repr-Digest` of a `file:checksum` multihash, for sha2-256 (`1220<hex>`) only."""
    if not checksum or not checksum.startswith("1220") or len(checksum) != 68:
        return None
    try:
        return "sha-256=:" + base64.b64encode(bytes.fromhex(checksum[4:])).decode() + ":"
    except ValueError:
        return None


# -- what a file needs besides its bytes ---------------------------------------------------------------------

@dataclass(frozen=True)
class FileMeta:
    real: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    headers: tuple[tuple[bytes, bytes], ...]  # every header of a 200 but Content-Length
    etag: str
    last_modified: str
    checksum: str | None  # the item's file:checksum, when an item names this file
    digest_until: float  # when a failed digest look-up is tried again (0: found or absent for good)


def file_headers(name: str, st: os.stat_result, checksum: str | None) -> tuple[tuple[bytes, bytes], ...]:
    kind = media_type(name)
    headers = [(b"content-type", kind.encode()), (b"accept-ranges", b"bytes"),
               # nginx's validators, so that a file keeps its ETag when nginx serves it (X-Accel-Redirect)
               (b"etag", b'"%x-%x"' % (int(st.st_mtime), st.st_size)),
               (b"last-modified", formatdate(st.st_mtime, usegmt=True).encode()),
               (b"cache-control", CACHE.encode()),
               *((k.lower().encode(), v.encode()) for k, v in SAFETY.items())]
    if kind.split(";")[0] not in INLINE:
        headers.append((b"content-disposition", f'attachment; filename="{quote(name)}"'.encode()))
    if digest := repr_digest(checksum):
        headers.append((b"repr-digest", digest.encode()))
    return tuple(headers)


class DigestIndex:
    """The `file:checksum` of a store path, from pgSTAC: the file's folder is its item's id and its first
    component the collection (or its `-history`), as the store layout has it (catalog/store.py); the asset is
    the one whose stored href is the path. One indexed look-up per file, cached by `PublishedFiles`."""

    SQL = ("SELECT a.value->>'file:checksum' FROM pgstac.items i, jsonb_each(i.content->'assets') a "
           "WHERE i.id = $1 AND i.collection = ANY($2::text[]) AND a.value->>'href' = $3 LIMIT 1")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def checksum(self, app_state: Any, rel: str) -> str | None:
        parts = PurePosixPath(rel).parts
        if len(parts) < 3:
            return None
        async with app_state.readpool.acquire(timeout=self.timeout) as conn:
            return await conn.fetchval(self.SQL, parts[-2], [parts[0], parts[0] + HISTORY_SUFFIX], rel)


class PublishedFiles:
    """Published files by store path: a bounded LRU of what `AssetStore.published_file` found (real path,
    inode) and of the headers built from it. Every request opens the real path without following a final
    symlink and compares the inode: a replaced file, or a path made to lead elsewhere, is checked anew."""

    def __init__(self, store: AssetStore, digests: DigestIndex, size: int = 16384) -> None:
        self.store, self.digests, self.size = store, digests, size
        self._known: OrderedDict[str, FileMeta] = OrderedDict()

    async def open(self, rel: str, app_state: Any) -> tuple[int, FileMeta]:
        """An open descriptor of the published file at `rel` and its metadata (NotFound otherwise)."""
        meta = self._known.get(rel)
        if meta is not None:
            try:
                fd = os.open(meta.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (meta.dev, meta.ino, meta.size,
                                                                          meta.mtime_ns) \
                        and not (meta.digest_until and time.monotonic() > meta.digest_until):
                    self._known.move_to_end(rel)
                    return fd, meta
                os.close(fd)
            del self._known[rel]
        real = self.store.published_file(rel)  # NotFound / BadRequest for anything not published
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise NotFound(f"no file {rel[:200]} in the store", "check the asset href in the item") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"{rel[:200]} is not a published file", "use an asset href of an item")
            checksum, until = None, 0.0
            try:
                checksum = await self.digests.checksum(app_state, rel)
            except Exception as exc:  # noqa: BLE001 - the file is served without its digest, looked up again later
                log.warning("digest look-up failed", path=rel[:200], error=type(exc).__name__)
                until = time.monotonic() + RETRY_DIGEST_S
        except BaseException:
            os.close(fd)
            raise
        meta = FileMeta(str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                        file_headers(real.name, st, checksum), '"%x-%x"' % (int(st.st_mtime), st.st_size),
                        formatdate(st.st_mtime, usegmt=True), checksum, until)
        self._known[rel] = meta
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return fd, meta


# -- sending bytes ---------------------------------------------------------------------------------------------

def _read_now(fd: int, size: int, offset: int) -> bytes | None:
    """Bytes already in the page cache, read without blocking the event loop on a disk; None when they are not."""
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError:  # a filesystem without RWF_NOWAIT
        return None
    if n < size:
        return None
    return bytes(buf) if size <= 65536 else buf  # type: ignore[return-value]


async def _read(fd: int, size: int, offset: int) -> bytes:
    data = _read_now(fd, size, offset)
    if data is None:
        data = await asyncio.get_running_loop().run_in_executor(None, os.pread, fd, size, offset)
    if len(data) < size:
        raise OSError(f"the file is shorter than its size ({offset + len(data)} < {offset + size})")
    return data


def _range(value: str, size: int) -> tuple[int, int] | None | str:
    """One `bytes=a-b` range as (start, end exclusive); None to ignore the header (malformed, several ranges:
    RFC 9110 lets a server send the whole file); "unsatisfiable" for a range past the end."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            n = int(last)
            if n <= 0:
                return "unsatisfiable" if n == 0 else None
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0:
        return None
    if start >= size:  # before the order check: `bytes=<size>-` (a resume of a complete file) is a 416
        return "unsatisfiable"
    if end <= start:
        return None
    return start, min(end, size)


async def send_file(scope: Scope, receive: Receive, send: Send, fd: int, meta: FileMeta,
                    req: dict[bytes, str]) -> None:
    """The file (whole or one range), a 304 or a 416, with every header; `req` holds the request's conditional
    headers. Several ranges in one request go to Starlette's multipart answer."""
    size = meta.size
    inm = req.get(b"if-none-match")
    if (inm is not None and (inm.strip() == "*" or meta.etag in [t.strip().removeprefix("W/")
                                                                 for t in inm.split(",")])) or \
            (inm is None and req.get(b"if-modified-since") == meta.last_modified):
        await send({"type": "http.response.start", "status": 304, "headers": [
            h for h in meta.headers if h[0] in (b"etag", b"last-modified", b"cache-control", b"repr-digest",
                                                 b"x-content-type-options", b"content-security-policy")]})
        await send({"type": "http.response.body", "body": b""})
        return
    start, end, status = 0, size, 200
    headers = list(meta.headers)
    if (rng := req.get(b"range")) is not None:
        if_range = req.get(b"if-range")
        if if_range is None or if_range in (meta.etag, meta.last_modified):
            if rng.count(",") and rng.strip().lower().startswith("bytes="):
                await StoreFileResponse(meta.real, headers={k.decode(): v.decode() for k, v in meta.headers},
                                        stat_result=os.fstat(fd))(scope, receive, send)
                return
            found = _range(rng, size)
            if found == "unsatisfiable":
                await send_error(send, 416, "RangeNotSatisfiable",
                                 f"the range {rng[:100]} starts past the end of the file ({size} bytes) — "
                                 "ask for bytes below the size", [(b"content-range", b"bytes */%d" % size)])
                return
            if isinstance(found, tuple):
                start, end, status = *found, 206
                headers.append((b"content-range", b"bytes %d-%d/%d" % (start, end - 1, size)))
    headers.append((b"content-length", b"%d" % (end - start)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if scope["method"] == "HEAD" or end == start:
        await send({"type": "http.response.body", "body": b""})
        return
    gone = None
    watcher = None
    if end - start > WATCH_BYTES:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()  # type: ignore[union-attr]

        watcher = asyncio.ensure_future(watch())
    try:
        pos = start
        while pos < end and not (gone is not None and gone.is_set()):
            n = min(CHUNK, end - pos)
            data = await _read(fd, n, pos)
            pos += n
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})
    finally:
        if watcher is not None:
            watcher.cancel()


# -- bundles ---------------------------------------------------------------------------------------------------

async def send_bundle(scope: Scope, send: Send, app_state: Any, store: AssetStore, collection: str, item_id: str,
                      req: dict[bytes, str], timeout: float) -> None:
    """One product as a zip (STORE: COGs are compressed already), streamed with a known length: the item JSON
    (hrefs made relative) and every asset file of the store, read 1 MiB at a time in a worker thread."""
    from zipstream import ZIP_STORED, ZipStream

    if any("\x00" in v or len(v) > 1024 for v in (collection, item_id)):  # PostgreSQL text holds no NUL
        raise BadRequest("the collection or item id contains a NUL byte or is too long", "use ids from /search")
    async with app_state.readpool.acquire(timeout=timeout) as conn:
        item = await conn.fetchval("SELECT pgstac.get_item($1, $2)", item_id, collection)
    if item is None:
        raise NotFound(f"no item {item_id[:200]} in collection {collection[:200]}", "check the ids with /search")
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    names: set[str] = set()
    etag = hashlib.sha256(item_id.encode())
    assets = item.get("assets", {})
    for key, asset in sorted(assets.items()):
        href = asset.get("href", "")
        if not href or is_foreign(href) or href.startswith("/"):
            continue
        real = store.published_file(href)
        name = real.name if real.name not in names else f"{key}-{real.name}"
        names.add(name)
        st = real.stat()
        etag.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        stream.add_path(str(real), f"{item_id}/{name}")
        asset["href"] = f"./{name}"
    item["links"] = []
    doc = orjson.dumps(item, option=orjson.OPT_INDENT_2)
    etag.update(doc)
    stream.add(doc, f"{item_id}/{item_id}.json")
    tag = f'"{etag.hexdigest()[:32]}"'
    headers = [(b"content-type", b"application/zip"), (b"etag", tag.encode()), (b"cache-control", CACHE.encode()),
               (b"content-disposition", f'attachment; filename="{quote(item_id)}.zip"'.encode()),
               *((k.lower().encode(), v.encode()) for k, v in SAFETY.items())]
    if tag in [t.strip() for t in req.get(b"if-none-match", "").split(",")]:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": headers + [(b"content-length", b"%d" % len(stream))]})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    chunks = iter(stream)

    def block() -> bytes:  # zipstream reads 64 KiB at a time: batched to 1 MiB per thread hop
        out = bytearray()
        for chunk in chunks:
            out += chunk
            if len(out) >= CHUNK:
                break
        return bytes(out)

    loop = asyncio.get_running_loop()
    while data := await loop.run_in_executor(None, block):
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


# -- the fast path ---------------------------------------------------------------------------------------------

WANTED = (b"authorization", b"range", b"if-range", b"if-none-match", b"if-modified-since")


class Downloads:
    """Everything a download needs, built once per app: the store, the file cache, tokens and limits."""

    def __init__(self, store: AssetStore, settings: Any, tokens: TokenCache, registry: Any = None) -> None:
        from prometheus_client import Counter

        self.store, self.settings, self.tokens = store, settings, tokens
        # bytes of bodies handed to the server (files and bundles): what a resumed download really cost
        sent = Counter("landsurf_download_bytes", "Body bytes of downloads sent", ["kind"],
                       registry=registry) if registry is not None else None
        # the two series, looked up once: `labels()` per request was a tenth of a 64 KiB range's time in Python
        self.sent = {kind: sent.labels(kind) for kind in ("file", "bundle")} if sent is not None else None
        self.files = PublishedFiles(store, DigestIndex(settings.pool_timeout_s))
        self.limiter = DownloadLimiter(settings.download_rate, settings.download_burst, settings.download_concurrency)
        self.accel = settings.accel_redirect
        self.require = settings.downloads_require_token

    async def handle(self, scope: Scope, receive: Receive, send: Send, file: str | None,
                     bundle: tuple[str, str] | None) -> None:
        """Answer one download (a store file or a product bundle), errors included."""
        req: dict[bytes, str] = {}
        for k, v in scope["headers"]:
            if k in WANTED:
                req[k] = v.decode("latin-1")
        key = None
        sent, series = 0, None
        if self.sent is not None:
            series = self.sent["bundle" if bundle is not None else "file"]
            inner_send = send

            async def send(message: dict) -> None:  # type: ignore[no-redef]
                nonlocal sent
                if message["type"] == "http.response.body":
                    sent += len(message.get("body", b""))
                    if sent >= WATCH_BYTES:  # a long transfer shows in /metrics as it goes
                        series.inc(sent)
                        sent = 0
                await inner_send(message)
        try:
            principal = await authenticate(self.tokens, scope["app"].state, req.get(b"authorization"),
                                           self.settings.pool_timeout_s)
            if principal is None and self.require:
                raise Unauthorized("downloads need a bearer token on this server", TOKEN_HINT)
            if principal is not None:
                if (refusal := self.limiter.admit(principal.key)) is not None:
                    raise TooManyRequests(refusal.reason, refusal.retry_after)
                key = principal.key
            if bundle is not None:
                await send_bundle(scope, send, scope["app"].state, self.store, *bundle, req,
                                  self.settings.pool_timeout_s)
            else:
                await self._file(scope, receive, send, file or "", req)
        except LandsurfError as exc:
            extra: list[tuple[bytes, bytes]] = []
            if exc.http_status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
            if isinstance(exc, TooManyRequests):
                extra.append((b"retry-after", str(exc.retry_after).encode()))
            await send_error(send, exc.http_status, type(exc).__name__, str(exc), extra)
        finally:
            if key is not None:
                self.limiter.release(key)
            if series is not None and sent:  # the rest, once per response (a dropped client's bytes included)
                series.inc(sent)

    async def _file(self, scope: Scope, receive: Receive, send: Send, rel: str, req: dict[bytes, str]) -> None:
        fd, meta = await self.files.open(rel, scope["app"].state)
        try:
            if self.accel and scope.get("landsurf_trusted_proxy"):
                # nginx sends the bytes (sendfile, Range, conditionals) and copies Repr-Digest (infra/nginx)
                inner = Path(meta.real).relative_to(self.store.root.resolve()).as_posix()
                headers = [h for h in meta.headers if h[0] not in (b"accept-ranges", b"etag", b"last-modified")]
                headers.append((b"x-accel-redirect", (self.accel.rstrip("/") + "/" + quote(inner)).encode()))
                await send({"type": "http.response.start", "status": 200,
                            "headers": headers + [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
            await send_file(scope, receive, send, fd, meta, req)
        finally:
            os.close(fd)


class AsgiAnswer(Response):
    """A route's answer that is an ASGI call (the documented routes answer as the fast path does)."""

    def __init__(self, call: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.call = call
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.call(scope, receive, send)


def add_download_routes(app: FastAPI, downloads: Downloads) -> dict[str, APIRoute]:
    """Document the downloads in OpenAPI (`DownloadFastPath` answers them before the router), and answer them
    the same way when reached through the router."""

    @app.api_route(DOWNLOAD_PREFIX + "/{path:path}", methods=["GET", "HEAD"], tags=["Download"],
                   response_class=FileResponse)
    async def download(path: str, request: Request) -> Response:
        """One published file, with Range, ETag, Last-Modified, Content-Length and `Repr-Digest` (RFC 9530,
        the item's `file:checksum`) — what GDAL's /vsicurl/ and `landsurf download` need. A token is needed when
        the server sets `LANDSURF_DOWNLOADS_REQUIRE_TOKEN`; 429 with `Retry-After` over a user's limits."""
        return AsgiAnswer(lambda s, r, se: downloads.handle(s, r, se, path, None))

    @app.api_route(BUNDLE_ROUTE, methods=["GET", "HEAD"], tags=["Download"],
                   response_class=Response, responses={200: {"content": {"application/zip": {}}}})
    async def bundle(collection_id: str, item_id: str, request: Request) -> Response:
        """One product as a zip: its item (hrefs relative) and every file of the store it names, streamed
        (stored, not recompressed) with its Content-Length."""
        return AsgiAnswer(lambda s, r, se: downloads.handle(s, r, se, None, (collection_id, item_id)))

    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    return {"file": routes[DOWNLOAD_PREFIX + "/{path:path}"], "bundle": routes[BUNDLE_ROUTE]}


class DownloadFastPath:
    """Downloads answered before the router: a download is a token check, a path check, a stat and a file (or an
    X-Accel-Redirect), and GDAL asks for thousands of 64 KiB ranges; routing and dependency resolution would be
    most of the cost of each (measured in docs/benchmarks.md). Writes, limits and other routes are untouched."""

    def __init__(self, app: ASGIApp, downloads: Downloads, routes: dict[str, APIRoute]) -> None:
        self.app, self.downloads, self.routes = app, downloads, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        if path.startswith(DOWNLOAD_PREFIX + "/"):
            rel = path[len(DOWNLOAD_PREFIX) + 1:]
            scope["route"], scope["path_params"] = self.routes["file"], {"path": rel}  # the metrics' route label
            await self.downloads.handle(scope, receive, send, rel, None)
        elif path.endswith("/bundle.zip") and (m := BUNDLE_PATH.match(path)):
            scope["route"] = self.routes["bundle"]
            scope["path_params"] = {"collection_id": m.group(1), "item_id": m.group(2)}
            await self.downloads.handle(scope, receive, send, None, (m.group(1), m.group(2)))
        else:
            await self.app(scope, receive, send)

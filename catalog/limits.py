"""Bounds on everything a client can ask, enforced before any handler runs.

One table names every size-like input — query parameters of the STAC API and of the tiler, sizes
written in tiler paths, JSON bodies — with its maximum and the setting that changes it. A request
over a bound gets a 400 naming the input, its value, the bound and the setting (a body over its
bound: 413); a route added later is bounded by the names of its parameters without anyone
remembering. Images are also rendered a few at a time (`RenderSlots`), so that the memory of the
process is bounded by slots × the largest image, whatever is asked (docs/operations.md, "Limits").
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.asgi import header, send_error
from catalog.settings import HttpSettings

MAX_JSON_DEPTH = 64  # any JSON body or JSON parameter; GeoJSON multipolygons need 6
MAX_LIST = 100  # entries of `fields`, `sortby`, `rescale`, `bidx`, …


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    setting: str


class Exceeded(Exception):
    def __init__(self, what: str, status: int = 400, code: str = "LimitExceeded") -> None:
        super().__init__(what)
        self.status = status
        self.code = "PayloadTooLarge" if status == 413 else code


def _bounds(s: HttpSettings) -> dict[str, Bound]:
    image = Bound(1, s.max_image_side, "LANDSURF_MAX_IMAGE_SIDE")
    return {
        "width": image, "height": image, "max_size": image,
        "tilesize": Bound(1, s.max_tile_size, "LANDSURF_MAX_TILE_SIZE"),
        "buffer": Bound(0, 64, "fixed"), "padding": Bound(0, 64, "fixed"),
        "limit": Bound(1, s.max_limit, "LANDSURF_MAX_LIMIT"),  # over the maximum: clamped before this check
        "offset": Bound(0, 1_000_000, "fixed"),
        "items_limit": Bound(1, 100, "fixed"), "scan_limit": Bound(1, 10_000, "fixed"),
        "time_limit": Bound(0, 10, "fixed"),
        "cover_scale": Bound(1, 100, "fixed"), "histogram_bins": Bound(1, 1000, "fixed"),
        "minzoom": Bound(0, 30, "fixed"), "maxzoom": Bound(0, 30, "fixed"), "zoom": Bound(0, 30, "fixed"),
    }


COUNTED = {"assets": "max_assets", "expression": "max_assets", "asset_expression": "max_assets",
           "ids": "max_ids", "collections": "max_ids"}
COUNT_SETTING = {"max_assets": "LANDSURF_MAX_ASSETS", "max_ids": "LANDSURF_MAX_IDS"}
TEXT = ("filter", "query", "intersects", "expression", "asset_expression", "colormap", "algorithm_params",
        "q", "datetime", "bbox", "fields", "sortby", "rescale", "bidx", "histogram_range")
JSON_PARAMS = ("query", "intersects", "colormap", "algorithm_params")
OBJECT_PARAMS = ("query", "intersects", "algorithm_params")

_PATH_SIZE = re.compile(r"/(-?\d+)x(-?\d+)(?:\.[A-Za-z0-9]+)?$")
_TILE = re.compile(r"/tiles/[^/]+/(-?\d+)/(-?\d+)/(-?\d+)(?:@|\.|/|$)")
_GEOJSON_BODY = re.compile(r"/(feature|statistics)(/[^/]*)?(\.[A-Za-z0-9]+)?$")
MAX_ZOOM = 30
_TILE_SCALE = re.compile(r"/tiles/[^/]+/[^/]+/[^/]+/[^/@.]+@(-?\d+)x")
_POINT = re.compile(r"/point/([^/,]+),([^/,]+)$")
_BBOX = re.compile(r"/bbox/([^/]+?)(?:\.[A-Za-z][A-Za-z0-9]*)?(?:/|$)")
_PARTS = re.compile(r"/(bbox/[^/]+|feature)(\.[A-Za-z0-9]+)?$")
_IMAGES = re.compile(r"^/raster/.*/(tiles/|preview|bbox/|feature|statistics|point/|map\b|[^/]*\.(png|jpe?g|webp|tif|npy|jp2))")
_JSON_BODY = re.compile(r"json", re.I)


def json_depth(raw: bytes | str) -> int:
    """Deepest nesting of `[`/`{` in JSON text, strings skipped; linear, no parsing (so no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def paren_depth(text: str) -> int:
    depth = deepest = 0
    quoted = False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif not quoted and ch == ")":
            depth -= 1
    return deepest


class RequestLimits:
    """Refuses, before the application sees it, any request over a bound of the settings."""

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.s = settings
        self.bounds = _bounds(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            scope = self._check_url(scope)
            if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                body = await self._read_body(scope, receive)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
                    (b"content-length", str(len(body)).encode())]
                receive = _replay(body, receive)
        except Exceeded as exc:
            status = exc.status
            await send_error(send, status, exc.code, str(exc), [(b"connection", b"close")] if status == 413 else None)
            return
        await self.app(scope, receive, send)

    # -- URL ---------------------------------------------------------------------------------
    def _check_url(self, scope: Scope) -> Scope:
        path: str = get_route_path(scope)
        query: bytes = scope.get("query_string", b"")
        if len(path) + len(query) > self.s.max_url_bytes:
            raise Exceeded(f"the URL is {len(path) + len(query)} bytes long, over the maximum of "
                           f"{self.s.max_url_bytes} (LANDSURF_MAX_URL_BYTES); send large searches as POST /search")
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if any(name == "limit" and _over(value, self.s.max_limit) for name, value in params):
            # OGC API Features: a limit over the maximum is no error, the maximum is served instead
            params = [(n, str(self.s.max_limit) if n == "limit" and _over(v, self.s.max_limit) else v)
                      for n, v in params]
            query = urlencode(params).encode("latin-1")
            scope["query_string"] = query
        counts: dict[str, int] = {}
        for name, value in params:
            key = name.lower()
            self._check_number(key, value)
            if key in COUNTED:
                counts[key] = counts.get(key, 0) + max(1, value.count(",") + 1 if key in ("ids", "collections")
                                                        else 1)
            if key in TEXT:
                self._check_text(key, value)
        for key, n in counts.items():
            setting = COUNTED[key]
            if n > getattr(self.s, setting):
                raise Exceeded(f"{n} values of `{key}`, over the maximum of {getattr(self.s, setting)} "
                               f"({COUNT_SETTING[setting]})")
        if path.startswith("/raster/"):
            self._check_image(path, dict((k.lower(), v) for k, v in params), counts.get("assets", 1))
            if _PARTS.search(path) and not any(k in ("width", "height", "max_size") for k, _ in params):
                # a part read at native resolution could be a whole tile: read it onto the largest image instead
                scope["query_string"] = (query + b"&" if query else b"") + urlencode(
                    {"max_size": self.s.max_image_side}).encode()
        return scope

    def _check_number(self, key: str, value: str) -> None:
        bound = self.bounds.get(key)
        if bound is None:
            return
        try:
            number = float(value)
        except ValueError:
            if key == "histogram_bins" and value.count(",") + 1 > 1000:
                raise Exceeded("`histogram_bins` lists more than 1000 edges (fixed maximum)") from None
            return  # not a number: the route's own validation answers
        if not bound.low <= number <= bound.high:
            raise Exceeded(f"`{key}`={value[:40]} is outside {bound.low:g}…{bound.high:g} ({bound.setting})")

    def _check_text(self, key: str, value: str) -> None:
        if len(value) > self.s.max_filter_bytes:
            raise Exceeded(f"`{key}` is {len(value)} bytes long, over the maximum of {self.s.max_filter_bytes} "
                           "(LANDSURF_MAX_FILTER_BYTES)")
        stripped = value.lstrip()
        if key in JSON_PARAMS or (key == "filter" and stripped.startswith(("{", "["))):
            limit = self.s.max_filter_depth if key == "filter" else MAX_JSON_DEPTH
            if (d := json_depth(value)) > limit:
                raise Exceeded(f"`{key}` nests {d} levels deep, over the maximum of {limit}"
                               + (" (LANDSURF_MAX_FILTER_DEPTH)" if key == "filter" else ""))
            if key in OBJECT_PARAMS or key == "filter":
                try:
                    parsed = orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise Exceeded(f"`{key}` is not valid JSON", code="BadRequest") from None
                if not isinstance(parsed, dict):
                    raise Exceeded(f"`{key}` must be a JSON object", code="BadRequest")
        elif key == "filter" and (d := paren_depth(value)) > self.s.max_filter_depth:
            raise Exceeded(f"`filter` nests {d} parentheses deep, over the maximum of {self.s.max_filter_depth} "
                           "(LANDSURF_MAX_FILTER_DEPTH)")
        elif key in ("fields", "sortby", "rescale", "bidx") and value.count(",") + 1 > MAX_LIST:
            raise Exceeded(f"`{key}` lists more than {MAX_LIST} entries (fixed maximum)")

    def _check_image(self, path: str, params: dict[str, str], assets: int) -> None:
        geographic = "coord_crs" not in params and "coord-crs" not in params
        for pattern, what in ((_POINT, "point"), (_BBOX, "bbox")):
            if (m := pattern.search(path)) and geographic:
                _check_lonlat(what, ",".join(m.groups()).split(","))
        side = None
        if m := _PATH_SIZE.search(path):
            w, h = int(m.group(1)), int(m.group(2))
            for name, v in (("width", w), ("height", h)):
                if not 1 <= v <= self.s.max_image_side:
                    raise Exceeded(f"image {name} {v} in the path is outside 1…{self.s.max_image_side} "
                                   "(LANDSURF_MAX_IMAGE_SIDE)")
            side = (w, h)
        if m := _TILE.search(path):
            z, x, y = (int(v) for v in m.groups())
            if not 0 <= z <= MAX_ZOOM or not 0 <= x < 2 ** (z + 1) or not 0 <= y < 2 ** (z + 1):
                raise Exceeded(f"tile {z}/{x}/{y} is outside every tile matrix (zoom 0…{MAX_ZOOM}, "
                               "column and row below 2^(zoom+1))", code="BadRequest")
        if m := _TILE_SCALE.search(path):
            scale = int(m.group(1))
            size = _int(params.get("tilesize"), 256)
            if not 1 <= scale or scale * size > self.s.max_tile_size:
                raise Exceeded(f"tile @{scale}x of {size} px is outside 1…{self.s.max_tile_size} px "
                               "(LANDSURF_MAX_TILE_SIZE)")
            side = (scale * size, scale * size)
        if side is None:
            w, h = _int(params.get("width"), 0), _int(params.get("height"), 0)
            m = _int(params.get("max_size"), 0)
            side = (w or h or m, h or w or m)
        pixels = side[0] * side[1] * max(1, assets)
        if pixels > self.s.max_image_pixels:
            raise Exceeded(f"{side[0]}×{side[1]} px × {max(1, assets)} assets is over the maximum of "
                           f"{self.s.max_image_pixels} pixels per image (LANDSURF_MAX_IMAGE_PIXELS)")

    # -- body --------------------------------------------------------------------------------
    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.s.max_body_bytes:
            raise Exceeded(f"the request body is {declared} bytes, over the maximum of {self.s.max_body_bytes} "
                           "(LANDSURF_MAX_BODY_BYTES)", 413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.s.max_body_bytes:
                raise Exceeded(f"the request body is over the maximum of {self.s.max_body_bytes} bytes "
                               "(LANDSURF_MAX_BODY_BYTES)", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        kind = header(scope, b"content-type") or "application/json"
        if body and not _JSON_BODY.search(kind):
            raise Exceeded(f"a request body of type {kind[:60]!r} is not accepted: every body here is JSON",
                           415, code="UnsupportedMediaType")
        if body:
            if (d := json_depth(body)) > MAX_JSON_DEPTH:
                raise Exceeded(f"the JSON body nests {d} levels deep, over the maximum of {MAX_JSON_DEPTH}")
            if "patch" not in kind.lower() and body.lstrip()[:1] not in (b"{", b""):
                raise Exceeded("the JSON body is not an object", code="BadRequest")
            route = get_route_path(scope)
            if route.endswith(("/search", "/searches/register")):
                body = self._check_search(route, body)
            elif route.startswith("/raster/") and _GEOJSON_BODY.search(route):
                _check_areas(body)
        return body

    def _check_search(self, path: str, body: bytes) -> bytes:
        if path.endswith("/register") and len(body) > 4 * self.s.max_filter_bytes:
            raise Exceeded(f"a registered search is {len(body)} bytes, over the maximum of "
                           f"{4 * self.s.max_filter_bytes} (4 × LANDSURF_MAX_FILTER_BYTES)")
        try:
            search = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # the route's validation says what is wrong with it
        if not isinstance(search, dict):
            return body
        limit = search.get("limit")
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > self.s.max_limit:
            search["limit"] = self.s.max_limit  # served at the maximum, as OGC API Features requires
            body = orjson.dumps(search)
        for key in ("ids", "collections"):
            if isinstance(search.get(key), list) and len(search[key]) > self.s.max_ids:
                raise Exceeded(f"{len(search[key])} `{key}`, over the maximum of {self.s.max_ids} (LANDSURF_MAX_IDS)")
        flt = search.get("filter")
        if isinstance(flt, str):
            self._check_text("filter", flt)
        elif flt is not None:
            raw = orjson.dumps(flt)
            if len(raw) > self.s.max_filter_bytes:
                raise Exceeded(f"`filter` is {len(raw)} bytes, over the maximum of {self.s.max_filter_bytes} "
                               "(LANDSURF_MAX_FILTER_BYTES)")
            if (d := json_depth(raw)) > self.s.max_filter_depth:
                raise Exceeded(f"`filter` nests {d} levels deep, over the maximum of {self.s.max_filter_depth} "
                               "(LANDSURF_MAX_FILTER_DEPTH)")
        for key in ("sortby",):
            if isinstance(search.get(key), list) and len(search[key]) > MAX_LIST:
                raise Exceeded(f"`{key}` lists more than {MAX_LIST} entries (fixed maximum)")
        fields = search.get("fields")
        if isinstance(fields, dict):
            for key in ("include", "exclude"):
                if isinstance(fields.get(key), list) and len(fields[key]) > MAX_LIST:
                    raise Exceeded(f"`fields.{key}` lists more than {MAX_LIST} entries (fixed maximum)")
        return body


def _check_areas(body: bytes) -> None:
    """What the tiler cuts images and statistics to: a Feature or FeatureCollection of (multi)polygons."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    features = doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else [doc]
    if not isinstance(features, list) or not features or len(features) > MAX_LIST:
        raise Exceeded(f"give a GeoJSON Feature or a FeatureCollection of 1…{MAX_LIST} features", code="BadRequest")
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon") \
                or not geometry.get("coordinates"):
            raise Exceeded("every feature needs a Polygon or MultiPolygon geometry with coordinates",
                           code="BadRequest")


def _check_lonlat(what: str, values: list[str]) -> None:
    """Longitudes and latitudes of a path (WGS84 unless `coord_crs` says otherwise) must exist on Earth."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise Exceeded(f"{what} coordinates {','.join(values)[:80]} are not numbers", code="BadRequest") from None
    if len(numbers) not in (2, 4):
        raise Exceeded(f"{what} needs 2 or 4 coordinates, not {len(numbers)}", code="BadRequest")
    lons, lats = numbers[0::2], numbers[1::2]
    if not all(-180 <= x <= 180 for x in lons) or not all(-90 <= y <= 90 for y in lats):
        raise Exceeded(f"{what} coordinates {','.join(values)[:80]} are outside longitude -180…180 / "
                       "latitude -90…90 (give coord_crs for projected coordinates)", code="BadRequest")


def _over(value: str, maximum: int) -> bool:
    try:
        return float(value) > maximum
    except ValueError:
        return False


def _int(value: str | None, default: int) -> int:
    try:
        return int(float(value)) if value is not None else default
    except ValueError:
        return default


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, handed to the application once; then whatever the server says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RenderSlots:
    """At most `slots` images rendered at once; a request waits `wait_s` for a slot, then gets 503."""

    def __init__(self, app: ASGIApp, slots: int, wait_s: float) -> None:
        self.app = app
        self.semaphore = asyncio.Semaphore(slots)
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _IMAGES.match(get_route_path(scope)):
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait_s)
        except asyncio.TimeoutError:
            await send_error(send, 503, "Busy", "every image slot is busy; retry shortly",
                             [(b"retry-after", b"2")])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.semaphore.release()

"""The STAC client of the API: stac-fastapi-pgstac's, with responses encoded by orjson.

Measured with py-spy under load: a third of the API's CPU went to FastAPI's generic
`jsonable_encoder` walk and the standard-library JSON encoder over item collections that are
already plain JSON-ready dicts. Returning a finished response skips both.
"""

from __future__ import annotations

import copy
import time
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from stac_fastapi.pgstac.core import CoreCrudClient
from stac_fastapi.pgstac.models.links import SearchLinks
from stac_fastapi.pgstac.utils import exclude_fields, include_fields
from stac_fastapi.types.errors import InvalidQueryParameter
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from catalog.collections import COLLECTIONS, EXTENSIONS, HISTORY_SUFFIX, STAC_VERSION
from catalog.openapi import OPENAPI_MEDIA_TYPE
from catalog.store import render_href


class GeoJSONResponse(Response):
    media_type = "application/geo+json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class JSONResponse(GeoJSONResponse):
    media_type = "application/json"


def _finish(result: Any, cls: type[Response] = GeoJSONResponse) -> Any:
    """A finished response; stac-fastapi answers `fields` requests as plain JSON, which GeoJSON they still are."""
    if isinstance(result, StarletteJSONResponse) and not isinstance(result, GeoJSONResponse):
        return cls(orjson.loads(result.body), status_code=result.status_code)
    return result if isinstance(result, Response) else cls(result)


# pystac-client 0.9 recognises only `v1.0.*` URIs: without these it warns `DoesNotConformTo: SORT` and
# stac-fastapi 7 advertises sort at v1.1.0 only. Sort v1.0.0 and v1.1.0 do not differ for items.
EXTRA_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",
]

# `fields` answers (docs/architecture.md, "STAC conformance"): every feature stays a GeoJSON Feature that STAC
# readers (pystac, pystac-client) parse as an Item, whatever is included or excluded. A geometry that was not
# selected is sent as null, like OGC API servers' skipGeometry.
FIELDS_MINIMUM = ("type", "stac_version", "id", "geometry", "properties.datetime")
# the spec's default set (`fields` empty, or only excluding), plus `collection` that a `collection` link requires
FIELDS_DEFAULT = ("type", "stac_version", "id", "geometry", "bbox", "links", "assets", "collection",
                  "properties.datetime")


def select_fields(item: dict, include: set[str], exclude: set[str], default: bool) -> dict:
    """The part of a full `item` a `fields` request selects: `include` only, or everything (`default`: the default
    set) but `exclude` (stac-fastapi has already dropped the excludes an include overrides), plus the minimum."""
    if include:
        out = include_fields(item, include)
    elif default:
        out = include_fields(item, set(FIELDS_DEFAULT))
    else:
        out = dict(item)
    out = copy.deepcopy(out)
    exclude_fields(out, exclude)
    for path in FIELDS_MINIMUM:
        head, _, tail = path.partition(".")
        if tail and head in item:
            out.setdefault(head, {})[tail] = item[head].get(tail)
        elif head in item and head not in out and head != "geometry":
            out[head] = item[head]
    out.setdefault("geometry", None)
    return out


def _render_query(render: dict[str, Any]) -> str:
    """A render (render extension) as titiler query parameters."""
    params: list[tuple[str, str]] = [("assets", a) for a in render.get("assets", [])]
    params += [("rescale", ",".join(str(v) for v in r)) for r in render.get("rescale", [])]
    for key in ("expression", "colormap_name", "color_formula", "resampling", "nodata"):
        if key in render:
            params.append((key, str(render[key])))
    if "colormap" in render:
        params.append(("colormap", orjson.dumps(render["colormap"]).decode()))
    return urlencode(params, safe=",")


def add_tile_links(item: dict, base_url: str) -> dict:
    """Links to the item's tiles (TileJSON, web-map-links extension) and preview, from the collection's default
    render, so a viewer needs no guessing. Built per request: they follow the public base like every other href."""
    collection = str(item.get("collection") or "")
    spec = COLLECTIONS.get(collection.removesuffix(HISTORY_SUFFIX))
    if spec is None or not spec.renders or not isinstance(item.get("links"), list) or "id" not in item:
        return item
    name, render = next(iter(spec.renders.items()))
    root = f"{base_url.rstrip('/')}/raster/collections/{quote(collection, safe='')}/items/{quote(item['id'], safe='')}"
    query = _render_query(render)
    title = render.get("title", name)
    item["links"] += [
        {"rel": "tilejson", "type": "application/json", "title": f"Tiles: {title}", "render": name,
         "href": f"{root}/WebMercatorQuad/tilejson.json?{query}"},
        {"rel": "preview", "type": "image/png", "title": f"Preview: {title}", "render": name,
         "href": f"{root}/preview.png?{query}"},
    ]
    declared = item.get("stac_extensions")
    if isinstance(declared, list) and EXTENSIONS["web-map-links"] not in declared:
        declared.append(EXTENSIONS["web-map-links"])
    return item


def tiles_api_links(base_url: str) -> list[dict[str, str]]:
    """Where the landing page points a client for maps: the tiler's API description, documentation and TMS."""
    raster = f"{base_url.rstrip('/')}/raster"
    return [
        {"rel": "service-desc", "type": OPENAPI_MEDIA_TYPE, "title": "Tiles API (titiler-pgstac): OpenAPI",
         "href": f"{raster}/api"},
        {"rel": "service-doc", "type": "text/html", "title": "Tiles API (titiler-pgstac): documentation",
         "href": f"{raster}/api.html"},
        {"rel": "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes", "type": "application/json",
         "title": "Tiling schemes of the tiles API", "href": f"{raster}/tileMatrixSets"},
    ]


CACHE_S = 30.0


async def current_collections(request: Any) -> list[str]:
    """Collections searched by default: all but the `-history` ones (superseded product versions)."""
    state = request.app.state
    cached = getattr(state, "landsurf_current_collections", None)
    if cached and time.monotonic() - cached[0] < CACHE_S:
        return cached[1]
    async with state.get_connection(request, "r") as conn:
        rows = await conn.fetch("SELECT id FROM pgstac.collections WHERE id NOT LIKE $1 ORDER BY id",
                                "%" + HISTORY_SUFFIX)
    ids = [r["id"] for r in rows]
    state.landsurf_current_collections = (time.monotonic(), ids)
    return ids


def render_item(item: dict, base_url: str) -> dict:
    """Stored hrefs (store paths, API paths) of one item made public URLs of this response, in place."""
    for asset in (item.get("assets") or {}).values():
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            asset["href"] = render_href(asset["href"], base_url)
    for link in item.get("links") or []:
        if isinstance(link, dict) and isinstance(link.get("href"), str) and link["href"].startswith("/"):
            link["href"] = render_href(link["href"], base_url)
    return item


class LandsurfClient(CoreCrudClient):
    """stac-fastapi-pgstac's client, with these differences: responses are encoded by orjson; a search that
    names neither collections nor ids leaves out superseded versions (`-history`); one STAC version throughout;
    items link to their tiles; `fields` answers stay GeoJSON Features that STAC readers parse."""

    @property  # type: ignore[override]
    def stac_version(self) -> str:
        """That of every object served; StacApi would set stac-pydantic's (1.0.0) on the landing page."""
        return STAC_VERSION

    @stac_version.setter
    def stac_version(self, value: str) -> None:
        pass

    # (rel, media type, title, path) of routes added by the caller's routers (OGC API – Processes)
    extra_landing_links: tuple[tuple[str, str, str, str], ...] = ()

    def conformance_classes(self) -> list[str]:
        return sorted(set(super().conformance_classes()) | set(EXTRA_CONFORMANCE))

    async def landing_page(self, **kwargs: Any):  # type: ignore[override]
        page = await super().landing_page(**kwargs)
        base = str(kwargs["request"].base_url)
        page["links"] += tiles_api_links(base)
        page["links"].append({"rel": "alternate", "type": "text/html", "title": "Web viewer",
                              "href": f"{base.rstrip('/')}/viewer/"})
        page["links"] += [{"rel": rel, "type": media, "title": title, "href": f"{base.rstrip('/')}{path}"}
                          for rel, media, title, path in self.extra_landing_links]
        return _finish(page, JSONResponse)

    async def _search_base(self, search_request, request):  # type: ignore[override]
        """Every item answer (search, items, item) passes here: render its stored hrefs for this request, add
        its tile links, then apply `fields` on the full item (pgSTAC and stac-fastapi would drop what a
        STAC reader needs)."""
        fields = getattr(search_request, "fields", None)
        include: set[str] = set(fields.include or ()) if fields else set()
        exclude: set[str] = set(fields.exclude or ()) if fields else set()
        # an explicit empty `include` (POST) or a GET `fields` of excludes only means "the default set but …"
        default = fields is not None and "include" in fields.model_fields_set and not include
        if fields is not None:
            search_request.fields = None
        result = await super()._search_base(search_request, request=request)
        base = str(request.base_url)
        features = []
        for feature in result.get("features") or []:
            add_tile_links(render_item(feature, base), base)
            if include or exclude:
                feature = select_fields(feature, include, exclude, default)
                if "links" not in feature and isinstance(feature.get("stac_extensions"), list):
                    feature["stac_extensions"] = [e for e in feature["stac_extensions"]
                                                  if e != EXTENSIONS["web-map-links"]]
            features.append(feature)
        result["features"] = features
        return result

    async def post_search(self, search_request, request, **kwargs: Any):  # type: ignore[override]
        if "fields" in search_request.model_fields_set and search_request.fields is None:
            raise InvalidQueryParameter("`fields` must be an object with `include` and/or `exclude`, not null")
        if not search_request.collections and not search_request.ids:
            search_request.collections = await current_collections(request)
        result = await self._search_base(search_request, request=request)
        result["links"] = await SearchLinks(request=request).get_links(extra_links=result["links"])
        return _finish(result)

    async def get_search(self, request, **kwargs: Any):  # type: ignore[override]
        if not kwargs.get("collections") and not kwargs.get("ids"):
            kwargs["collections"] = await current_collections(request)
        return _finish(await super().get_search(request, **kwargs))

    async def item_collection(self, collection_id: str, request, **kwargs: Any):  # type: ignore[override]
        return _finish(await super().item_collection(collection_id, request=request, **kwargs))

    async def get_item(self, item_id: str, collection_id: str, request, **kwargs: Any):  # type: ignore[override]
        return _finish(await super().get_item(item_id, collection_id, request=request, **kwargs))

    async def all_collections(self, request, **kwargs: Any):  # type: ignore[override]
        return _finish(await super().all_collections(request=request, **kwargs), JSONResponse)

"""Subscriptions: a saved search read as an Atom feed of the products published after it was saved.

    POST   /subscriptions                 a token of role user (or admin): 201 + id + feed URL
    GET    /subscriptions                 the caller's subscriptions (same token)
    DELETE /subscriptions/{id}            the owner's token (or an admin token)
    GET    /subscriptions/{id}/feed.atom  public: the id (128 random bits) is the credential, as feed readers
                                          send no tokens — share the feed URL as you would a token

A subscription may also carry a `webhook` (a receiver URL): the answer to its creation then holds the signing
secret, shown that once; the worker POSTs the new items to the receiver, signed (catalog/webhooks.py,
processing/webhooks.py), and the subscription's JSON shows how its deliveries stand.

A search is `collections` (required), `bbox` or `intersects`, and a CQL2-JSON `filter`; it is checked by
running it once through pgSTAC (under the statement timeout) so a filter pgSTAC cannot evaluate is a 400 at
creation, not a broken feed later. The feed lists the items matching the search whose `updated` (the time the
pipeline wrote their metadata, just before publication: catalog/publish.py stores it unchanged) is at or after
the subscription's creation, newest first, at most `FEED_ENTRIES`; ETag / If-None-Match and Last-Modified /
If-Modified-Since answer 304. Bounds: `MAX_PER_OWNER` subscriptions per token name, bodies of at most
4 × LANDSURF_MAX_FILTER_BYTES. Rows in `landsurf.subscriptions` (catalog/sql/007_subscriptions.sql); every
statement carries a timeout.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from catalog.auth import GRANTS, TOKEN_HINT, bearer_token, token_owner
from catalog.errors import BadRequest, Forbidden, NotFound, Unauthorized
from catalog.limits import json_depth
from catalog.settings import CatalogSettings
from catalog.store import render_href
from catalog.webhooks import check_url, new_secret

MAX_PER_OWNER = 20
FEED_ENTRIES = 100
ID = re.compile(r"^[0-9a-f]{32}$")
KEYS = ("title", "collections", "bbox", "intersects", "filter", "filter-lang", "webhook")
GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
ATOM = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml"


class SubscriptionError(BadRequest):
    """A subscription that cannot be saved as asked."""


class TooManySubscriptions(BadRequest):
    """The caller already has the most subscriptions allowed."""

    http_status = 429


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def _bad(what: str, fix: str) -> SubscriptionError:
    return SubscriptionError(what, fix)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_search(body: bytes, settings: CatalogSettings) -> tuple[str, dict[str, Any]]:
    """The title and the pgSTAC search of a POST body, every part checked and bounded (the filter's meaning is
    checked by pgSTAC afterwards)."""
    title, search, _ = parse_body(body, settings)
    return title, search


def parse_body(body: bytes, settings: CatalogSettings) -> tuple[str, dict[str, Any], Any]:
    """`parse_search`, and the `webhook` as given (None when absent; checked by catalog.webhooks.check_url)."""
    limit = 4 * settings.max_filter_bytes
    if len(body) > limit:
        raise _bad(f"the subscription body is {len(body)} bytes, over the maximum of {limit}",
                   "simplify the area or the filter (4 × LANDSURF_MAX_FILTER_BYTES)")
    try:
        doc = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the body is not JSON ({exc})", "send a JSON object") from exc
    if not isinstance(doc, dict):
        raise _bad("the body is not a JSON object", 'send e.g. {"collections": ["sentinel2-l2a"], "bbox": [...]}')
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(repr(k[:40]) for k in unknown[:5])}",
                   f"a subscription takes {', '.join(KEYS)}")
    title = doc.get("title", "")
    if not isinstance(title, str) or len(title) > 200 or "\x00" in title:
        raise _bad("`title` must be a text of at most 200 characters", "shorten it")
    collections = doc.get("collections")
    if not isinstance(collections, list) or not collections or len(collections) > settings.max_ids \
            or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in collections):
        raise _bad("`collections` must list 1 or more collection ids", 'e.g. "collections": ["sentinel2-l2a"]')
    search: dict[str, Any] = {"collections": sorted(set(collections))}
    if "bbox" in doc and "intersects" in doc:
        raise _bad("give `bbox` or `intersects`, not both", "keep one of them")
    if "bbox" in doc:
        bbox = doc["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise _bad("`bbox` must be 4 numbers: west, south, east, north (WGS84 degrees)",
                       'e.g. "bbox": [0.5, 43.0, 1.5, 43.8]')
        west, south, east, north = bbox
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90 and west <= east):
            raise _bad(f"`bbox` {bbox} is not an area on Earth",
                       "longitudes in [-180, 180] with west ≤ east, latitudes in [-90, 90] with south ≤ north")
        search["bbox"] = bbox
    if "intersects" in doc:
        geometry = doc["intersects"]
        if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRIES \
                or not isinstance(geometry.get("coordinates"), list) or not geometry["coordinates"]:
            raise _bad("`intersects` must be a GeoJSON geometry with coordinates",
                       f"use one of {', '.join(GEOMETRIES)} in WGS84 degrees")
        search["intersects"] = geometry
    if doc.get("filter-lang", "cql2-json") != "cql2-json":
        raise _bad("`filter-lang` must be cql2-json", "write the filter in CQL2-JSON")
    if "filter" in doc:
        flt = doc["filter"]
        if not isinstance(flt, dict):
            raise _bad("`filter` must be a CQL2-JSON object", 'e.g. {"op": "<", "args": [{"property": '
                       '"eo:cloud_cover"}, 20]}')
        raw = orjson.dumps(flt)
        if len(raw) > settings.max_filter_bytes:
            raise _bad(f"`filter` is {len(raw)} bytes, over the maximum of {settings.max_filter_bytes}",
                       "simplify it (LANDSURF_MAX_FILTER_BYTES)")
        if (depth := json_depth(raw)) > settings.max_filter_depth:
            raise _bad(f"`filter` nests {depth} levels deep, over the maximum of {settings.max_filter_depth}",
                       "simplify it (LANDSURF_MAX_FILTER_DEPTH)")
        search["filter"] = flt
        search["filter-lang"] = "cql2-json"
    return title, search, doc.get("webhook")


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def feed_search(search: dict[str, Any], created: datetime) -> dict[str, Any]:
    """The pgSTAC search of a feed: the saved one, restricted to items updated since the subscription."""
    since = {"op": ">=", "args": [{"property": "updated"}, {"timestamp": _iso(created)}]}
    flt = {"op": "and", "args": [search["filter"], since]} if "filter" in search else since
    return {**search, "filter": flt, "filter-lang": "cql2-json", "limit": FEED_ENTRIES,
            "sortby": [{"field": "properties.updated", "direction": "desc"}, {"field": "id", "direction": "desc"}]}


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
    el.text = text
    return el


def _thumbnail(item: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    assets = item.get("assets") or {}
    for key, asset in assets.items():
        if "thumbnail" in (asset.get("roles") or []) or key == "thumbnail":
            return key, asset
    return None


def atom_feed(row: dict[str, Any], items: list[dict[str, Any]], base: str) -> tuple[bytes, datetime]:
    """The Atom document (RFC 4287) of a subscription and its items, and its `updated` time."""
    ET.register_namespace("", ATOM)
    feed_url = f"{base}/subscriptions/{row['id']}/feed.atom"
    stamps = [parse_time(i.get("properties", {}).get("updated")) for i in items]
    updated = max([s for s in stamps if s] + [row["created"]])
    feed = ET.Element(f"{{{ATOM}}}feed")
    _text(feed, "id", feed_url)
    _text(feed, "title", f"landsurf: {row['title'] or 'subscription ' + row['id'][:8]}")
    _text(feed, "updated", _iso(updated))
    _text(feed, "subtitle", "products matching a saved search, published after " + _iso(row["created"]))
    author = ET.SubElement(feed, f"{{{ATOM}}}author")
    _text(author, "name", "landsurf")
    ET.SubElement(feed, f"{{{ATOM}}}link", rel="self", href=feed_url, type=ATOM_TYPE)
    ET.SubElement(feed, f"{{{ATOM}}}generator").text = "landsurf"
    for item, stamp in zip(items, stamps):
        props = item.get("properties", {})
        self_url = (f"{base}/collections/{quote(item['collection'], safe='')}/items/"
                    f"{quote(item['id'], safe='')}")
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        _text(entry, "id", self_url)
        _text(entry, "title", f"{item['id']} ({item['collection']})")
        _text(entry, "updated", _iso(stamp or row["created"]))
        if (created := parse_time(props.get("created"))) is not None:
            _text(entry, "published", _iso(created))
        ET.SubElement(entry, f"{{{ATOM}}}link", rel="alternate", href=self_url, type="application/geo+json")
        thumb = _thumbnail(item)
        if thumb is not None:
            attrs = {"rel": "enclosure", "href": render_href(thumb[1]["href"], base),
                     "type": thumb[1].get("type", "image/jpeg"), "title": thumb[0]}
            if isinstance(thumb[1].get("file:size"), int):
                attrs["length"] = str(thumb[1]["file:size"])
            ET.SubElement(entry, f"{{{ATOM}}}link", attrs)
        cloud = props.get("eo:cloud_cover")
        summary = f"{item['collection']} acquired {props.get('datetime') or props.get('start_datetime')}" \
                  f", {props.get('grid:code', '')}" + (f", cloud cover {cloud:.0f} %" if _number(cloud) else "")
        _text(entry, "summary", summary)
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True), updated


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time of an item (naive ones taken as UTC), or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _summary(row: dict[str, Any], base: str) -> dict[str, Any]:
    out = {"id": row["id"], "title": row["title"], "search": row["search"], "created": _iso(row["created"]),
           "feed": f"{base}/subscriptions/{row['id']}/feed.atom",
           "links": [{"rel": "alternate", "type": ATOM_TYPE, "href": f"{base}/subscriptions/{row['id']}/feed.atom"}]}
    if row.get("webhook_url"):
        stamp = (lambda v: _iso(v) if v is not None else None)
        out["webhook"] = {
            "url": row["webhook_url"], "status": row["webhook_status"], "failures": row["webhook_failures"],
            "delivered": row["webhook_delivered"], "last_attempt": stamp(row["webhook_last_attempt"]),
            "last_success": stamp(row["webhook_last_success"]), "last_status": row["webhook_last_status"],
            "last_error": row["webhook_last_error"], "next_attempt": stamp(row["webhook_next_attempt"]),
            "delivered_until": stamp(row["webhook_cursor"])}
    return out


# a subscription's row with its webhook's state (never its secret: another schema, not readable by the API's
# read-only role)
SELECT_ROW = ("SELECT s.id, s.owner, s.title, s.search, s.created, w.url AS webhook_url, w.status AS webhook_status, "
              "w.failures AS webhook_failures, w.delivered AS webhook_delivered, w.last_attempt AS "
              "webhook_last_attempt, w.last_success AS webhook_last_success, w.last_status AS webhook_last_status, "
              "w.last_error AS webhook_last_error, w.next_attempt AS webhook_next_attempt, w.cursor AS webhook_cursor "
              "FROM landsurf.subscriptions s LEFT JOIN landsurf.webhooks w ON w.subscription_id = s.id ")


class Subscriptions:
    """The rows and the searches, through the app's pools, each statement with a timeout."""

    def __init__(self, settings: CatalogSettings) -> None:
        self.settings = settings
        self.acquire_s = settings.pool_timeout_s
        self.statement_s = settings.statement_timeout_ms / 1000

    async def caller(self, request: Request) -> Caller:
        """The token's name and role: 401 without a live token, 403 unless its role grants `user`."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("subscriptions need a bearer token", TOKEN_HINT.replace("ROLE", "user"))
        owner = await token_owner(request.app.state, token, self.acquire_s, self.statement_s)
        if owner is None:
            raise Unauthorized("the bearer token is unknown or revoked", "ask an operator for a valid token")
        name, role = owner
        if "user" not in GRANTS.get(role, ()):
            raise Forbidden(f"a {role!r} token has no subscriptions", "use a token with role user")
        return Caller(name, role)

    async def check(self, request: Request, search: dict[str, Any]) -> None:
        """Unknown collections, invalid geometries and filters pgSTAC cannot evaluate are 400s naming them."""
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            known = {r["id"] for r in await conn.fetch("SELECT id FROM pgstac.collections WHERE id = ANY($1::text[])",
                                                       search["collections"], timeout=self.statement_s)}
            missing = [c for c in search["collections"] if c not in known]
            if missing:
                raise _bad(f"unknown collection(s) {', '.join(repr(c[:60]) for c in missing[:5])}",
                           "GET /collections lists them")
            if "intersects" in search:
                try:
                    valid = await conn.fetchval("SELECT ST_IsValid(ST_GeomFromGeoJSON($1::text))",
                                                orjson.dumps(search["intersects"]).decode(), timeout=self.statement_s)
                except asyncpg.PostgresError as exc:
                    raise _bad(f"`intersects` is not a valid GeoJSON geometry: {_first_line(exc)}",
                               "give a GeoJSON geometry in WGS84 degrees") from exc
                if not valid:
                    raise _bad("`intersects` is not a valid geometry (self-intersecting or degenerate)",
                               "fix the geometry (e.g. with ST_MakeValid or shapely's make_valid)")
            probe = {**search, "limit": 1, "fields": {"include": ["id"]}}
            try:
                await conn.fetchval("SELECT pgstac.search($1::text::jsonb)", _json(probe), timeout=self.statement_s)
            except asyncpg.exceptions.QueryCanceledError as exc:
                raise _bad(f"the filter took over {self.statement_s:g} s to evaluate", "simplify it") from exc
            except asyncpg.PostgresError as exc:
                what = "`filter`" if "filter" in search else "the search"
                raise _bad(f"{what} cannot be evaluated: {_first_line(exc)}",
                           "see /queryables for the properties and CQL2-JSON for the operators") from exc

    async def create(self, request: Request, caller: Caller, title: str, search: dict[str, Any],
                     webhook: str | None = None, secret: str | None = None) -> dict[str, Any]:
        new_id = secrets.token_hex(16)
        async with request.app.state.writepool.acquire(timeout=self.acquire_s) as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('subscriptions|' || $1, 0))",
                                   caller.name, timeout=self.statement_s)
                count = await conn.fetchval("SELECT count(*) FROM landsurf.subscriptions WHERE owner = $1",
                                            caller.name, timeout=self.statement_s)
                if count >= MAX_PER_OWNER:
                    raise TooManySubscriptions(
                        f"{caller.name!r} already has {count} subscriptions, the most allowed ({MAX_PER_OWNER})",
                        "delete one you no longer read (DELETE /subscriptions/{id})")
                row = await conn.fetchrow(
                    "INSERT INTO landsurf.subscriptions (id, owner, title, search) VALUES ($1, $2, $3, $4::text::jsonb) "
                    "RETURNING id, owner, title, search, created", new_id, caller.name, title, _json(search),
                    timeout=self.statement_s)
                if webhook is not None:
                    # the cursor starts at the creation: the feed's rule (items updated at or after it)
                    await conn.execute("INSERT INTO landsurf.webhooks (subscription_id, url, cursor) "
                                       "VALUES ($1, $2, $3)", new_id, webhook, row["created"], timeout=self.statement_s)
                    await conn.execute("INSERT INTO landsurf_secrets.webhook_secrets (subscription_id, secret) "
                                       "VALUES ($1, $2)", new_id, secret, timeout=self.statement_s)
                    row = await conn.fetchrow(SELECT_ROW + "WHERE s.id = $1", new_id, timeout=self.statement_s)
        return dict(row)

    async def list(self, request: Request, caller: Caller) -> list[dict[str, Any]]:
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            rows = await conn.fetch(SELECT_ROW + "WHERE s.owner = $1 ORDER BY s.created", caller.name,
                                    timeout=self.statement_s)
        return [dict(r) for r in rows]

    async def get(self, request: Request, sub_id: str) -> dict[str, Any]:
        if not ID.match(sub_id):
            raise NotFound(f"no subscription {sub_id[:40]!r}", "the id is the 32 hex digits POST /subscriptions gave")
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            row = await conn.fetchrow(SELECT_ROW + "WHERE s.id = $1", sub_id, timeout=self.statement_s)
        if row is None:
            raise NotFound(f"no subscription {sub_id!r}", "it was deleted, or never existed")
        return dict(row)

    async def delete(self, request: Request, caller: Caller, sub_id: str) -> None:
        row = await self.get(request, sub_id)
        if row["owner"] != caller.name and "admin" not in GRANTS.get(caller.role, ()):
            raise Forbidden(f"subscription {sub_id} is not yours", "only its owner (or an admin) may delete it")
        async with request.app.state.writepool.acquire(timeout=self.acquire_s) as conn:
            await conn.execute("DELETE FROM landsurf.subscriptions WHERE id = $1", sub_id, timeout=self.statement_s)

    async def items(self, request: Request, row: dict[str, Any]) -> list[dict[str, Any]]:
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            found = await conn.fetchval("SELECT pgstac.search($1::text::jsonb)",
                                        _json(feed_search(row["search"], row["created"])), timeout=self.statement_s)
        return list((found or {}).get("features") or [])


def _json(value: Any) -> str:
    """JSON as text for `$n::text::jsonb` (the pools' json codec decodes with orjson; text in is unambiguous)."""
    return orjson.dumps(value).decode()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _not_modified(request: Request, etag: str, updated: datetime) -> bool:
    match = request.headers.get("if-none-match")
    if match is not None:
        return etag in [m.strip() for m in match.split(",")] or match.strip() == "*"
    since = request.headers.get("if-modified-since")
    if since:
        try:
            return updated.replace(microsecond=0) <= parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


BODY_SCHEMA = {
    "type": "object", "required": ["collections"], "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "maxLength": 200},
        "collections": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "intersects": {"type": "object", "description": "a GeoJSON geometry (WGS84)"},
        "filter": {"type": "object", "description": "CQL2-JSON"},
        "filter-lang": {"type": "string", "enum": ["cql2-json"]},
        "webhook": {"type": "string", "format": "uri", "maxLength": 2048,
                    "description": "an https receiver of signed POSTs of the new items (Standard Webhooks); the "
                                   "answer holds its secret, shown once"},
    },
}
ERRORS = {400: {"description": "bad input, named"}, 401: {"description": "no or unknown bearer token"},
          403: {"description": "the token's role has no subscriptions, or the subscription is not yours"},
          404: {"description": "no such subscription"}}


def subscriptions_router(settings: CatalogSettings) -> APIRouter:
    """The routes of the module docstring."""
    subs = Subscriptions(settings)
    router = APIRouter(tags=["Subscriptions"])

    @router.post("/subscriptions", status_code=201, response_model=None,
                 responses={**ERRORS, 429: {"description": f"the caller has {MAX_PER_OWNER} subscriptions already"}},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": BODY_SCHEMA}}}})
    async def create_subscription(request: Request) -> JSONResponse:
        """Save a search (collections, `bbox` or `intersects`, CQL2-JSON `filter`, optionally a `webhook`); needs
        a token of role user (or admin). Answers the id and the URL of its Atom feed (public: share it as you
        would a token), and the webhook's signing secret — shown this once only."""
        caller = await subs.caller(request)
        title, search, webhook = parse_body(await request.body(), settings)
        await subs.check(request, search)
        secret = None
        if webhook is not None:
            webhook = await check_url(webhook, settings)
            secret = new_secret()
        row = await subs.create(request, caller, title, search, webhook, secret)
        body = _summary(row, _base(request))
        if secret is not None:
            body["webhook"]["secret"] = secret
            body["webhook"]["secret_note"] = ("shown this once only: keep it to verify the webhook-signature header "
                                              "(Standard Webhooks); it cannot be read again")
        return JSONResponse(body, status_code=201, headers={"Location": body["feed"], "Cache-Control": "no-store"})

    @router.get("/subscriptions", response_model=None, responses=ERRORS)
    async def list_subscriptions(request: Request) -> JSONResponse:
        """The caller's subscriptions (token of role user or admin)."""
        caller = await subs.caller(request)
        rows = await subs.list(request, caller)
        return JSONResponse({"subscriptions": [_summary(r, _base(request)) for r in rows],
                             "max_subscriptions": MAX_PER_OWNER}, headers={"Cache-Control": "no-store"})

    @router.delete("/subscriptions/{subscription_id}", status_code=204, response_model=None, responses=ERRORS)
    async def delete_subscription(subscription_id: str, request: Request) -> Response:
        """Delete one's own subscription (its owner's token, or an admin token); its feed is gone."""
        caller = await subs.caller(request)
        await subs.delete(request, caller, subscription_id)
        return Response(status_code=204)

    @router.get("/subscriptions/{subscription_id}/feed.atom", response_model=None,
                responses={200: {"content": {ATOM_TYPE: {}}, "description": "the Atom feed"},
                           304: {"description": "not modified"}, 404: ERRORS[404]})
    async def subscription_feed(subscription_id: str, request: Request) -> Response:
        """Atom feed (RFC 4287) of the items matching the subscription published (or updated) after it was
        created, newest first, at most 100. Public: the unguessable id is the credential."""
        row = await subs.get(request, subscription_id)
        items = await subs.items(request, row)
        body, updated = atom_feed(row, items, _base(request))
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Last-Modified": format_datetime(updated.astimezone(timezone.utc), usegmt=True),
                   "Cache-Control": "no-cache"}
        if _not_modified(request, etag, updated):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=ATOM_TYPE, headers=headers)

    return router

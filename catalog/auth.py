"""Bearer tokens and who may do what: writes are denied by default.

Tokens are created by an operator, stored hashed, and carry a role:
- `admin`: every write (STAC transactions, registering mosaic searches) and every operator view;
- `operator`: the operator views (`/deliveries`, `/metrics`) — production health, no writes;
- `user`: the writes listed on `ROLE_WRITES` (asking for a derived product through the processes API, saving and
  deleting subscriptions), nothing else; admin tokens may make them too.

`WriteGuard` sits in front of the whole application, the mounted tiler included: any request whose
method is not GET, HEAD or OPTIONS needs an admin token unless its route is on `PUBLIC_WRITES`, one
explicit list of reads that carry a body (and the refresh of a user token, which its own token
authenticates). A route added later is therefore protected without anyone remembering to protect it.

Download users and their expiring tokens are in `catalog.users`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import psycopg
from fastapi import Request
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from catalog.asgi import header, send_error
from catalog.errors import Forbidden, Unauthorized

Role = Literal["admin", "operator", "user"]
ROLES: tuple[str, ...] = ("admin", "operator", "user")
GRANTS: dict[str, frozenset[str]] = {"admin": frozenset({"admin", "operator", "user"}),
                                     "operator": frozenset({"operator"}), "user": frozenset({"user"})}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_HINT = "send `Authorization: Bearer <token>`; an operator creates one with `landsurf token create --role ROLE`"


@dataclass(frozen=True)
class PublicWrite:
    method: str
    path: re.Pattern[str]
    why: str


def _route(pattern: str) -> re.Pattern[str]:
    """A route template (`{name}` = one path segment) as an anchored regex."""
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(pattern)) + "$")


_IMAGE = r"(/(\d+)x(\d+))?(\.[a-z0-9]+)?"
PUBLIC_WRITES: tuple[PublicWrite, ...] = (
    PublicWrite("POST", _route("/search"), "item search with a JSON body (STAC API): a read"),
    PublicWrite("POST", _route("/auth/refresh"),
                "a user token exchanged for a new one by its holder: authenticated by that token (catalog/users.py)"),
    PublicWrite("POST", re.compile(r"^/raster/collections/[^/]+/items/[^/]+/statistics$"),
                "statistics of an item inside a posted GeoJSON feature: a read"),
    PublicWrite("POST", re.compile(r"^/raster/collections/[^/]+/items/[^/]+/feature" + _IMAGE + "$"),
                "an image of an item cut to a posted GeoJSON feature: a read"),
    PublicWrite("POST", re.compile(r"^/raster/(collections|searches)/[^/]+/statistics$"),
                "statistics of a mosaic inside a posted GeoJSON feature: a read"),
    PublicWrite("POST", re.compile(r"^/raster/(collections|searches)/[^/]+/feature" + _IMAGE + "$"),
                "an image of a mosaic cut to a posted GeoJSON feature: a read"),
)


# Writes a lesser role than admin may make; the route's own dependency then bounds them per token.
ROLE_WRITES: tuple[tuple[PublicWrite, str], ...] = (
    (PublicWrite("POST", _route("/processes/{process_id}/execution"),
                 "ask for a derived product (OGC API – Processes, processing/processes_api.py)"), "user"),
    (PublicWrite("DELETE", _route("/jobs/{job_id}"), "dismiss one's own processing job (the route checks the owner)"),
     "user"),
    (PublicWrite("POST", _route("/subscriptions"), "save a search as an Atom feed (catalog/subscriptions.py)"), "user"),
    (PublicWrite("DELETE", _route("/subscriptions/{subscription_id}"),
                 "delete one's own subscription (the route checks the owner)"), "user"),
)


def is_public_write(method: str, path: str) -> bool:
    return any(w.method == method and w.path.match(path) for w in PUBLIC_WRITES)


def write_role(method: str, path: str) -> str:
    """The role a write needs: admin unless listed on `ROLE_WRITES`."""
    return next((role for w, role in ROLE_WRITES if w.method == method and w.path.match(path)), "admin")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: psycopg.Connection, name: str, role: Role) -> str:
    """Create a token and return it; only its hash is kept, so it cannot be shown again."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    token = "lsf_" + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO landsurf.api_tokens (token_sha256, name, role) VALUES (%s, %s, %s)",
        (token_hash(token), name, role),
    )
    return token


def revoke_token(conn: psycopg.Connection, name: str) -> int:
    cur = conn.execute("UPDATE landsurf.api_tokens SET revoked = now() WHERE name = %s AND revoked IS NULL", (name,))
    return cur.rowcount


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token


async def token_owner(app_state, token: str, timeout: float,
                      statement_s: float | None = None) -> tuple[str, str] | None:
    """The name and role of a live token, or None; one indexed look-up on the read pool (views that keep
    something per caller — jobs, subscriptions — own it by the token's name)."""
    async with app_state.readpool.acquire(timeout=timeout) as conn:
        row = await conn.fetchrow(
            "SELECT name, role FROM landsurf.api_tokens WHERE token_sha256 = $1 AND revoked IS NULL",
            token_hash(token), timeout=statement_s)
    return (row["name"], row["role"]) if row is not None else None


async def role_of(app_state, token: str, timeout: float) -> str | None:
    """The role of a live token, or None."""
    owner = await token_owner(app_state, token, timeout)
    return owner[1] if owner is not None else None


def require_role(needed: str, *, allow: Callable[[Request], bool] | None = None):
    """A FastAPI dependency for views that are reads but not public: 401 without a token, 403 when its role
    does not grant `needed`. `allow` may admit a request without a token (a configured scrape address)."""

    async def dependency(request: Request) -> str | None:
        if allow is not None and allow(request):
            return None
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("this view needs a bearer token", TOKEN_HINT.replace("ROLE", needed))
        role = await role_of(request.app.state, token, request.app.state.landsurf_settings.pool_timeout_s)
        if role is None:
            raise Unauthorized("the bearer token is unknown or revoked", "ask an operator for a valid token")
        if needed not in GRANTS.get(role, ()):
            raise Forbidden(f"a {role!r} token may not see this", f"this needs a token with role {needed}")
        return role

    return dependency


class WriteGuard:
    """Deny by default: every non-read request needs an admin token unless it is a listed public write."""

    def __init__(self, app: ASGIApp, verify: Callable[[Scope, str], Awaitable[str | None]]) -> None:
        self.app = app
        self.verify = verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS \
                or is_public_write(scope["method"], get_route_path(scope)):
            await self.app(scope, receive, send)
            return
        needed = write_role(scope["method"], get_route_path(scope))
        token = bearer_token(header(scope, b"authorization"))
        if token is None:
            await _refuse(send, 401, "Unauthorized", "this request writes and needs a bearer token",
                          TOKEN_HINT.replace("ROLE", needed))
            return
        role = await self.verify(scope, token)
        if role is None:
            await _refuse(send, 401, "Unauthorized", "the bearer token is unknown or revoked",
                          "ask an operator for a valid token")
            return
        if needed not in GRANTS.get(role, ()):
            await _refuse(send, 403, "Forbidden", f"a {role!r} token may not write here",
                          f"this write needs a token with role {needed}")
            return
        scope.setdefault("state", {})["landsurf_role"] = role
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, problem: str, fix: str) -> None:
    extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    await send_error(send, status, code, f"{problem} — {fix}", extra)

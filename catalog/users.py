"""Users who download, and their tokens: created by an operator, stored hashed, with an expiry and a refresh.

- `landsurf users add NAME` → a user; `landsurf users token NAME --days 30` → a token, printed once (only its
  SHA-256 is kept), valid 30 days; `landsurf users revoke NAME` → every token of the user stops.
- Refresh: in the second half of its life a token may be exchanged once, by whoever holds it, for a new one of
  the same lifetime (`POST /auth/refresh`); the old one stays valid until its own expiry, so the workers of a
  bulk client that still hold it finish their requests. A user who keeps downloading never meets an expiry; a
  token left unused past its expiry needs an operator again.
- Tokens of the operator roles (`catalog.auth`, `landsurf token create`) are also accepted for downloads; they
  do not expire.

Look-ups are cached per process (`TokenCache`): only tokens that exist are remembered (a bounded LRU, each
entry trusted `ttl` seconds, so a revocation reaches every process within that time); an invented token costs
one primary-key look-up and leaves nothing behind.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import psycopg
from fastapi import Request
from fastapi.responses import JSONResponse

from catalog.auth import bearer_token, token_hash
from catalog.errors import BadRequest, NotFound, Unauthorized

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
MAX_DAYS = 3650.0
USER_TOKEN_PREFIX = "lsu_"
NEW_TOKEN_HINT = "ask an operator for a new one (`landsurf users token NAME`)"


class UserError(BadRequest):
    """A user command that cannot be done as asked."""


@dataclass(frozen=True)
class Principal:
    """Who a token speaks for: a download user, or an operator token (`admin`, `operator`)."""

    kind: Literal["user", "admin", "operator"]
    name: str
    created: datetime
    expires: datetime | None  # None: operator tokens do not expire

    @property
    def key(self) -> str:
        """The limiter's key: one per user (every token of a user shares its limits)."""
        return f"{self.kind}:{self.name}"

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or datetime.now(timezone.utc))

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "created": self.created.isoformat(),
                "expires": self.expires.isoformat() if self.expires else None,
                "refresh_from": (self.created + (self.expires - self.created) / 2).isoformat()
                if self.expires else None}


def _check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"user name {name[:80]!r} is not allowed",
                        "use 1–64 letters, digits, and . _ @ + - (starting with a letter or digit)")
    return name


def add_user(conn: psycopg.Connection, name: str) -> None:
    row = conn.execute("INSERT INTO landsurf.users (name) VALUES (%s) ON CONFLICT (name) DO NOTHING RETURNING id",
                       (_check_name(name),)).fetchone()
    if row is None:
        raise UserError(f"user {name!r} already exists", "give them a token with `landsurf users token NAME`")


def issue_token(conn: psycopg.Connection, name: str, days: float = 30.0) -> tuple[str, datetime]:
    """A new token of a live user, valid `days`; returned in clear once (only its hash is stored)."""
    if not 0 < days <= MAX_DAYS:
        raise UserError(f"a token's lifetime of {days} days is out of range", f"choose between 0 and {MAX_DAYS:g} days")
    row = conn.execute("SELECT id, revoked FROM landsurf.users WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no user {name!r}", "create it first with `landsurf users add NAME`")
    if row[1] is not None:
        raise UserError(f"user {name!r} was revoked on {row[1]:%Y-%m-%d}", "revoked users get no new token")
    token = USER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = conn.execute(
        "INSERT INTO landsurf.user_tokens (token_sha256, user_id, expires) VALUES (%s, %s, now() + %s) "
        "RETURNING expires", (token_hash(token), row[0], timedelta(days=days))).fetchone()[0]
    return token, expires


def revoke_user(conn: psycopg.Connection, name: str) -> int:
    """Revoke the user and every token it holds; returns the number of live tokens revoked."""
    row = conn.execute("UPDATE landsurf.users SET revoked = coalesce(revoked, now()) WHERE name = %s RETURNING id",
                       (name,)).fetchone()
    if row is None:
        raise NotFound(f"no user {name!r}", "`landsurf users list` shows the users")
    return conn.execute("UPDATE landsurf.user_tokens SET revoked = now() WHERE user_id = %s AND revoked IS NULL "
                        "AND expires > now()", (row[0],)).rowcount


def list_users(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT u.name, u.created, u.revoked, count(t.*) FILTER (WHERE t.revoked IS NULL AND t.expires > now()), "
        "max(t.expires) FILTER (WHERE t.revoked IS NULL) FROM landsurf.users u "
        "LEFT JOIN landsurf.user_tokens t ON t.user_id = u.id GROUP BY u.id ORDER BY u.name").fetchall()
    return [{"name": n, "created": c, "revoked": r, "live_tokens": k, "last_expiry": e} for n, c, r, k, e in rows]


# -- looking tokens up in the API -------------------------------------------------------------------------------

LOOKUP = """
SELECT 'user' AS kind, u.name, k.created, k.expires FROM landsurf.user_tokens k JOIN landsurf.users u ON u.id = k.user_id
 WHERE k.token_sha256 = $1 AND k.revoked IS NULL AND u.revoked IS NULL
UNION ALL
SELECT role, name, created, NULL FROM landsurf.api_tokens WHERE token_sha256 = $1 AND revoked IS NULL
LIMIT 1
"""


class TokenCache:
    """Principals of tokens seen lately: a bounded LRU of tokens that exist, each trusted `ttl` seconds."""

    def __init__(self, ttl: float = 10.0, size: int = 4096) -> None:
        self.ttl, self.size = ttl, size
        self._seen: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def principal(self, app_state: Any, token: str, timeout: float) -> Principal | None:
        """The principal of a token that exists and is not revoked (maybe expired: callers say so), or None."""
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._seen.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            self._seen.move_to_end(digest)
            return hit[1]
        async with app_state.readpool.acquire(timeout=timeout) as conn:
            row = await conn.fetchrow(LOOKUP, digest)
        if row is None:
            self._seen.pop(digest, None)
            return None
        found = Principal(row["kind"], row["name"], row["created"], row["expires"])
        self._seen[digest] = (now, found)
        self._seen.move_to_end(digest)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return found


async def authenticate(cache: TokenCache, app_state: Any, authorization: str | None,
                       timeout: float) -> Principal | None:
    """The live principal of an `Authorization: Bearer` header; None without a header; Unauthorized when the
    token is malformed, unknown, revoked or expired (naming which, and what to do)."""
    if not authorization:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("the Authorization header is not `Bearer <token>`", "send `Authorization: Bearer <token>`")
    found = await cache.principal(app_state, token, timeout)
    if found is None:
        raise Unauthorized("the bearer token is unknown or revoked", NEW_TOKEN_HINT)
    if found.expired():
        raise Unauthorized(f"the bearer token expired at {found.expires:%Y-%m-%dT%H:%M:%SZ}",
                           "refresh tokens before they expire (`POST /auth/refresh` in their second half-life), or "
                           + NEW_TOKEN_HINT)
    return found


async def refresh(app_state: Any, token: str, timeout: float) -> tuple[str, Principal]:
    """A new token for the holder of a live one (see the module docstring); Unauthorized / BadRequest naming
    why when the token may not be refreshed."""
    new = USER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with app_state.writepool.acquire(timeout=timeout) as conn:
        row = await conn.fetchrow("SELECT * FROM landsurf.refresh_user_token($1, $2)", token, new)
        refusal = row["refusal"]
        fresh = await conn.fetchrow(LOOKUP, token_hash(new)) if refusal is None else None
    if refusal == "unknown or revoked":
        raise Unauthorized("the bearer token is not a live user token (operator tokens do not expire: no refresh)",
                           NEW_TOKEN_HINT)
    if refusal == "expired":
        raise Unauthorized(f"the bearer token expired at {row['valid_until']:%Y-%m-%dT%H:%M:%SZ}", NEW_TOKEN_HINT)
    if refusal == "too early":
        raise BadRequest(f"this token may be refreshed from {row['valid_until']:%Y-%m-%dT%H:%M:%SZ} "
                         "(the second half of its life)", "keep using it until then")
    if refusal == "already refreshed":
        raise BadRequest("this token was already refreshed once", "use the token that refresh returned, or "
                         + NEW_TOKEN_HINT)
    if fresh is None:
        raise Unauthorized(f"the token cannot be refreshed ({refusal or 'revoked meanwhile'})", NEW_TOKEN_HINT)
    return new, Principal(fresh["kind"], fresh["name"], fresh["created"], fresh["expires"])


# -- routes ----------------------------------------------------------------------------------------------------

def add_user_routes(app: Any, cache: TokenCache, timeout: float) -> None:
    """`GET /auth/token` (who a token is, when it expires and may be refreshed) and `POST /auth/refresh`."""
    @app.get("/auth/token", tags=["Users"], response_model=None)
    async def token_info(request: Request) -> JSONResponse:
        """Who the bearer token speaks for, when it expires and from when it may be refreshed (401 otherwise).
        Bulk clients read it to refresh their token in time."""
        found = await authenticate(cache, request.app.state, request.headers.get("authorization"), timeout)
        if found is None:
            raise Unauthorized("this needs a bearer token", "send `Authorization: Bearer <token>`")
        return JSONResponse(found.as_json(), headers={"Cache-Control": "no-store"})

    @app.post("/auth/refresh", tags=["Users"], response_model=None)
    async def token_refresh(request: Request) -> JSONResponse:
        """A new token of the same lifetime for the holder of a live user token, in the second half of its life,
        once per token; the old one stays valid until its expiry. The new token is shown only here."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("this needs the bearer token to refresh", "send `Authorization: Bearer <token>`")
        new, found = await refresh(request.app.state, token, timeout)
        return JSONResponse({"token": new, **found.as_json()}, headers={"Cache-Control": "no-store"})

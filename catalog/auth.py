"""Bearer tokens: created by an operator, stored hashed, each carrying a role.

Only `admin` tokens may use the STAC transaction endpoints; reading needs no token.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

import psycopg
from fastapi import Request

from catalog.errors import Forbidden, Unauthorized

Role = Literal["admin", "ingest", "read"]
ROLES: tuple[str, ...] = ("admin", "ingest", "read")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: psycopg.Connection, name: str, role: Role) -> str:
    """Create a token and return it; only its hash is kept, so it cannot be shown again."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    token = "lsf_" + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO landsurf.api_tokens (token_sha256, name, role) VALUES (%s, %s, %s)",
        (_hash(token), name, role),
    )
    return token


def revoke_token(conn: psycopg.Connection, name: str) -> int:
    cur = conn.execute("UPDATE landsurf.api_tokens SET revoked = now() WHERE name = %s AND revoked IS NULL", (name,))
    return cur.rowcount


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this endpoint needs a bearer token", "send `Authorization: Bearer <token>`; "
                           "an operator creates one with `landsurf token create --role admin`")
    return token.strip()


async def token_role(request: Request, token: str) -> str | None:
    async with request.app.state.get_connection(request, "r") as conn:
        return await conn.fetchval(
            "SELECT role FROM landsurf.api_tokens WHERE token_sha256 = $1 AND revoked IS NULL", _hash(token)
        )


def require_role(*allowed: str):
    """A FastAPI dependency: 401 without a valid token, 403 when its role is not allowed."""

    async def dependency(request: Request) -> str:
        role = await token_role(request, _bearer(request))
        if role is None:
            raise Unauthorized("the bearer token is unknown or revoked", "ask an operator for a valid token")
        if role not in allowed:
            raise Forbidden(f"a {role!r} token may not do this", f"this needs a token with role {' or '.join(allowed)}")
        return role

    return dependency

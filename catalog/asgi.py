"""Small ASGI helpers shared by the middlewares that answer before the application does."""

from __future__ import annotations

import orjson
from starlette.types import Scope, Send


async def send_error(send: Send, status: int, code: str, description: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON error response, in the body shape of every other landsurf error."""
    body = orjson.dumps({"code": code, "description": description})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None

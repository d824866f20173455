"""The edge of the application: which public URL a request is answered under, and what an unexpected
error looks like to the client.

`PublicUrl` makes every URL the app emits start with the public URL in force: the configured one
(`LANDSURF_PUBLIC_URL`, path prefix included), or — only for a request whose peer is a configured
trusted proxy — the one its `Forwarded` / `X-Forwarded-Host/Proto/Port/Prefix` headers describe.
From anyone else those headers are removed before the application sees them, so no client can
poison the links of a cached response.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.asgi import send_error
from catalog.logging import get_logger
from catalog.settings import HttpSettings

log = get_logger(__name__)

FORWARDED = (b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
             b"x-forwarded-prefix", b"x-forwarded-for")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~\-]+)*$")


class Base:
    """scheme, host[:port] and path prefix of a public URL."""

    def __init__(self, scheme: str, netloc: str, prefix: str) -> None:
        self.scheme, self.netloc, self.prefix = scheme, netloc, prefix.rstrip("/")
        parts = urlsplit(f"{scheme}://{netloc}")
        self.hostname = parts.hostname or "localhost"
        self.port = parts.port or (443 if scheme == "https" else 80)

    @classmethod
    def parse(cls, url: str) -> "Base":
        parts = urlsplit(url)
        return cls(parts.scheme or "http", parts.netloc, parts.path)


class PublicUrl:
    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.configured = Base.parse(settings.base_url)
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]

    def _trusted(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def _forwarded(self, headers: dict[bytes, str]) -> Base | None:
        """The public URL a trusted proxy describes, or None when it describes none (or nonsense)."""
        base = self.configured
        scheme, netloc, prefix = base.scheme, base.netloc, base.prefix
        seen = False
        if fwd := headers.get(b"forwarded"):
            first = fwd.split(",")[0]
            for pair in first.split(";"):
                key, _, value = pair.strip().partition("=")
                value = value.strip('"')
                if key.lower() == "proto" and value in ("http", "https"):
                    scheme, seen = value, True
                elif key.lower() == "host" and _HOST.match(value):
                    netloc, seen = value, True
        else:
            if (proto := headers.get(b"x-forwarded-proto", "").split(",")[0].strip()) in ("http", "https"):
                scheme, seen = proto, True
            if (host := headers.get(b"x-forwarded-host", "").split(",")[0].strip()) and _HOST.match(host):
                netloc, seen = host, True
            port = headers.get(b"x-forwarded-port", "").split(",")[0].strip()
            if port.isdigit() and 0 < int(port) < 65536:
                default = {"http": 80, "https": 443}[scheme]
                netloc = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
                netloc = netloc if int(port) == default else f"{netloc}:{port}"
                seen = True
        prefix_header = headers.get(b"x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
        if prefix_header and _PREFIX.match(prefix_header):
            prefix, seen = prefix_header, True
        return Base(scheme, netloc, prefix) if seen else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        raw = [(k, v) for k, v in scope["headers"]]
        base = self.configured
        scope["landsurf_trusted_proxy"] = self._trusted(scope)
        if scope["landsurf_trusted_proxy"]:
            found = self._forwarded({k: v.decode("latin-1") for k, v in raw if k in FORWARDED})
            base = found or base
        headers = [(k, v) for k, v in raw if k != b"host" and k not in FORWARDED]
        scope["headers"] = headers + [(b"host", base.netloc.encode())]
        scope["scheme"] = base.scheme
        scope["server"] = (base.hostname, base.port)
        if base.prefix:
            if not (scope["path"] == base.prefix or scope["path"].startswith(base.prefix + "/")):
                scope["path"] = base.prefix + scope["path"]
                if "raw_path" in scope and scope["raw_path"] is not None:
                    scope["raw_path"] = base.prefix.encode() + scope["raw_path"]
            scope["root_path"] = base.prefix
            scope["app_root_path"] = base.prefix
        await self.app(scope, receive, send)


class ErrorShield:
    """An error no handler expected becomes a logged 500 with an id, sent whole, with `Connection: close`:
    never a connection dropped mid-exchange. Errors after the response started are left to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.error("unhandled error", error_id=error_id, method=scope.get("method"), path=scope.get("path"),
                      error=type(exc).__name__, exc_info=exc)
            if started:
                raise
            await send_error(send, 500, "InternalError",
                             f"an unexpected error occurred (id {error_id}, logged); retry, or report the id",
                             [(b"connection", b"close")])

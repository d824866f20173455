"""Webhooks of subscriptions: the receiver-URL policy (SSRF), the secret, and the Standard Webhooks signature.

The API checks a receiver's URL when a subscription is created; the worker that delivers (processing/webhooks.py)
checks it again at every connection, on the addresses it is about to connect to, because a name that resolved to
a public address yesterday may resolve to 127.0.0.1 today (DNS rebinding). An address is refused unless it is
public (`ipaddress`'s `is_global`, not multicast/reserved; an IPv4 address embedded in an IPv6 one is judged
too: alone for mapped and NAT64 addresses, beside the IPv6 one for 6to4 and Teredo) or inside
`LANDSURF_WEBHOOK_ALLOWED_NETWORKS`; every address a name resolves to must pass, so a name with one public and
one private address is refused.

Signature (https://www.standardwebhooks.com/, so receivers can use its libraries): headers `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`,
where the secret is `whsec_<base64 key>`. The secret is shown once, in the answer to the creation; it is stored
(it must be, to sign) in a schema the API's read-only role cannot read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from urllib.parse import urlsplit

from catalog.errors import BadRequest
from catalog.settings import WebhookSettings

SECRET_PREFIX = "whsec_"
MAX_URL = 2048
NAT64 = ipaddress.ip_network("64:ff9b::/96")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(BadRequest):
    """A webhook receiver that may not be used: malformed, not https, or not on a public address."""


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form (`whsec_` + base64 of 32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value of a message."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def parse_url(url: object, settings: WebhookSettings) -> tuple[str, int]:
    """The host and port of an acceptable receiver URL (syntax and scheme only; addresses: `vet`)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise WebhookRefused(f"`webhook` must be a URL of at most {MAX_URL} characters without spaces",
                             'e.g. "webhook": "https://example.org/landsurf-hook"')
    parts = urlsplit(url)
    allowed = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise WebhookRefused(f"the webhook's scheme is {parts.scheme[:20]!r}; it must be {' or '.join(allowed)}",
                             "use an https:// URL" + ("" if settings.webhook_allow_http
                                                      else " (an operator may allow http: LANDSURF_WEBHOOK_ALLOW_HTTP)"))
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("the webhook URL carries credentials (user:password@)",
                             "remove them: the receiver checks the webhook-signature header instead")
    if parts.fragment:
        raise WebhookRefused("the webhook URL has a #fragment", "remove it (it is never sent)")
    try:
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise WebhookRefused(f"the webhook URL's port is not valid ({exc})", "give a port in 1..65535") from exc
    if not host:
        raise WebhookRefused("the webhook URL has no host", 'e.g. "https://example.org/hook"')
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise WebhookRefused(f"the webhook's host {host[:60]!r} is not a valid name", "check its spelling") from exc
    return host, port or (443 if parts.scheme == "https" else 80)


def _embedded_ipv4(ip: Address) -> tuple[ipaddress.IPv4Address | None, bool]:
    """The IPv4 address an IPv6 one carries, and whether it stands for it alone (mapped, NAT64: only the IPv4 one
    is judged, so a DNS64 resolver's answers for public hosts pass) or beside it (6to4, Teredo: both are)."""
    if ip.version != 6:
        return None, False
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, True
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), True
    if ip.sixtofour is not None:
        return ip.sixtofour, False
    if ip.teredo is not None:
        return ip.teredo[1], False
    return None, False


def _kind(ip: Address) -> str:
    for attr, name in (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                       ("is_unspecified", "unspecified"), ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return name
    return "non-public"


def refusal(ip: Address, settings: WebhookSettings) -> str | None:
    """Why a receiver may not be at `ip`, or None when it may."""
    allowed = [ipaddress.ip_network(n, strict=False) for n in settings.webhook_allowed_networks]
    inner, alone = _embedded_ipv4(ip)
    if any(ip in net or (inner is not None and inner in net) for net in allowed):
        return None
    for addr in ((inner,) if alone else (ip, inner)):
        if addr is not None and (not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified):
            return f"{ip} is a {_kind(addr)} address" if addr == ip else f"{ip} carries {addr}, a {_kind(addr)} address"
    return None


def vet(host: str, addresses: list[str], settings: WebhookSettings) -> list[Address]:
    """The addresses of `host`, every one allowed; WebhookRefused naming the first that is not."""
    if not addresses:
        raise WebhookRefused(f"the webhook's host {host[:80]!r} has no address", "check the name")
    out = []
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is link-local anyway
        why = refusal(ip, settings)
        if why is not None:
            raise WebhookRefused(
                f"the webhook's host {host[:80]!r} resolves to {why}: receivers must be on public addresses "
                "(protection against server-side request forgery)",
                "use a public receiver; an operator may allow a network with LANDSURF_WEBHOOK_ALLOWED_NETWORKS")
        out.append(ip)
    return out


def resolve(host: str, port: int) -> list[str]:
    """The addresses a name resolves to (a literal address resolves to itself); blocking."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the webhook's host {host[:80]!r} does not resolve ({exc})", "check the name") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_url(url: object, settings: WebhookSettings) -> str:
    """A receiver URL checked for the API (syntax, scheme, every address), resolution bounded in time."""
    host, port = parse_url(url, settings)
    try:
        addresses = await asyncio.wait_for(asyncio.to_thread(resolve, host, port),
                                           settings.webhook_resolve_timeout_s)
    except asyncio.TimeoutError as exc:
        raise WebhookRefused(f"resolving the webhook's host {host[:80]!r} took over "
                             f"{settings.webhook_resolve_timeout_s:g} s", "check the name, or try again") from exc
    vet(host, addresses, settings)
    assert isinstance(url, str)
    return url

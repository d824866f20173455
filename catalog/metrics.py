"""Prometheus metrics of the API: request rate and latency per route template, database state.

A registry per app (not the process-global default) so that several apps can live in one
process, as they do in tests. Every label comes from a closed set — methods outside the HTTP
standard become `OTHER`, paths become their route template (`unmatched` when no route matched),
statuses their three digits — so no client can create series. /metrics is rendered in a worker
thread (never on the event loop) and only for an operator token or a configured scrape address.
"""

from __future__ import annotations

import ipaddress
import time

import anyio
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.auth import require_role
from catalog.operations import inbox_gauges, inbox_state

METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
INBOX_GAUGES = {
    "landsurf_inbox_watcher_up": "1 when an inbox watcher heartbeats",
    "landsurf_inbox_watcher_heartbeat_age_seconds": "Age of the newest watcher heartbeat",
    "landsurf_inbox_untaken": "Entries of the inbox not taken yet",
    "landsurf_inbox_oldest_untaken_seconds": "Age of the oldest entry not taken yet",
    "landsurf_deliveries_open": "Receipts received, processing or retrying",
    "landsurf_deliveries_oldest_open_seconds": "Age of the oldest open receipt",
    "landsurf_deliveries_failed": "Receipts failed (retry them with `landsurf ingest retry`)",
    "landsurf_deliveries_stranded": "Open receipts without a live job (should always be 0)",
}

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _route_template(scope: Scope) -> str:
    """Low-cardinality label: the request path with its path parameters put back as `{name}`.

    Derived from the matched parameters rather than from router internals, so that routes of
    included routers and of the mounted tiler get their full template, prefixes included.
    """
    if scope.get("route") is None:
        return "unmatched"
    path = scope["path"]
    params = {}
    for name, value in scope.get("path_params", {}).items():
        value = str(value)
        if "/" in value:  # a {path:path} parameter spans segments
            path = path.replace(value, "{" + name + "}")
        elif value:
            params[value] = name
    out = []
    for segment in path.split("/"):
        if segment in params:
            out.append("{" + params[segment] + "}")
        elif "." in segment and all(part in params for part in segment.split(".")):
            out.append(".".join("{" + params[p] + "}" for p in segment.split(".")))
        else:
            out.append(segment)
    return "/".join(out)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("landsurf_http_requests", "HTTP requests served", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("landsurf_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.in_flight = Gauge("landsurf_http_requests_in_flight", "Requests being served", registry=self.registry)
        self.database_up = Gauge("landsurf_database_up", "1 when the last health check reached the database",
                                 registry=self.registry)
        self.deliveries = Gauge("landsurf_deliveries", "Delivery receipts per status", ["status"],
                                registry=self.registry)
        self.delivery_latency = Gauge("landsurf_delivery_to_searchable_seconds",
                                      "Delivery → searchable latency of products published in the last 24 h",
                                      ["quantile"], registry=self.registry)
        self.published_24h = Gauge("landsurf_products_published_24h", "Products published in the last 24 h",
                                   registry=self.registry)
        self.webhooks = Gauge("landsurf_webhooks", "Subscriptions' webhooks per status (failing: "
                              "LANDSURF_WEBHOOK_MAX_ATTEMPTS attempts in a row failed)", ["status"],
                              registry=self.registry)
        # the inbox watcher and the open receipts (catalog/operations.py), read at scrape time
        self.inbox = {name: Gauge(name, help_, registry=self.registry) for name, help_ in INBOX_GAUGES.items()}

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware that counts and times every request but /metrics itself."""

        async def measure(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or get_route_path(scope) == "/metrics":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            self.in_flight.inc()
            try:
                await app(scope, receive, send_status)
            finally:
                self.in_flight.dec()
                method = scope["method"] if scope["method"] in METHODS else "OTHER"
                route = _route_template(scope)
                self.requests.labels(method, route, str(status)[:3]).inc()
                self.latency.labels(method, route).observe(time.perf_counter() - start)

        return measure

    def install(self, app: FastAPI, scrape_addresses: list[str]) -> None:
        networks = [ipaddress.ip_network(a, strict=False) for a in scrape_addresses]

        def scraper(request: Request) -> bool:
            client = request.client.host if request.client else ""
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                return False
            return any(address in n for n in networks)

        @app.get("/metrics", include_in_schema=False,
                 dependencies=[Depends(require_role("operator", allow=scraper))])
        async def metrics_endpoint(request: Request) -> Response:
            await self._refresh_deliveries(request)
            body = await anyio.to_thread.run_sync(generate_latest, self.registry)
            return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _refresh_deliveries(self, request: Request) -> None:
        """Production figures read at scrape time: receipts per status, delivery→searchable latency (24 h)."""
        try:
            async with request.app.state.get_connection(request, "r") as conn:
                counts = await conn.fetch("SELECT status, count(*) AS n FROM landsurf.deliveries GROUP BY status")
                row = await conn.fetchrow(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50, "
                    "percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95, count(*) AS n FROM ("
                    "SELECT extract(epoch FROM finished_at - received_at) AS s FROM landsurf.deliveries "
                    "WHERE status = 'published' AND finished_at > now() - interval '24 hours') t")
        except Exception:  # noqa: BLE001 - metrics must answer even when the database does not
            self.database_up.set(0)
            return
        self.deliveries.clear()
        for r in counts:
            self.deliveries.labels(r["status"]).set(r["n"])
        for q in ("p50", "p95"):
            self.delivery_latency.labels(q).set(float(row[q]) if row[q] is not None else float("nan"))
        self.published_24h.set(row["n"])
        try:
            async with request.app.state.get_connection(request, "r") as conn:
                hooks = await conn.fetch("SELECT status, count(*) AS n FROM landsurf.webhooks GROUP BY status")
        except Exception:  # noqa: BLE001 - e.g. a database not migrated yet: the other figures still stand
            return
        found = {r["status"]: r["n"] for r in hooks}
        for status in ("active", "retrying", "failing"):  # every status always present: alerts need a 0
            self.webhooks.labels(status).set(found.get(status, 0))
        try:
            async with request.app.state.get_connection(request, "r") as conn:
                gauges = inbox_gauges(await inbox_state(conn))
        except Exception:  # noqa: BLE001 - as above
            return
        for name, value in gauges.items():
            self.inbox[name].set(value)

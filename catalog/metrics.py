"""Prometheus metrics of the API: request rate and latency per route template, database state.

A registry per app (not the process-global default) so that several apps can live in one
process, as they do in tests.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _route_template(request: Request) -> str:
    """Low-cardinality label: the request path with its path parameters put back as `{name}`.

    Derived from the matched parameters rather than from router internals, so that routes of
    included routers and of the mounted tiler get their full template, prefixes included.
    """
    if request.scope.get("route") is None:
        return "unmatched"
    path = request.url.path
    params = {}
    for name, value in request.scope.get("path_params", {}).items():
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

    def install(self, app: FastAPI) -> None:
        @app.middleware("http")
        async def measure(request: Request, call_next):
            if request.url.path == "/metrics":
                return await call_next(request)
            start = time.perf_counter()
            self.in_flight.inc()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                self.in_flight.dec()
                route = _route_template(request)
                self.requests.labels(request.method, route, str(status)).inc()
                self.latency.labels(request.method, route).observe(time.perf_counter() - start)

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

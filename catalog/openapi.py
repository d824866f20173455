"""The OpenAPI documents of the app and of the tiler, as clients and fuzzers read them: every path parameter
declared, and `servers` naming the public URL in force for the request (never a fixed host)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Route


def complete_path_parameters(app: FastAPI) -> None:
    """Declare every `{name}` of a path that an operation forgot (stac-fastapi's bulk_items omits
    `collection_id`), so that clients and fuzzers generated from the document are right."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path, operations in schema.get("paths", {}).items():
            names = re.findall(r"{(\w+)(?::\w+)?}", path)
            for operation in operations.values():
                if not isinstance(operation, dict):
                    continue
                params = operation.setdefault("parameters", [])
                declared = {p.get("name") for p in params if p.get("in") == "path"}
                params.extend({"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                              for n in names if n not in declared)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json;version=3.0"
"""What the landing page's service-desc link announces; clients check the answer carries it."""


def serve_with_public_servers(app: FastAPI) -> None:
    """Answer the document with `servers` = the base URL of this request (public URL, prefix and mount
    included), in place of FastAPI's relative root path."""
    if not app.openapi_url:
        return

    async def openapi(request: Request) -> JSONResponse:
        schema = dict(app.openapi())
        schema["servers"] = [{"url": str(request.base_url).rstrip("/")}]
        return JSONResponse(schema, media_type=OPENAPI_MEDIA_TYPE)

    for n, route in enumerate(app.router.routes):
        if isinstance(route, Route) and route.path == app.openapi_url:
            app.router.routes[n] = Route(app.openapi_url, openapi, include_in_schema=False)

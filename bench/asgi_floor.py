"""The floor of any Python file server on uvicorn, for bench/download_bench.py --direct: a bare ASGI app that
answers `GET /download/<path>` from `LANDSURF_FLOOR_ROOT` (whole file or one `bytes=a-b` range) with 1 MiB
`os.pread` reads, and nothing else — no checks, no metrics, no middleware. What `landsurf serve` costs above it
is landsurf's; what it costs below nginx is uvicorn's (HTTP parsing, the event loop, a copy through user space).

    LANDSURF_FLOOR_ROOT=DIR uvicorn bench.asgi_floor:app --port PORT --no-access-log --lifespan off
"""

from __future__ import annotations

import os

ROOT = os.environ.get("LANDSURF_FLOOR_ROOT", ".")
CHUNK = 1 << 20


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":  # run with --lifespan off
        return
    path = os.path.join(ROOT, scope["path"].removeprefix("/download/"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        size = os.fstat(fd).st_size
        start, end, status, headers = 0, size, 200, []
        for k, v in scope["headers"]:
            if k == b"range":
                first, _, last = v.decode().partition("=")[2].partition("-")
                start, end, status = int(first), min(size, int(last) + 1), 206
                headers.append((b"content-range", b"bytes %d-%d/%d" % (start, end - 1, size)))
        headers.append((b"content-length", b"%d" % (end - start)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        pos = start
        while pos < end:
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})
    finally:
        os.close(fd)

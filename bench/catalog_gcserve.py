"""`landsurf serve` with the cost of Python's cyclic garbage collector measured, and optionally the heap of the
built application frozen out of it (`gc.freeze()`): an experiment of the catalog benchmark, not how landsurf runs.

    LANDSURF_HOME=… python -m bench.catalog_gcserve --port 8123 [--freeze] --stats gc.json

The app (`catalog.app.create_app`) and uvicorn's options are those of `landsurf serve`. Every collection's CPU
time (thread time, so a descheduled process does not inflate it) is added up per generation and written to
`--stats` twice a second, with the number of objects each generation holds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

STATS: dict[str, Any] = {"collections": [0, 0, 0], "cpu_ms": [0.0, 0.0, 0.0], "max_cpu_ms": [0.0, 0.0, 0.0]}
_started = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.thread_time()
        return
    g, spent = info["generation"], (time.thread_time() - _started[0]) * 1000
    STATS["collections"][g] += 1
    STATS["cpu_ms"][g] += spent
    STATS["max_cpu_ms"][g] = max(STATS["max_cpu_ms"][g], spent)


def _write(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(STATS))
    os.replace(tmp, path)


def _reporter(path: Path) -> None:
    for tick in iter(int, 1):  # forever, in a daemon thread
        time.sleep(0.5)
        if tick % 10 == 0 or "objects" not in STATS:
            STATS["objects"] = [len(gc.get_objects(generation=g)) for g in range(3)]
            STATS["frozen"] = gc.get_freeze_count()
        _write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() once the app is built")
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    import uvicorn

    from catalog.app import create_app
    from catalog.settings import CatalogSettings

    gc.callbacks.append(_on_gc)
    settings = CatalogSettings()
    settings = settings.model_copy(update={"port": args.port})
    app = create_app(settings)
    if args.freeze:
        gc.collect()
        gc.freeze()
    STATS["mode"] = "freeze" if args.freeze else "default"
    threading.Thread(target=_reporter, args=(args.stats,), daemon=True).start()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)


if __name__ == "__main__":
    main()

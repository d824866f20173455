"""A stalled database gives a 503 within the statement timeout, never a hung request."""

from __future__ import annotations

import threading
import time

import httpx

from catalog.collections import S2_L2A
from catalog.database import session


def _hold_lock(settings, table: str, seconds: float, ready: threading.Event) -> None:
    with session(settings) as conn:
        conn.execute("SET statement_timeout = 0")
        with conn.transaction():
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            ready.set()
            time.sleep(seconds)


def test_stalled_database_gives_503_quickly(api, catalog_settings, published_items):
    ready = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(catalog_settings, "pgstac.items", 12, ready), daemon=True)
    holder.start()
    assert ready.wait(10)
    timeout_s = catalog_settings.statement_timeout_ms / 1000
    start = time.monotonic()
    r = httpx.post(api.url + "/search", json={"collections": [S2_L2A], "limit": 5}, timeout=60)
    elapsed = time.monotonic() - start
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert "retry" in r.json()["description"]
    assert elapsed < timeout_s + 5, f"503 after {elapsed:.1f}s; the statement timeout is {timeout_s}s"

    item = published_items[0]
    start = time.monotonic()
    r = httpx.get(f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/info?assets=FRE_B4", timeout=60)
    assert r.status_code == 503, r.text
    assert time.monotonic() - start < timeout_s + 5
    holder.join()
    # and the API is healthy again once the database answers
    assert httpx.post(api.url + "/search", json={"limit": 1}, timeout=30).status_code == 200
    assert httpx.get(api.url + "/health").json()["ready"] is True

"""The API tried as an attacker would: every write refused without a token, every size bounded, no 5xx for
the malformed requests that once gave one, no trust in forwarded headers, no file outside the store served,
no read that writes, no metrics series a client can create. Against the real server of the session."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from catalog.auth import PUBLIC_WRITES, SAFE_METHODS, is_public_write
from catalog.collections import S2_L2A
from catalog.database import resolve_urls
from tests.conftest import ApiServer, free_port


def _write_routes(settings) -> list[tuple[str, str]]:
    """Every (method, path) of the app that is not a read, the mounted tiler included, found at run time
    (whether or not a route shows in the OpenAPI document)."""
    from fastapi.routing import _IncludedRouter
    from starlette.routing import Mount

    from processing.cli import api_app

    found: list[tuple[str, str]] = []

    def methods_of(route, path: str) -> None:
        for method in sorted((getattr(route, "methods", None) or set()) - SAFE_METHODS):
            found.append((method, path))

    def walk(routes, prefix: str = "") -> None:
        for route in routes:
            if isinstance(route, _IncludedRouter):
                for candidate in route.effective_candidates():
                    if isinstance(candidate, _IncludedRouter):
                        walk([candidate], prefix)
                    else:
                        methods_of(candidate.original_route, prefix + candidate.path)
            elif isinstance(route, Mount):
                inner = route.app
                while not hasattr(inner, "routes") and hasattr(inner, "app"):
                    inner = inner.app
                walk(inner.routes, prefix + route.path)
            else:
                methods_of(route, prefix + getattr(route, "path", ""))

    walk(api_app(settings).routes)  # the app as served: the catalog's and processing's routers
    return found


def _concrete(path: str) -> str:
    """A request path for a route template: every parameter given a plausible value."""
    path = re.sub(r"{[^}]*:path}", "a/b.tif", path)
    path = re.sub(r"{(z|x|y)}", "1", path)
    return re.sub(r"{[^}]+}", "x", path)


def test_every_write_route_needs_a_token(api, catalog_settings, operator_token):
    routes = _write_routes(catalog_settings)
    protected = [(m, p) for m, p in routes if not is_public_write(m, _concrete(p))]
    assert len(protected) >= 10, protected  # transactions, bulk items, mosaic registration …
    assert any("bulk_items" in p for _, p in protected) and any("register" in p for _, p in protected)
    assert any(p.startswith("/processes/") for _, p in protected)  # routers added by processing are walked too
    for method, path in protected:
        url = api.url + _concrete(path)
        r = httpx.request(method, url, json={}, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.request(method, url, json={}, timeout=10, headers={"Authorization": f"Bearer {operator_token}"})
        assert r.status_code == 403, (method, path, r.status_code)
    # a method nobody routes is refused the same way, not routed
    assert httpx.request("PURGE", api.url + "/collections", timeout=10).status_code == 401
    # the public list is what the docs say, and each of its routes answers without a token
    assert {w.method for w in PUBLIC_WRITES} == {"POST"}
    assert httpx.post(api.url + "/search", json={"limit": 1}).status_code == 200


def test_operator_views_need_an_operator_token(api, operator_token, admin_token):
    for path in ("/deliveries", "/metrics", "/raster/searches/list"):
        assert httpx.get(api.url + path).status_code == 401, path
        assert httpx.get(api.url + path, headers={"Authorization": "Bearer lsf_forged"}).status_code == 401
        for token in (operator_token, admin_token):
            r = httpx.get(api.url + path, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, (path, r.text[:200])


def test_bulk_items_cannot_replace_an_asset_href(api, published_items, admin_token):
    item = json.loads(json.dumps(published_items[0]))
    item["assets"]["FRE_B4"]["href"] = "http://evil.example/x.tif"
    url = f"{api.url}/collections/{S2_L2A}/bulk_items"
    body = {"items": {item["id"]: item}, "method": "upsert"}
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200 and r.json()["success"] == 0 and "not in this catalog's store" in r.text
    served = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{item['id']}").json()
    assert served["assets"]["FRE_B4"]["href"] == published_items[0]["assets"]["FRE_B4"]["href"]


@pytest.mark.parametrize("href", ["http://evil.example/x.tif", "s3://bucket/x.tif", "/etc/passwd",
                                  "file:///etc/passwd", "../../pg/landsurf.json", ".staging/1/x.tif"])
def test_items_written_through_the_api_keep_their_assets_in_the_store(api, published_items, admin_token, href):
    item = json.loads(json.dumps(published_items[1]))
    item["id"] += "-foreign"
    item["links"] = []
    item["assets"] = {"FRE_B4": {**item["assets"]["FRE_B4"], "href": href}}
    r = httpx.post(f"{api.url}/collections/{S2_L2A}/items", json=item,
                   headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 400, r.text
    assert httpx.get(f"{api.url}/collections/{S2_L2A}/items/{item['id']}").status_code == 404


def test_an_own_download_url_is_stored_as_a_store_path(api, published_items, admin_token, catalog_settings):
    item = json.loads(json.dumps(published_items[2]))
    item["id"] += "-own"
    item["links"] = []
    headers = {"Authorization": f"Bearer {admin_token}"}
    url = f"{api.url}/collections/{S2_L2A}/items"
    assert httpx.post(url, json=item, headers=headers).status_code in (200, 201)
    try:
        with psycopg.connect(resolve_urls(catalog_settings).api) as conn:
            stored = conn.execute("SELECT content->'assets'->'FRE_B4'->>'href' FROM pgstac.items WHERE id = %s",
                                  (item["id"],)).fetchone()[0]
        assert stored.startswith(f"{S2_L2A}/31TCH/2024/06/") and "://" not in stored
        served = httpx.get(f"{url}/{item['id']}").json()["assets"]["FRE_B4"]["href"]
        assert served == published_items[2]["assets"]["FRE_B4"]["href"]
    finally:
        httpx.delete(f"{url}/{item['id']}", headers=headers)


def _preview(api, item: dict, tail: str) -> str:
    return f"{api.url}/raster/collections/{S2_L2A}/items/{item['id']}/{tail}"


@pytest.mark.parametrize("tail,needle", [
    ("preview/100000x100000.png?assets=FRE_B4", "LANDSURF_MAX_IMAGE_SIDE"),
    ("preview.png?assets=FRE_B4&width=100000&height=10", "LANDSURF_MAX_IMAGE_SIDE"),
    ("preview.png?assets=FRE_B4&max_size=65536", "LANDSURF_MAX_IMAGE_SIDE"),
    ("tiles/WebMercatorQuad/14/8222/5971@64x.png?assets=FRE_B4", "LANDSURF_MAX_TILE_SIZE"),
    ("tiles/WebMercatorQuad/14/8222/5971.png?assets=FRE_B4&tilesize=100000", "LANDSURF_MAX_TILE_SIZE"),
    ("tiles/WebMercatorQuad/99/1/1.png?assets=FRE_B4", "tile matrix"),
    ("preview.png?" + "&".join(["assets=FRE_B4"] * 40), "LANDSURF_MAX_ASSETS"),
    ("preview.png?" + "&".join(f"assets=FRE_B{b}" for b in (2, 3, 4, 8, 5)) + "&width=2048&height=2048",
     "LANDSURF_MAX_IMAGE_PIXELS"),
    ("bbox/0,0,1,1/100000x5.png?assets=FRE_B4", "LANDSURF_MAX_IMAGE_SIDE"),
    ("point/1,200?assets=FRE_B4", "latitude"),
    ("statistics?assets=FRE_B4&histogram_bins=1000000", "histogram_bins"),
])
def test_tiler_sizes_are_bounded(api, published_items, tail, needle):
    start = time.monotonic()
    r = httpx.get(_preview(api, published_items[0], tail), timeout=30)
    assert r.status_code == 400 and needle in r.json()["description"], (r.status_code, r.text[:300])
    assert time.monotonic() - start < 5  # refused before anything is read
    assert api.proc.poll() is None


def test_a_part_without_size_is_read_onto_the_largest_image(api, published_items, catalog_settings):
    box = published_items[0]["bbox"]
    r = httpx.get(_preview(api, published_items[0], "bbox/" + ",".join(map(str, box)) + ".tif?assets=FRE_B4"),
                  timeout=60)
    assert r.status_code == 200, r.text[:300]
    from rasterio.io import MemoryFile

    with MemoryFile(r.content) as mem, mem.open() as ds:
        assert max(ds.width, ds.height) <= catalog_settings.max_image_side


@pytest.mark.parametrize("params,needle", [
    ({"ids": ",".join(f"i{n}" for n in range(1500))}, "LANDSURF_MAX_IDS"),
    ({"filter": "(" * 40 + "eo:cloud_cover < 1" + ")" * 40, "filter-lang": "cql2-text"}, "LANDSURF_MAX_FILTER_DEPTH"),
    ({"filter": "eo:cloud_cover < 1 AND " * 1200 + "true", "filter-lang": "cql2-text"}, "LANDSURF_MAX_URL_BYTES"),
    ({"intersects": "[" * 200 + "]" * 200}, "nests"),
])
def test_search_sizes_are_bounded(api, params, needle):
    r = httpx.get(api.url + "/search", params=params, timeout=30)
    assert r.status_code == 400 and needle in r.json()["description"], r.text[:300]


def test_a_limit_over_the_maximum_serves_the_maximum(catalog_settings, published):
    """OGC API Features: a limit over the maximum is no error; the maximum is served instead, with paging."""
    server = ApiServer(catalog_settings, free_port()).start(LANDSURF_MAX_LIMIT="2", LANDSURF_PUBLIC_URL="")
    try:
        for r in (httpx.get(server.url + "/search", params={"limit": 10**9}),
                  httpx.post(server.url + "/search", json={"limit": 10**9}),
                  httpx.get(f"{server.url}/collections/{S2_L2A}/items", params={"limit": 500})):
            assert r.status_code == 200, r.text[:300]
            assert len(r.json()["features"]) == 2 and any(link["rel"] == "next" for link in r.json()["links"])
        assert httpx.get(server.url + "/search", params={"limit": 0}).status_code == 400
    finally:
        server.stop()


def test_bodies_are_bounded(api):
    r = httpx.post(api.url + "/search", content=b'{"limit": 1, "pad": "' + b"x" * (2 << 20) + b'"}',
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "LANDSURF_MAX_BODY_BYTES" in r.json()["description"]
    deep = b'{"filter": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(api.url + "/search", content=deep, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "nests" in r.text
    r = httpx.post(api.url + "/search", json={"filter": "eo:cloud_cover < 1 AND " * 1200 + "true"})
    assert r.status_code == 400 and "LANDSURF_MAX_FILTER_BYTES" in r.text
    r = httpx.post(api.url + "/search", json={"ids": [f"i{n}" for n in range(2000)]})
    assert r.status_code == 400 and "LANDSURF_MAX_IDS" in r.text
    r = httpx.post(api.url + "/search", content=b'{"limit": 1}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(api.url + "/search", json=[None, None])
    assert r.status_code == 400


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/search?filter=foo(eo:cloud_cover)%20%3D%201&filter-lang=cql2-text", None),   # unknown function
    ("GET", "/search?filter=%7B%22op%22%3A%22nope%22%2C%22args%22%3A%5B1%2C2%5D%7D&filter-lang=cql2-json", None),
    ("POST", "/search", {"filter-lang": "cql2-json", "filter": {"op": "~~", "args": [{"property": "id"}, 1]}}),
    ("POST", "/search", {"fields": {"include": [[["x"]]]}}),
    ("GET", "/search?token=next:forged", None),                                           # a forged paging token
    ("GET", "/search?token=prev:%00zz", None),
    ("GET", "/search?query=7%08%00", None),
    ("GET", "/collections?filter=true", None),
    ("GET", "/download/a%00b.tif", None),                                                 # NUL in a path
    ("GET", "/raster/collections/sentinel2-l2a/items/{id}/point/10,10?assets=FRE_B4", None),  # outside the item
    ("GET", "/raster/collections/sentinel2-l2a/items/{id}/point/1,200?assets=FRE_B4", None),  # latitude 200
    ("GET", "/raster/searches/0/tiles/EuropeanETRS89_LAEAQuad/5577/45139015/1614939?assets=x", None),
    ("POST", "/raster/searches/0/feature?assets=data", {"type": "Feature", "geometry": None, "properties": None}),
])
def test_malformed_requests_are_4xx(api, published_items, method, path, body):
    r = httpx.request(method, api.url + path.replace("{id}", published_items[0]["id"]), json=body, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


def test_a_mosaic_registered_with_invalid_cql2_is_refused(api, admin_token):
    body = {"collections": [S2_L2A], "filter-lang": "cql2-json", "filter": {"op": "nope", "args": [1, 2]}}
    r = httpx.post(api.url + "/raster/searches/register", json=body,
                   headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    assert 400 <= r.status_code < 500, r.text[:300]


def test_forwarded_headers_from_anyone_change_nothing(api):
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/x",
              "Forwarded": "host=evil.example;proto=https"}
    landing = httpx.get(api.url + "/", headers=forged).json()
    found = httpx.get(api.url + "/search?limit=1", headers=forged).json()
    assert "evil.example" not in json.dumps(landing) + json.dumps(found)
    own = [link["href"] for link in landing["links"] + found["links"] if link["rel"] in ("self", "root")]
    own += [a["href"] for a in found["features"][0]["assets"].values()]
    assert own and all(h.startswith(api.url + "/") for h in own), own


def test_forwarded_headers_from_a_trusted_proxy_set_the_public_url(catalog_settings, published):
    server = ApiServer(catalog_settings, free_port()).start(LANDSURF_TRUSTED_PROXIES="127.0.0.1",
                                                            LANDSURF_PUBLIC_URL="")
    try:
        landing = httpx.get(server.url + "/", headers={"X-Forwarded-Host": "data.example.org",
                                                       "X-Forwarded-Proto": "https",
                                                       "X-Forwarded-Prefix": "/landsurf"}).json()
        hrefs = [link["href"] for link in landing["links"] if link["rel"] in ("self", "root", "search")]
        assert hrefs and all(h.startswith("https://data.example.org/landsurf/") for h in hrefs), hrefs
        item = httpx.post(server.url + "/search", json={"limit": 1},
                          headers={"Forwarded": "host=mirror.example.org;proto=https"}).json()["features"][0]
        assert item["assets"]["FRE_B4"]["href"].startswith("https://mirror.example.org/download/")
    finally:
        server.stop()


def test_download_serves_only_published_files(api, catalog_settings, published_items):
    store = catalog_settings.store_dir
    planted = store / S2_L2A / "planted.tif"
    planted.symlink_to("/etc/passwd")
    (store / ".staging").mkdir(exist_ok=True)
    staged = store / ".staging" / "999"
    staged.mkdir(exist_ok=True)
    (staged / "x.tif").write_bytes(b"II*\x00 in progress")
    try:
        for path in (f"{S2_L2A}/planted.tif", ".staging/999/x.tif", "%2Estaging/999/x.tif", f"{S2_L2A}/../../pg"):
            r = httpx.get(f"{api.url}/download/{path}")
            assert r.status_code in (400, 404), (path, r.status_code)
            assert "root:" not in r.text and "in progress" not in r.text
    finally:
        planted.unlink()
        (staged / "x.tif").unlink()
        staged.rmdir()
    href = published_items[0]["assets"]["FRE_B4"]["href"]
    r = httpx.get(href, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.headers["x-content-type-options"] == "nosniff"
    assert "attachment" not in r.headers.get("content-disposition", "")
    meta = httpx.get(published_items[0]["assets"]["metadata"]["href"])
    assert meta.status_code == 200 and meta.headers["content-disposition"].startswith("attachment")
    assert meta.headers["x-content-type-options"] == "nosniff"


def test_reads_never_write_a_search(api, catalog_settings, published_items):
    def count() -> int:
        with psycopg.connect(resolve_urls(catalog_settings).api) as conn:
            return conn.execute("SELECT count(*) FROM pgstac.searches").fetchone()[0]

    before = count()
    item = published_items[3]
    box = item["bbox"]
    base = f"{api.url}/raster/collections/{S2_L2A}"
    for n in range(5):
        httpx.get(f"{base}/items/{item['id']}/info?assets=FRE_B4&n={n}", timeout=30)
        httpx.get(f"{base}/tiles/WebMercatorQuad/9/256/{180 + n}.png?assets=FRE_B4&datetime=2024-06-0{n + 1}",
                  timeout=30)
        httpx.get(f"{base}/info?bbox={box[0]},{box[1]},{box[2] - n / 1000},{box[3]}", timeout=30)
        httpx.get(f"{api.url}/search?limit=1&filter=eo:cloud_cover>{n}&filter-lang=cql2-text", timeout=30)
    assert count() == before


def test_invented_methods_create_no_metrics_series(api, operator_token):
    def series() -> int:
        text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
        return sum(1 for line in text.splitlines() if line.startswith("landsurf_http_requests_total"))

    before = series()
    for n in range(300):
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
            s.sendall(f"X{n}{'Y' * 2000} /search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            s.recv(4096)
    assert series() - before <= 2  # at most OTHER × one or two statuses
    text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
    assert "YYYY" not in text and 'method="OTHER"' in text


def test_an_unexpected_error_is_a_clean_500(tmp_path):
    """The shield: JSON body with an id, `Connection: close`, and the server keeps serving."""
    import threading

    import uvicorn
    from fastapi import FastAPI

    from catalog.proxy import ErrorShield

    app = FastAPI()

    @app.get("/boom")
    def boom():
        raise RuntimeError("bug")

    @app.get("/ok")
    def ok():
        return {"ok": True}

    app.add_middleware(ErrorShield)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            r = client.get("/boom")
            assert r.status_code == 500 and r.headers["connection"] == "close"
            assert re.search(r"id [0-9a-f]{12}", r.json()["description"])
            assert client.get("/ok").json() == {"ok": True}
    finally:
        server.should_exit = True
        thread.join(10)

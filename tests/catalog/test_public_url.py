"""Links that follow the deployment: published once, served under any public URL, on any port, behind a real
nginx (Debian's package, started here on loopback) at a path prefix — every href and link of every response
starts with the public URL in force and resolves; GDAL, pystac-client and the tiler work through it."""

from __future__ import annotations

import http.cookiejar
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from string import Template

import httpx
import numpy as np
import pytest
import rasterio
from pystac_client import Client

from catalog.collections import S2_L2A
from tests.conftest import ROOT, ApiServer, env_for, free_port

RGB = "assets=FRE_B4&assets=FRE_B3&assets=FRE_B2&rescale=0,3000"


def _hrefs(doc) -> list[str]:
    """Every href of a JSON document, wherever it is."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("href", "url") and isinstance(value, str):
                found.append(value)
            elif key == "tiles" and isinstance(value, list):
                found.extend(v for v in value if isinstance(v, str))
            else:
                found.extend(_hrefs(value))
    elif isinstance(doc, list):
        for value in doc:
            found.extend(_hrefs(value))
    return found


def _ours(hrefs: list[str]) -> list[str]:
    foreign = ("https://stac-extensions.github.io", "https://schemas.stacspec.org", "https://www.etalab",
               "https://sentinels.copernicus.eu", "https://github.com", "http://www.opengis.net",
               "https://api.stacspec.org", "http://www.opengis", "https://www.opengis")
    return [h for h in hrefs if not h.startswith(foreign) and "{" not in h]


def _walk(base: str, item: dict) -> list[str]:
    """The hrefs of every response class: landing, conformance-free pages, collections, items, searches (GET
    and POST with their next links), TileJSON, the tiles viewer, OpenAPI servers."""
    cid, iid = S2_L2A, item["id"]
    hrefs: list[str] = []
    for path in ("/", "/collections", f"/collections/{cid}", f"/collections/{cid}/items?limit=2",
                 f"/collections/{cid}/items/{iid}", "/search?limit=2&collections=" + cid,
                 f"/raster/collections/{cid}/items/{iid}/WebMercatorQuad/tilejson.json?{RGB}",
                 f"/raster/collections/{cid}/WebMercatorQuad/tilejson.json?{RGB}"):
        r = httpx.get(base + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        hrefs += _hrefs(r.json())
    post = httpx.post(base + "/search", json={"collections": [cid], "limit": 2}, timeout=30).json()
    hrefs += _hrefs(post)
    nxt = next(link for link in post["links"] if link["rel"] == "next")
    page2 = httpx.request(nxt.get("method", "GET"), nxt["href"], json=nxt.get("body"), timeout=30)
    assert page2.status_code == 200 and page2.json()["features"]
    hrefs += _hrefs(page2.json())
    for doc, mount in (("/api", ""), ("/raster/api", "/raster")):
        servers = [s["url"] for s in httpx.get(base + doc, timeout=30).json()["servers"]]
        assert servers == [base + mount], servers  # a base for the document's paths, not a page of its own
    viewer = httpx.get(f"{base}/raster/collections/{cid}/items/{iid}/WebMercatorQuad/map.html?{RGB}", timeout=30)
    assert viewer.status_code == 200
    hrefs += [u for u in re.findall(r"https?://[^\s'\"<>]+", viewer.text) if "/raster/" in u]
    return _ours(hrefs)


def _resolves(client: httpx.Client, href: str) -> None:
    headers = {"Range": "bytes=0-99"} if "/download/" in href else {}
    r = client.get(href, headers=headers)
    if r.status_code == 401:  # a link to a guarded view (the job list): there, and asking for a token
        assert r.headers["www-authenticate"] == "Bearer" and href.endswith("/jobs"), (href, r.text[:200])
        return
    assert r.status_code in (200, 206), (href, r.status_code, r.text[:200])


def test_published_once_served_under_another_public_url(catalog_settings, published_items):
    """Items published while the box answered on one address are served, unchanged in the database, under
    another: every link and href starts with the new URL and resolves; tiles and previews render."""
    port = free_port()
    b_url = f"http://localhost:{port}"  # another name and port than the session's publication
    server = ApiServer(catalog_settings, port).start(LANDSURF_PUBLIC_URL=b_url)
    try:
        hrefs = _walk(b_url, published_items[0])
        assert len(hrefs) > 60
        wrong = [h for h in hrefs if not h.startswith(b_url + "/") and h != b_url]
        assert not wrong, wrong[:10]
        # one client, four at a time: a client per request cost ~35 ms of CPU each (its TLS context); no cookie
        # is kept, so each href is followed as a fresh client would
        no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        followed = [href for href in sorted(set(hrefs))[:300] if "/tiles/" not in href]
        with httpx.Client(timeout=60, follow_redirects=True, cookies=no_cookies) as client, \
                ThreadPoolExecutor(4) as pool:
            list(pool.map(partial(_resolves, client), followed))  # re-raises the first failure
        item = published_items[0]
        preview = httpx.get(f"{b_url}/raster/collections/{S2_L2A}/items/{item['id']}/preview.png?{RGB}"
                            "&max_size=128", timeout=30)
        assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG"
        tj = httpx.get(f"{b_url}/raster/collections/{S2_L2A}/WebMercatorQuad/tilejson.json?{RGB}").json()
        assert tj["tiles"][0].startswith(b_url + "/raster/collections/")
    finally:
        server.stop()


def test_serve_on_a_port_without_public_url(catalog_settings, published_items):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "serve", "--port", str(port)],
                            env=env_for(catalog_settings, LANDSURF_PUBLIC_URL=""), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = Client.open(url + "/")
        assert all(link.href.startswith(url) for link in client.links)
        assert S2_L2A in {c.id for c in client.get_collections()}
        items = list(client.search(collections=[S2_L2A], limit=2, max_items=4).items())
        assert len(items) == 4 and items[0].assets["FRE_B4"].href.startswith(url + "/download/")
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0]
    assert f"public URL {url} (derived from --host/--port" in output


# -- behind nginx ----------------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture(scope="module")
def behind_nginx(catalog_settings, published, tmp_path_factory):
    """`landsurf serve` behind Debian's nginx at /landsurf/, with the repository's own location template."""
    conf_dir = tmp_path_factory.mktemp("nginx")
    proxy_port, api_port = free_port(), free_port()
    public = f"http://127.0.0.1:{proxy_port}/landsurf"
    def render(name: str, prefix: str) -> str:
        return Template((ROOT / "infra/nginx" / name).read_text()).safe_substitute(
            LANDSURF_UPSTREAM=f"127.0.0.1:{api_port}", LANDSURF_PREFIX=prefix,
            LANDSURF_STORE=str(catalog_settings.store_dir))

    (conf_dir / "landsurf.locations.conf").write_text(render("landsurf.locations.conf.template", "/landsurf"))
    # the optional public-downloads location, at its own prefix so that both are tested
    (conf_dir / "public.conf").write_text(render("landsurf.public-downloads.conf.template", "/public"))
    (conf_dir / "http.conf").write_text(render("landsurf.http.conf.template", "/public"))
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (conf_dir / d).mkdir()
    (conf_dir / "nginx.conf").write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {conf_dir}/body; proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi; uwsgi_temp_path {conf_dir}/uwsgi; scgi_temp_path {conf_dir}/scgi;
    include {conf_dir}/http.conf;
    server {{
        listen 127.0.0.1:{proxy_port};
        sendfile on; tcp_nodelay on; tcp_nopush off;
        include {conf_dir}/public.conf;
        include {conf_dir}/landsurf.locations.conf;
    }}
}}
""")
    check = subprocess.run([NGINX, "-t", "-c", str(conf_dir / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    api = ApiServer(catalog_settings, api_port).start(
        LANDSURF_PUBLIC_URL=public, LANDSURF_TRUSTED_PROXIES="127.0.0.1", LANDSURF_ACCEL_REDIRECT="/landsurf-store/")
    nginx = subprocess.Popen([NGINX, "-c", str(conf_dir / "nginx.conf")], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            if httpx.get(public + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield public
    nginx.terminate()
    nginx.wait(10)
    api.stop()


def test_pystac_client_pages_through_the_proxy(behind_nginx):
    client = Client.open(behind_nginx + "/")
    assert all(link.href.startswith(behind_nginx + "/") for link in client.links)
    search = client.search(collections=[S2_L2A], limit=2)
    pages = list(search.pages())
    assert len(pages) == 3 and sum(len(p.items) for p in pages) == 6
    assert all(i.assets["FRE_B4"].href.startswith(behind_nginx + "/download/") for p in pages for i in p.items)


def test_downloads_through_the_proxy_keep_range_etag_and_length(behind_nginx, published_items):
    asset = published_items[0]["assets"]["FRE_B4"]
    href = behind_nginx + "/download/" + asset["href"].split("/download/", 1)[1]
    full = httpx.get(href, timeout=30)
    assert full.status_code == 200 and int(full.headers["content-length"]) == asset["file:size"]
    assert "x-accel-redirect" not in full.headers  # nginx consumed it and sent the file itself
    assert full.headers["x-content-type-options"] == "nosniff" and full.headers["etag"]
    part = httpx.get(href, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[1000:2000]
    assert httpx.get(href, headers={"If-None-Match": full.headers["etag"]}).status_code == 304
    assert httpx.get(behind_nginx + "-store/" + href.split("/download/", 1)[1]).status_code == 404  # internal


def test_gdal_reads_through_the_proxy(behind_nginx, published_items):
    item = published_items[0]
    href = item["assets"]["FRE_B4"]["href"].split("/download/", 1)[1]
    url = f"{behind_nginx}/download/{href}"
    # Debian's GDAL 3.6 (QGIS on Debian 12), installed by .ci/system-deps.sh
    info = subprocess.run(["/usr/bin/gdalinfo", f"/vsicurl/{url}"], capture_output=True, text=True, timeout=60,
                          env={"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "PATH": "/usr/bin:/bin"})
    assert info.returncode == 0 and "EPSG" in info.stdout and "Block=512x512" in info.stdout, info.stderr
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(url) as ds:
        window = ds.read(1, window=((100, 164), (100, 164)))
        assert window.shape == (64, 64)
    box = ",".join(map(str, item["bbox"]))
    stacit = (f'STACIT:"{behind_nginx}/search?collections={S2_L2A}&bbox={box}'
              f'&datetime=2024-06-01T00:00:00Z/2024-06-30T00:00:00Z":asset=FRE_B4')
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(stacit) as ds:
        data = ds.read(1, out_shape=(64, 64))
    assert (data != -10000).sum() > 1000


def test_tiles_render_through_the_proxy(behind_nginx, published_items):
    import morecantile

    item = min(published_items, key=lambda i: i["properties"]["eo:cloud_cover"])
    b = item["bbox"]
    t = morecantile.tms.get("WebMercatorQuad").tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 13)
    tj = httpx.get(f"{behind_nginx}/raster/collections/{S2_L2A}/items/{item['id']}/WebMercatorQuad/"
                   f"tilejson.json?{RGB}", timeout=30).json()
    assert tj["tiles"][0].startswith(behind_nginx + "/raster/")
    url = tj["tiles"][0].format(z=t.z, x=t.x, y=t.y)
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from rasterio.io import MemoryFile

    with MemoryFile(r.content) as mem, mem.open() as ds:
        rgb = ds.read()[:3]
    assert np.std(rgb) > 3


def test_public_downloads_served_by_nginx_keep_the_apis_rules(behind_nginx, published_items, catalog_settings):
    """The optional nginx-only download location follows the API's rules: no symlink, no hidden path, nosniff,
    attachments for what is not an image."""
    base = behind_nginx.replace("/landsurf", "/public") + "/download/"
    rel = published_items[0]["assets"]["FRE_B4"]["href"].split("/download/", 1)[1]
    r = httpx.get(base + rel, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in r.headers
    meta = published_items[0]["assets"]["metadata"]["href"].split("/download/", 1)[1]
    assert httpx.get(base + meta).headers["content-disposition"] == "attachment"
    store = catalog_settings.store_dir
    planted = store / S2_L2A / "planted-by-nginx-test.tif"
    planted.symlink_to("/etc/passwd")
    hidden = store / ".staging" / "nginx-test"
    hidden.mkdir(parents=True, exist_ok=True)
    (hidden / "x.tif").write_bytes(b"in progress")
    try:
        for path in (f"{S2_L2A}/planted-by-nginx-test.tif", ".staging/nginx-test/x.tif"):
            r = httpx.get(base + path)
            assert r.status_code in (403, 404) and b"root:" not in r.content and b"in progress" not in r.content
    finally:
        planted.unlink()
        shutil.rmtree(hidden)

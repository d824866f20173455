"""`landsurf download` against real servers on loopback: a `landsurf serve` that needs tokens, reached through a
TCP relay that can slow the bytes down and cut every connection (the server is killed at the same moment), and a
minimal foreign STAC API (GET paging, no Repr-Digest, no /auth) whose items point at landsurf's files.

Bytes re-sent after the interruption are counted on the server (`landsurf_download_bytes` of the restarted
process), not only by the client.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from rich.console import Console

from catalog.collections import S2_L2A
from catalog.database import session
from catalog.users import add_user, issue_token
from processing.download_client import DownloadOptions, Query, TokenSource, parse_checksum, run
from tests.conftest import ApiServer, env_for, free_port, run_cli

ASSETS = ["FRE_B4", "FRE_B8"]


class Relay:
    """A loopback TCP relay: `rate` bytes/s from server to client (None: as fast as it goes), `cut()` drops
    every open connection at once, buffered bytes included."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.rate: float | None = None
        self.down = 0  # bytes relayed from server to client (headers included)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while data := src.recv(65536 if not self.rate else 16384):
                dst.sendall(data)
                if down:
                    self.down += len(data)
                if down and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            for s in self.conns:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.shutdown(socket.SHUT_RDWR)  # wakes the relay thread blocked on it (close alone would not)
                    s.close()
                except OSError:
                    pass
            self.conns.clear()

    def close(self) -> None:
        self.cut()
        self.sock.close()


def _serve(catalog_settings, port: int, relay: Relay) -> ApiServer:
    return ApiServer(catalog_settings, port).start(LANDSURF_PUBLIC_URL=relay.url,
                                                   LANDSURF_DOWNLOADS_REQUIRE_TOKEN="true")


def _sent(server: ApiServer, token: str) -> int:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    return int(sum(float(v) for v in re.findall(r'^landsurf_download_bytes_total\{kind="file"\} (\S+)$', text,
                                                 re.M)))


def _verified(out: Path, items: list[dict]) -> int:
    n = 0
    for item in items:
        for key in ASSETS:
            asset = item["assets"][key]
            path = out / S2_L2A / item["id"] / urlsplit(asset["href"]).path.rsplit("/", 1)[1]
            algo, digest = parse_checksum(asset["file:checksum"])
            assert hashlib.new(algo, path.read_bytes()).hexdigest() == digest, path
            n += 1
    return n


def _size_of_parts(out: Path) -> int:
    total = 0
    for p in out.rglob("*.part"):
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # renamed to its final name meanwhile
            pass
    return total


@pytest.fixture(scope="module")
def relayed(catalog_settings, published, operator_token):
    port = free_port()
    relay = Relay(port)
    holder = {"server": _serve(catalog_settings, port, relay)}
    yield relay, holder, port
    holder["server"].stop()
    relay.close()


def test_interrupted_download_resumes_with_only_the_missing_bytes(catalog_settings, relayed, published_items,
                                                                   operator_token, tmp_path):
    relay, holder, port = relayed
    with session(catalog_settings) as conn:
        add_user(conn, "bulk")
        token = issue_token(conn, "bulk", 10)[0]
        from catalog.auth import token_hash
        conn.execute("UPDATE landsurf.user_tokens SET created = now() - interval '6 days', "
                     "expires = now() + interval '4 days' WHERE token_sha256 = %s", (token_hash(token),))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    out = tmp_path / "out"
    query = Query(collections=[S2_L2A], tiles=["31TCH"], datetime="2024-06-01/2024-06-30", max_cloud=100)
    options = DownloadOptions(parallel=1, retries=1, assets=ASSETS, progress=False, backoff_s=0.1, page_size=2)
    sizes = {(i["id"], k): i["assets"][k]["file:size"] for i in published_items for k in ASSETS}
    quiet = Console(file=open("/dev/null", "w"))

    relay.rate = 400_000  # bytes/s: a file takes about a second, so the cut lands inside one
    result: dict = {}

    def first_run() -> None:
        try:
            result["report"] = run(relay.url, query, out, options, TokenSource(token_file=token_file), quiet)
        except BaseException as exc:  # noqa: BLE001 - shown by the test
            result["error"] = exc

    worker = threading.Thread(target=first_run)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.is_alive():
        if _size_of_parts(out) >= 65536 and list(out.rglob("*.tif")):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"no partial file appeared: {result}")
    holder["server"].proc.kill()  # the server dies mid-file…
    relay.cut()  # …and with it every byte still on the way
    holder["server"].proc.wait(10)
    worker.join(120)
    first = result["report"]
    assert first.failed and first.products == 6 and first.token_refreshes == 1
    new_token = token_file.read_text().strip()
    assert new_token != token and new_token.startswith("lsu_"), "the refreshed token is written back"
    parts = {p: p.stat().st_size for p in out.rglob("*.part")}
    assert len(parts) == 1 and 0 < next(iter(parts.values())), (first.summary(), sorted(p.name for p in out.rglob("*")))
    complete = {p for p in out.rglob("*.tif")}
    assert complete, "files before the cut are complete"

    relay.rate = None
    holder["server"] = _serve(catalog_settings, port, relay)
    second = run(relay.url, query, out, options, TokenSource(token_file=token_file), quiet)
    assert not second.failed, second.summary()
    assert second.files_skipped == len(complete) and second.files_fetched == len(sizes) - len(complete)
    missing = sum(sizes.values()) - sum(p.stat().st_size for p in complete) - sum(parts.values())
    assert second.bytes_resumed == sum(parts.values())
    assert second.bytes_received == missing
    assert _sent(holder["server"], operator_token) == missing, "the server sent only the missing bytes"
    assert _verified(out, published_items) == len(sizes)
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.part.json"))
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(r["item"], r["asset"]) for r in lines if r["status"] == "fetched" and r["verified"]} == set(sizes)
    assert all((out / S2_L2A / i["id"] / f"{i['id']}.json").exists() for i in published_items)

    # a third run: nothing to fetch, nothing hashed; then one file corrupted on disk is found and fetched again
    before = _sent(holder["server"], operator_token)
    third = run(relay.url, query, out, options, TokenSource(token_file=token_file), quiet)
    assert (third.files_skipped, third.files_fetched, third.bytes_received) == (len(sizes), 0, 0)
    victim = next(iter(complete))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    fourth = run(relay.url, query, out, options, TokenSource(token_file=token_file), quiet)
    assert not fourth.failed and fourth.corrupt_refetched == 1 and fourth.files_fetched == 1
    assert fourth.bytes_received == len(data) == _sent(holder["server"], operator_token) - before
    assert _verified(out, published_items) == len(sizes)


class ForeignStac(BaseHTTPRequestHandler):
    """Another STAC API: POST /search answers page 1, `next` links are GETs; no filter, no tokens."""

    items: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def _page(self, n: int) -> None:
        items = self.items[2 * n: 2 * n + 2]
        links = [{"rel": "next", "href": f"http://{self.headers['Host']}/search?page={n + 1}", "method": "GET",
                  "type": "application/geo+json"}] if 2 * n + 2 < len(self.items) else []
        body = json.dumps({"type": "FeatureCollection", "features": items, "links": links}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/geo+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._page(0)

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/search":
            self.send_error(404)
            return
        self._page(int(parse_qs(urlsplit(self.path).query)["page"][0]))


def test_a_failed_product_does_not_stop_the_batch_and_the_exit_code_says_so(catalog_settings, api, published_items,
                                                                            tmp_path):
    items = json.loads(json.dumps(published_items[:5]))
    broken = items[2]
    broken["assets"]["FRE_B8"]["href"] = broken["assets"]["FRE_B8"]["href"].replace(".tif", "-gone.tif")
    ForeignStac.items = items
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForeignStac)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "foreign"
        done = run_cli("download", "--api", f"http://127.0.0.1:{server.server_address[1]}", "--collection", S2_L2A,
                       "--asset", "FRE_B4", "--asset", "FRE_B8", "--out", str(out), "--retries", "0", "--quiet",
                       env=env_for(catalog_settings))
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4/5 products complete and verified" in done.stdout, done.stdout
    assert f"FAILED {broken['id']} FRE_B8: HTTP 404" in done.stdout
    report = json.loads((out / "last-run.json").read_text())
    assert report["products_failed"] == [broken["id"]] and report["files_fetched"] == 9
    assert _verified(out, [i for i in items if i is not broken]) == 8


def test_rate_limits_and_a_refused_token_are_waited_out_and_refreshed(catalog_settings, published_items,
                                                                      operator_token, tmp_path):
    """A server allowing 4 downloads per second (bursts of 2, one at a time per user) and a token command whose
    first token is refused: the client honours 429 + Retry-After, gets a new token on the 401, and completes."""
    port = free_port()
    server = ApiServer(catalog_settings, port).start(
        LANDSURF_PUBLIC_URL=f"http://127.0.0.1:{port}",
        LANDSURF_DOWNLOADS_REQUIRE_TOKEN="true", LANDSURF_DOWNLOAD_RATE="4", LANDSURF_DOWNLOAD_BURST="2",
        LANDSURF_DOWNLOAD_CONCURRENCY="1", LANDSURF_TOKEN_CACHE_S="0")
    try:
        with session(catalog_settings) as conn:
            add_user(conn, "limited")
            good = tmp_path / "good"
            good.write_text(issue_token(conn, "limited", 1)[0])
        used = tmp_path / "used"
        command = f"sh -c 'if [ -e {used} ]; then cat {good}; else touch {used}; echo lsu_not_a_token; fi'"
        out = tmp_path / "limited"
        report = run(server.url, Query(collections=[S2_L2A], ids=[i["id"] for i in published_items[:3]]), out,
                     DownloadOptions(parallel=4, retries=6, assets=ASSETS, progress=False, backoff_s=0.2),
                     TokenSource(command=command), Console(file=open("/dev/null", "w")))
        assert not report.failed, report.summary()
        assert report.files_fetched == 6 and used.exists()
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
        limited = sum(float(v) for v in re.findall(r'^landsurf_http_requests_total\{[^}]*route="/download[^"]*"'
                                                    r'[^}]*status="429"[^}]*\} (\S+)$', metrics, re.M))
        refused = sum(float(v) for v in re.findall(r'^landsurf_http_requests_total\{[^}]*route="/download[^"]*"'
                                                    r'[^}]*status="401"[^}]*\} (\S+)$', metrics, re.M))
        assert limited >= 1 and refused >= 1, [m for m in metrics.splitlines() if "download" in m]
        assert _verified(out, published_items[:3]) == 6
    finally:
        server.stop()


def test_a_file_server_without_range_sends_the_whole_file_and_it_is_still_verified(tmp_path):
    """Python's http.server ignores Range (200 to a resume): the part is rewritten from byte 0, then verified."""
    import functools
    import os
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(300_000)
    (www / "a.bin").write_bytes(data)
    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    href = f"http://127.0.0.1:{files.server_address[1]}/a.bin"
    checksum = "1220" + hashlib.sha256(data).hexdigest()
    ForeignStac.items = [{"type": "Feature", "stac_version": "1.1.0", "id": "x1", "collection": "c", "geometry": None,
                          "properties": {"datetime": "2024-06-01T00:00:00Z"}, "links": [],
                          "assets": {"data": {"href": href, "file:checksum": checksum, "file:size": len(data)}}}]
    stac = ThreadingHTTPServer(("127.0.0.1", 0), ForeignStac)
    for server in (files, stac):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "o"
        part = out / "c" / "x1" / "a.bin.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"not the start of the file" * 400)
        (part.parent / "a.bin.part.json").write_text(json.dumps({"href": href, "checksum": checksum}))
        report = run(f"http://127.0.0.1:{stac.server_address[1]}", Query(), out,
                     DownloadOptions(progress=False, retries=1, backoff_s=0.05), TokenSource(),
                     Console(file=open("/dev/null", "w")))
    finally:
        files.shutdown()
        stac.shutdown()
    assert not report.failed, report.summary()
    assert (out / "c" / "x1" / "a.bin").read_bytes() == data and not part.exists()
    assert report.bytes_received == len(data) and report.bytes_resumed == 10_000


def test_query_options_checksums_and_client_side_filter():
    from processing.download_client import DownloadError, parse_datetime, repr_digest

    data = b"landsurf"
    assert parse_checksum("1220" + hashlib.sha256(data).hexdigest()) == ("sha256", hashlib.sha256(data).hexdigest())
    assert parse_checksum("1340" + hashlib.sha512(data).hexdigest())[0] == "sha512"
    assert parse_checksum("d50110" + hashlib.md5(data).hexdigest()) == ("md5", hashlib.md5(data).hexdigest())
    assert parse_checksum("1220abcd") is None and parse_checksum("zz") is None and parse_checksum(None) is None
    assert repr_digest("sha-512=:AAAA:, sha-256=:" + __import__("base64").b64encode(
        hashlib.sha256(data).digest()).decode() + ":") == ("sha256", hashlib.sha256(data).hexdigest())
    assert parse_datetime("2024-06-03") == "2024-06-03T00:00:00Z/2024-06-03T23:59:59.999Z"
    assert parse_datetime("../2024-06-30") == "../2024-06-30T23:59:59.999Z"
    for bad in ("2024-13-01", "a/b/c"):
        with pytest.raises(DownloadError):
            parse_datetime(bad)
    with pytest.raises(DownloadError, match="MGRS"):
        Query(tiles=["31XYZW"]).body()
    query = Query(tiles=["T31TCH"], max_cloud=20)
    assert query.body()["filter"]["args"][1]["args"][1] == ["MGRS-31TCH"]
    keep = {"properties": {"eo:cloud_cover": 10, "mgrs:utm_zone": 31, "mgrs:latitude_band": "T",
                           "mgrs:grid_square": "CH"}}
    assert query.matches(keep)
    assert not query.matches({"properties": {**keep["properties"], "eo:cloud_cover": 30}})
    assert not query.matches({"properties": {"grid:code": "MGRS-31TDH"}})
    assert query.matches({"properties": {"s2:mgrs_tile": "31TCH"}})

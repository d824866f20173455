"""The live app fuzzed from its own OpenAPI documents: no 5xx, no dropped connection, no slow answer, bounded
memory — for every route there is today and every route added later, without anyone listing them.

Two fuzzers, both against the session's real server: schemathesis (from PyPI, a fixed seed and a bounded
number of examples per operation), and a walker that gives every declared parameter of every operation the
hostile values attackers try first (oversized, NUL, negative, huge numbers and lists, deep nesting).
"""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

SEED = 20261202
HOSTILE = {
    "oversized": "x" * 20_000,
    "nul": "a\x00b",
    "negative": "-1",
    "huge-number": "1e308",
    "huge-list": ",".join(["1"] * 3000),
    "deep-nesting": "[" * 400 + "]" * 400,
}
MEMORY_BOUND_MB = 2048  # docs/operations.md, "Limits": slots × the largest image, plus the process itself


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


# The STAC API gets every phase (its coverage phase walks each parameter's boundary values); the tiler's 69
# operations get the examples and fuzzing phases (its coverage phase alone takes ~4 min here; the walker below
# gives each of its parameters the hostile values instead).
@pytest.mark.parametrize("schema,examples,phases", [("/api", 5, "examples,coverage,fuzzing"),
                                                    ("/raster/api", 5, "examples,fuzzing")])
def test_schemathesis_finds_no_server_error(api, catalog_settings, tmp_path, schema, examples, phases):
    report = tmp_path / "junit.xml"
    limit_s = catalog_settings.statement_timeout_ms / 1000 + 5
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", api.url + schema,
         "--checks", "not_a_server_error", "--max-examples", str(examples), "--seed", str(SEED),
         "--phases", phases,
         "--max-response-time", str(limit_s), "--request-timeout", str(limit_s + 10), "--workers", "2",
         "--suppress-health-check", "all", "--exclude-deprecated",
         "--report", "junit", "--report-junit-path", str(report)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    cases = list(ET.parse(report).getroot().iter("testcase"))
    assert len(cases) >= 20, f"only {len(cases)} operations fuzzed"
    problems = [(case.get("name"), child.tag, (child.get("message") or child.text or "")[:3000])
                for case in cases for child in case if child.tag in ("failure", "error")]
    # schemathesis itself sometimes fails to compile a generator for a deep schema (a CPython "AST constructor
    # recursion depth" error, on our side of the wire): that operation is then walked by the test below
    internal = [p for p in problems if p[1] == "error" and "AST constructor" in p[2]]
    assert not [p for p in problems if p not in internal], problems
    assert api.proc.poll() is None, "the API process died under the fuzzer"
    assert _peak_rss_mb(api.proc.pid) < MEMORY_BOUND_MB


def _operations(api) -> list[tuple[str, str, list[dict]]]:
    found = []
    for prefix in ("", "/raster"):
        doc = httpx.get(f"{api.url}{prefix}/api", timeout=30).json()
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if method.upper() in ("GET", "POST") and isinstance(op, dict):
                    found.append((method.upper(), prefix + path, op.get("parameters", [])))
    return found


def _plausible(path: str, item: dict) -> str:
    """A path whose other parameters are real, so that each hostile value reaches deep into the route."""
    values = {"collection_id": item["collection"], "item_id": item["id"], "tileMatrixSetId": "WebMercatorQuad",
              "z": "14", "x": "1", "y": "1",  # a tile far from the data: each call costs a look-up, not a render
              "format": "png", "lon": "0.55", "lat": "43.3", "scale": "1",
              "search_id": "0", "minx": "0.5", "miny": "43.2", "maxx": "0.6", "maxy": "43.3", "width": "64",
              "height": "64", "path": "x.tif", "algorithm": "hillshade", "colorMapId": "viridis"}
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: values.get(m.group(1), "x"), path)


def test_every_parameter_of_every_route_survives_hostile_values(api, published_items):
    item = published_items[0]
    limit_s = 15.0
    # every declared parameter of every operation gets one hostile value (rotating through the list), and
    # every parameter name gets all of them once: ~1,700 requests instead of 7,700, each kind still everywhere
    requests, named = [], set()
    kinds = list(HOSTILE)
    n = 0
    for method, path, params in _operations(api):
        for param in params:
            name, where = param.get("name"), param.get("in")
            if where not in ("path", "query"):
                continue
            labels = kinds if (name, where) not in named else [kinds[n % len(kinds)]]
            named.add((name, where))
            n += 1
            for label in labels:
                value = HOSTILE[label]
                if where == "path":
                    target = re.sub(r"{%s(?::\w+)?}" % re.escape(name), quote(value, safe=""), path)
                    requests.append((method, _plausible(target, item), {}, (path, name, label)))
                else:
                    requests.append((method, _plausible(path, item), {name: value}, (path, name, label)))
    assert len(requests) > 500, len(requests)

    def call(request):
        method, url, params, what = request
        start = time.monotonic()
        try:
            r = client.request(method, api.url + url, params=params, json={} if method == "POST" else None)
        except httpx.HTTPError as exc:
            return what, f"{type(exc).__name__}: {exc}", time.monotonic() - start
        return what, r.status_code, time.monotonic() - start

    # one client for all requests: a new one per request spent ~35 ms of this process's CPU building its TLS
    # context, on the 2 cores the server needs; no cookie is kept, so each request stands alone as before
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    with httpx.Client(timeout=limit_s + 10, cookies=no_cookies) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, requests))
    bad = [(what, status) for what, status, _ in results if not isinstance(status, int) or status >= 500]
    slow = [(what, round(took, 1)) for what, _, took in results if took > limit_s]
    assert not bad, bad[:20]
    assert not slow, slow[:20]
    assert api.proc.poll() is None
    assert _peak_rss_mb(api.proc.pid) < MEMORY_BOUND_MB

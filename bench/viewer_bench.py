"""The viewer's first mosaic paint in Chromium (issue 11): from navigating to /viewer/ to the first monthly L3A
mosaic drawn, against MapLibre alone drawing the same tiles, in the same run.

    .venv/bin/python -m bench.viewer_bench                   # tile 31TCH, 2 months, 1098 px, 10 rounds
    .venv/bin/python -m bench.viewer_bench --rounds 5 --size 512

- the catalog: an embedded PostgreSQL, three L2As per month (two months) of tile 31TCH generated and ingested by
  the real pipeline (`processing.demo.publish_series`), then each month's L3A made and published by the code of
  `landsurf derive` (`processing.derive.run_request`); `landsurf serve` (as `tests/conftest.py` runs it) answers the browser;
- the browser: Debian's `chromium`, driven by Playwright's Python package (never `playwright install`), a fresh
  context per page (empty HTTP cache), viewport 1280 × 800 as in tests/catalog/test_viewer.py;
- **viewer**: open `/viewer/?month=latest` — the link `landsurf demo` prints, which draws the newest L3A month
  as soon as the page has read the catalog (the collections, the colormaps, the L3A months) — and wait for the
  map's first `idle` with the month's sources present and every tile loaded; times are the page's own
  `performance.now()` (milliseconds from the navigation's start), taken by a script injected before the page's;
- **baseline**: a page of the same origin (answered by Playwright's router: the server has no such page) that
  creates one MapLibre map of the same size at the same view with the same raster sources (read from the
  viewer's map in the warm-up) and waits for the same `idle`: the unavoidable part — MapLibre's start, the
  same tile requests rendered by the same tiler, their decoding and drawing — without the viewer's start and
  catalog reads. Its tile requests equal the viewer's (checked);
- every round checks that the painted map is not blank (the middle of the screenshot varies), that every tile
  answered 200 and that the page met no console error; rounds alternate which page goes first. Writes
  bench/out/viewer.json and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 60_000
TILE_MARK = "/tiles/WebMercatorQuad/"

# Injected before the page's own scripts (Playwright's init script: not subject to the page's CSP): the page's own
# clock (`performance.now()`, ms from the navigation's start) when MapLibre's style loaded, when the viewer said it
# was ready, and at the first `idle` with the month's sources present and every tile loaded.
TIMES = """(() => {
  const t = {};
  window.benchTimes = t;
  const hook = () => {
    const map = (window.landsurfViewer && window.landsurfViewer.map) || window.benchMap;
    if (!map) { requestAnimationFrame(hook); return; }
    if (map.loaded()) t.mapLoad = performance.now(); else map.once('load', () => { t.mapLoad = performance.now(); });
    const done = () => {
      const ours = Object.keys(map.getStyle().sources).filter((s) => s.startsWith('l3a-'));
      if (ours.length && map.loaded() && map.areTilesLoaded()) { t.painted = performance.now(); map.off('idle', done); }
    };
    map.on('idle', done);
  };
  requestAnimationFrame(hook);
  const ready = () => {
    if (document.body && document.body.dataset.ready === 'true') t.ready = performance.now();
    else requestAnimationFrame(ready);
  };
  requestAnimationFrame(ready);
})();"""

BASELINE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<link rel="stylesheet" href="vendor/maplibre-gl.css">
<style>html, body {{ margin: 0; }} #map {{ position: absolute; left: {left}px; top: {top}px; width: {width}px;
height: {height}px; }}</style></head>
<body><div id="map"></div>
<script type="module">
import {{ Map }} from "./vendor/maplibre-gl.mjs";
const spec = {spec};
const layers = [{{ id: "background", type: "background", paint: {{ "background-color": "#dfe6e9" }} }}]
  .concat(Object.keys(spec.sources).map((id) => ({{ id, type: "raster", source: id,
                                                  paint: {{ "raster-fade-duration": 0 }} }})));
window.benchMap = new Map({{ container: "map", style: {{ version: 8, sources: spec.sources, layers }},
                             center: spec.center, zoom: spec.zoom, attributionControl: false }});
</script></body></html>
"""


def _publish(settings, tiles: list[str], months: list[str], size: int) -> list[str]:
    """L2As of each tile-month through the ingest pipeline, then the L3A of each: the published L3A ids."""
    from processing.demo import publish_series
    from processing.derive import DerivedRequest, run_request

    made = []
    for t, tile in enumerate(tiles):
        for m, month in enumerate(months):
            year, number = (int(v) for v in month.split("-"))
            for done in publish_series(settings, tile=tile, start=date(year, number, 5), count=3, every_days=5,
                                       size=size, seed=10 * t + m, work=settings.home_dir / "deliveries"):
                assert done.status == "published", done
            outcome = run_request(settings, DerivedRequest("l3a", tile, month=month))
            print(f"L3A {tile} {month}: {outcome}", flush=True)
            made.append(str(outcome))
    return made


class Page:
    """One page in a fresh context, with its problems and its tile responses recorded."""

    def __init__(self, browser, url: str, route: tuple[str, str] | None = None) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.add_init_script(TIMES)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.tiles: list[tuple[int, str]] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", self._response)
        if route is not None:
            pattern, html = route
            self.page.route(pattern, lambda r: r.fulfill(status=200, content_type="text/html", body=html))
        self.url = url

    def _response(self, r) -> None:
        if r.status >= 400:
            self.problems.append(f"HTTP {r.status}: {r.url}")
        if TILE_MARK in r.url:
            self.tiles.append((r.status, r.url))

    def times(self) -> dict[str, float]:
        """Once the month is painted: the page's times (ms from the navigation's start)."""
        self.page.wait_for_function("() => window.benchTimes && window.benchTimes.painted", timeout=TIMEOUT_MS)
        return self.page.evaluate("() => window.benchTimes")

    def check_not_blank(self) -> float:
        """The standard deviation of the middle of the map's screenshot (a flat grey background is ~0)."""
        from rasterio.io import MemoryFile

        shot = self.page.locator("#map").screenshot()
        if os.environ.get("LANDSURF_BENCH_SHOTS"):  # to look at what was painted
            Path(os.environ["LANDSURF_BENCH_SHOTS"]).write_bytes(shot)
        with MemoryFile(shot) as f, f.open() as png:
            rgb = png.read()[:3].astype("float32")
        h, w = rgb.shape[1:]
        return float(rgb[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3].std())

    def resource_ms(self) -> list[float]:
        """The browser's duration of each tile request (Resource Timing), milliseconds."""
        return self.page.evaluate(
            "(mark) => performance.getEntriesByType('resource').filter((e) => e.name.includes(mark))"
            ".map((e) => e.duration)", TILE_MARK)

    def close(self) -> None:
        self.context.close()


def viewer_round(browser, api_url: str) -> tuple[dict, dict]:
    """/viewer/?month=latest (the link `landsurf demo` prints) from navigation to the month painted; the view and
    the sources it drew (for the baseline)."""
    p = Page(browser, api_url + "/viewer/?month=latest")
    try:
        p.page.goto(p.url)
        t = p.times()
        view = p.page.evaluate("""() => {
          const map = window.landsurfViewer.map, style = map.getStyle(), box = map.getContainer().getBoundingClientRect();
          const sources = Object.fromEntries(Object.entries(style.sources).filter(([id]) => id.startsWith('l3a-')));
          return { center: map.getCenter().toArray(), zoom: map.getZoom(), sources,
                   month: document.getElementById('month').value,
                   box: { left: box.left, top: box.top, width: box.width, height: box.height } };
        }""")
        std = p.check_not_blank()
        durations = p.resource_ms()
        assert view["month"], "no month was opened"
        assert p.tiles and all(s == 200 for s, _ in p.tiles), p.tiles
        assert std > 10, f"the month was painted flat (std {std:.1f})"
        assert not p.problems, p.problems
        return {"map_load_ms": t["mapLoad"], "ready_ms": t["ready"], "painted_ms": t["painted"],
                "month": view["month"], "tiles": len(p.tiles), "tile_urls": sorted(u for _, u in p.tiles),
                "tile_ms_median": statistics.median(durations), "tile_ms_max": max(durations),
                "middle_std": std}, view
    finally:
        p.close()


def baseline_round(browser, api_url: str, view: dict) -> dict:
    """MapLibre alone on a page of the same origin, same size, view and raster sources as the viewer's month."""
    box = view["box"]
    html = BASELINE.format(left=box["left"], top=box["top"], width=box["width"], height=box["height"],
                           spec=json.dumps({"sources": view["sources"], "center": view["center"],
                                            "zoom": view["zoom"]}))
    p = Page(browser, api_url + "/viewer/bench-baseline.html", ("**/viewer/bench-baseline.html", html))
    try:
        p.page.goto(p.url)
        t = p.times()
        std = p.check_not_blank()
        durations = p.resource_ms()
        assert p.tiles and all(s == 200 for s, _ in p.tiles), p.tiles
        assert std > 10, f"the baseline painted flat (std {std:.1f})"
        assert not p.problems, p.problems
        # (its `load` waits for the first complete render, tiles included: not reported)
        return {"painted_ms": t["painted"], "tiles": len(p.tiles), "tile_urls": sorted(u for _, u in p.tiles),
                "tile_ms_median": statistics.median(durations), "tile_ms_max": max(durations), "middle_std": std}
    finally:
        p.close()


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=1098, help="pixels a side of the generated L2As (20 m bands)")
    parser.add_argument("--tiles", default="31TCH", help="comma-separated; the generator's footprints are small "
                        "and 100 km apart, so one tile fills the view as a real 110 km L3A tile does")
    parser.add_argument("--months", default="2024-03,2024-07")
    parser.add_argument("--out", default="viewer.json", help="file name under bench/out/")
    args = parser.parse_args()

    os.environ["LANDSURF_PROCESSING_AUTO_DERIVE"] = "false"  # only the L3As asked for here
    from playwright.sync_api import sync_playwright

    from catalog.embedded import EmbeddedCluster
    from catalog.settings import CatalogSettings
    from catalog.viewer import is_built
    from processing.setup import prepare_database
    from tests.conftest import ApiServer, free_port

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing (the `chromium` package)"
    assert is_built(), "the viewer is not built: run `make viewer`"
    work = Path(tempfile.mkdtemp(prefix="landsurf-viewerbench-"))
    port = free_port()
    settings = CatalogSettings(home=work / "home", public_url=f"http://127.0.0.1:{port}", port=port)
    cluster = EmbeddedCluster(settings)
    api = None
    try:
        cluster.start()
        prepare_database(settings)
        started = time.perf_counter()
        products = _publish(settings, args.tiles.split(","), args.months.split(","), args.size)
        setup_s = time.perf_counter() - started
        api = ApiServer(settings, port).start()
        rounds, loads = [], []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable)
            version = browser.version
            try:
                _, view = viewer_round(browser, api.url)  # warm-up: the tiler's caches, the view for the baseline
                baseline_round(browser, api.url, view)
                for r in range(args.rounds):
                    loads.append(os.getloadavg()[0])
                    if r % 2 == 0:
                        v, _ = viewer_round(browser, api.url)
                        b = baseline_round(browser, api.url, view)
                    else:
                        b = baseline_round(browser, api.url, view)
                        v, _ = viewer_round(browser, api.url)
                    assert v["tile_urls"] == b["tile_urls"], "the baseline drew other tiles than the viewer"
                    rounds.append({"order": ["viewer", "baseline"] if r % 2 == 0 else ["baseline", "viewer"],
                                   "viewer": {k: x for k, x in v.items() if k != "tile_urls"},
                                   "baseline": {k: x for k, x in b.items() if k != "tile_urls"},
                                   "ratio": v["painted_ms"] / b["painted_ms"]})
                    print(f"round {r}: viewer ready {v['ready_ms']:.0f} ms, painted {v['painted_ms']:.0f} ms "
                          f"({v['tiles']} tiles); baseline painted {b['painted_ms']:.0f} ms", flush=True)
            finally:
                browser.close()

        def stats(values: list[float]) -> dict[str, float]:
            return {"median": statistics.median(values), "p95": _p95(values), "min": min(values), "max": max(values)}

        summary = {
            "viewer: navigation → first mosaic painted": stats([r["viewer"]["painted_ms"] for r in rounds]),
            "baseline: navigation → the same tiles painted by MapLibre alone": stats(
                [r["baseline"]["painted_ms"] for r in rounds]),
            "viewer: navigation → MapLibre's blank style loaded": stats([r["viewer"]["map_load_ms"] for r in rounds]),
            "viewer: navigation → page ready (catalog read, month's layers added)": stats(
                [r["viewer"]["ready_ms"] for r in rounds]),
            "viewer: tile request, browser's duration (median of the paint's tiles)": stats(
                [r["viewer"]["tile_ms_median"] for r in rounds]),
        }
        ratios = [r["ratio"] for r in rounds]
        result = {"command": "python -m bench.viewer_bench " + " ".join(sys.argv[1:]),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_avg_per_round": loads, "load_avg_end": os.getloadavg()},
                  "chromium": version, "viewport": VIEWPORT, "products": products, "size": args.size,
                  "setup_s": setup_s, "view": {k: view[k] for k in ("center", "zoom", "box")},
                  # what the month was drawn from (items' tiles, or a registered mosaic's), the origin left out
                  "sources": json.loads(json.dumps(view["sources"]).replace(api.url, "")),
                  "tiles_per_paint": rounds[0]["viewer"]["tiles"], "rounds": rounds, "summary_ms": summary,
                  "ratio_viewer_to_baseline": {"median": statistics.median(ratios), "min": min(ratios),
                                               "max": max(ratios), "rounds": ratios}}
        OUT.mkdir(exist_ok=True)
        (OUT / args.out).write_text(json.dumps(result, indent=2))
        print("| ms (from the navigation's start) | median | p95 | min–max |")
        print("|---|---|---|---|")
        for k, s in summary.items():
            print(f"| {k} | {s['median']:.0f} | {s['p95']:.0f} | {s['min']:.0f}–{s['max']:.0f} |")
        q = result["ratio_viewer_to_baseline"]
        print(f"viewer ÷ baseline, per round: median {q['median']:.2f}, min–max {q['min']:.2f}–{q['max']:.2f}; "
              f"{result['tiles_per_paint']} tiles per paint; load average {', '.join(f'{x:.1f}' for x in loads)}")
    finally:
        if api:
            api.stop()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

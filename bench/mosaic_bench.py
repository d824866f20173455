"""Monthly L3A mosaic tiles (issue 11 item 2): the app against rio-tiler reading the same COGs, and the small
zooms from the precomputed overview.

    .venv/bin/python -m bench.mosaic_bench                        # 2 tiles × 3 L2As at 2196 px, 5 rounds
    .venv/bin/python -m bench.mosaic_bench --size 1098 --rounds 3 # quicker
    .venv/bin/python -m bench.mosaic_bench --json docs/bench/mosaic.json

Setup (outside the clock): an embedded PostgreSQL in a temporary home; for tiles 31TCH and 31TDH, three synthetic
L2As of one month each (`ingest.generate`, `--size` 10 m pixels a side), their COGs (`ingest.cog.write_cogs`) and
the month's L3A synthesis (`processing.l3a.synthesize`: the real product, its ten FRC COGs with overviews),
published by `catalog.publish`; the month's mosaic registered and its overview built (`processing.mosaics`);
`landsurf serve` (1 uvicorn worker) on loopback.

* dynamic (z8–z14): for each zoom, `--tiles` tiles whose centres fall inside the products, asked as 256 px PNG
  `assets=FRC_B4,FRC_B3,FRC_B2&rescale=0,3000&nodata=-10000` of the month's registered search, one after the other
  over one keep-alive connection; the baseline is rio-tiler in this process on the same tiles: `mosaic_reader`
  (first-valid) over the month's items, each read with `rio_tiler.io.Reader` on the same files (the three bands),
  then the same rescale and PNG encoding. Rounds interleave the two (baseline first in even rounds); a round's
  figure per zoom is the median latency; reported: the median of the per-round ratios app/rio-tiler, min–max.
* overview (z0–z7): every tile of those zooms over the products, through the app, `--repeat` times each per round:
  p50/p95 latency and the answer's source (`X-Landsurf-Source`); for context, the floor (the same tiles read from
  the overview file in this process, rescaled, PNG) and the same tiles of an equivalent search without an overview
  (dynamic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path, PurePosixPath

import httpx
import morecantile

ROOT = Path(__file__).resolve().parents[1]
TILES = ("31TCH", "31TDH")
MONTH = "2024-04"
RENDER = {"assets": ["FRC_B4", "FRC_B3", "FRC_B2"], "rescale": "0,3000", "nodata": "-10000"}
TMS = morecantile.tms.get("WebMercatorQuad")


def make_products(settings, work: Path, size: int) -> list[dict]:
    """The month's L3A of each tile from three generated L2As, published."""
    from catalog.publish import publish_product
    from catalog.collections import S2_L3A
    from ingest.cog import write_cogs
    from ingest.generate import iter_series
    from ingest.muscate import read_l2a
    from ingest.settings import IngestSettings
    from processing.l3a import L3AParams, l3a_input, synthesis_date, synthesize
    from tests.catalog.test_viewer import _l3a_item

    params = L3AParams.load()
    year, number = (int(v) for v in MONTH.split("-"))
    items = []
    for k, tile in enumerate(TILES):
        started = time.perf_counter()
        inputs = []
        for made in iter_series(work / tile, tile, date(year, number, 5), date(year, number, 25), 10, seed=30 + k,
                                size=size, as_zip=False):
            cogs = write_cogs(read_l2a(Path(made.path)), work / "cogs" / made.product_id, threads="2")
            inputs.append(l3a_input(made.product_id, {key: f.path for key, f in cogs.files.items()}))
        staging = IngestSettings.staging_dir(settings) / f"bench-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        product = synthesize(inputs, synthesis_date(year, number), params, staging, scheduler="inline")
        relative = PurePosixPath(S2_L3A, product.tile, f"{year}", f"{number:02d}", product.product_id)
        item = _l3a_item(product, relative)
        assert publish_product(settings, item, product.folder, relative).outcome == "published"
        shutil.rmtree(staging, ignore_errors=True)
        items.append(item)
        print(f"{tile}: L3A {product.product_id} from {len(inputs)} L2As in {time.perf_counter() - started:.0f} s",
              flush=True)
    return items


def tiles_inside(items: list[dict], z: int, n: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """`n` tiles (with repeats when fewer exist) over the products: centres inside one, at small zooms any."""
    found: set[tuple[int, int, int]] = set()
    for _ in range(n * 40):
        item = rng.choice(items)
        w, s, e, nn = item["bbox"]
        t = TMS.tile(rng.uniform(w, e), rng.uniform(s, nn), z)
        cw, cs, ce, cn = TMS.bounds(t)
        if (w < (cw + ce) / 2 < e and s < (cs + cn) / 2 < nn) or ce - cw > (e - w) / 2:
            found.add((z, t.x, t.y))  # centre inside, or a tile wider than half the product: any over it
        if len(found) >= n:
            break
    out = sorted(found)
    return [out[i % len(out)] for i in range(n)]


def all_tiles(items: list[dict], z: int) -> list[tuple[int, int, int]]:
    out = set()
    for item in items:
        out |= {(z, t.x, t.y) for t in TMS.tiles(*item["bbox"], [z])}
    return sorted(out)


class Direct:
    """rio-tiler alone: first-valid `mosaic_reader` over the items' files, rescale, PNG."""

    def __init__(self, settings, items: list[dict]) -> None:
        from catalog.store import AssetStore

        store = AssetStore.from_settings(settings)
        self.assets = [{a: str(store.path(item["assets"][a]["href"])) for a in RENDER["assets"]} for item in items]
        self.bboxes = [item["bbox"] for item in items]

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        import rasterio
        from rio_tiler.errors import EmptyMosaicError, NoAssetFoundError
        from rio_tiler.io import Reader
        from rio_tiler.models import ImageData
        from rio_tiler.mosaic import mosaic_reader

        from catalog.tiles import GDAL_ENV

        w, s, e, n = TMS.bounds(morecantile.Tile(x, y, z))
        under = [files for files, b in zip(self.assets, self.bboxes) if b[0] < e and w < b[2] and b[1] < n and s < b[3]]
        if not under:
            return None

        def read(files: dict, x: int, y: int, z: int) -> ImageData:
            parts = []
            for asset in RENDER["assets"]:
                with Reader(files[asset]) as src:
                    parts.append(src.tile(x, y, z, nodata=-10000))
            return ImageData.create_from_list(parts)

        with rasterio.Env(**GDAL_ENV):
            try:
                img, _ = mosaic_reader(under, read, x, y, z)
            except (EmptyMosaicError, NoAssetFoundError):
                return None
        img.rescale(in_range=((0, 3000),))
        return img.render(img_format="PNG")


class OverviewFloor:
    """The overview's own cost, in this process: the tile read from the file as the tiler reads it, rescale, PNG."""

    def __init__(self, settings, relpath: str) -> None:
        import rasterio

        from catalog.store import AssetStore

        self.path = AssetStore.from_settings(settings).path(relpath)
        with rasterio.open(self.path) as ds:
            self.bands = tuple(ds.descriptions)

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        import rasterio
        from rio_tiler.errors import TileOutsideBounds

        from catalog.mosaics import read_overview_tile
        from catalog.tiles import GDAL_ENV

        with rasterio.Env(**GDAL_ENV):
            try:
                img = read_overview_tile(self.path, self.bands, TMS, x, y, z, assets=RENDER["assets"], nodata=-10000)
            except TileOutsideBounds:
                return None
        img.rescale(in_range=((0, 3000),))
        return img.render(img_format="PNG")


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2196, help="10 m pixels a side of each generated product")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=30, help="tiles per zoom (z8–z14) per round")
    parser.add_argument("--repeat", type=int, default=20, help="requests of each z0–z7 tile per round")
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench" / "mosaic.json"))
    args = parser.parse_args()

    from catalog.collections import S2_L3A
    from catalog.embedded import EmbeddedCluster
    from catalog.mosaics import MONTH_SORT, SOURCE_HEADER, month_interval
    from catalog.settings import CatalogSettings
    from processing.mosaics import build_overview
    from processing.setup import prepare_database
    from tests.conftest import ApiServer, free_port

    work = Path(tempfile.mkdtemp(prefix="landsurf-mosaicbench-"))
    port = free_port()
    settings = CatalogSettings(home=work / "home", public_url=f"http://127.0.0.1:{port}", port=port)
    cluster = EmbeddedCluster(settings)
    api = None
    try:
        cluster.start()
        prepare_database(settings)
        items = make_products(settings, work / "gen", args.size)
        started = time.perf_counter()
        built = build_overview(settings, S2_L3A, MONTH)
        build_s = time.perf_counter() - started
        print(f"overview: {built.status} {built.path} in {build_s:.1f} s", flush=True)
        api = ApiServer(settings, port).start()
        from catalog.auth import create_token
        from catalog.database import session

        with session(settings) as conn:
            token = create_token(conn, "bench", "admin")
        twin = httpx.post(f"{api.url}/raster/searches/register", headers={"Authorization": f"Bearer {token}"},
                          json={"collections": [S2_L3A], "datetime": month_interval(MONTH), "sortby": MONTH_SORT,
                                "metadata": {"name": "the same month, no overview"}}, timeout=30).json()["id"]
        client = httpx.Client(timeout=60)
        direct = Direct(settings, items)
        floor = OverviewFloor(settings, built.path)

        def app_tile(search: str, z: int, x: int, y: int) -> httpx.Response:
            r = client.get(f"{api.url}/raster/searches/{search}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                           params=RENDER)
            assert r.status_code in (200, 204), (r.status_code, r.text[:300])
            return r

        rng = random.Random(11)
        dyn_zooms = list(range(8, 15))
        sets = {z: tiles_inside(items, z, args.tiles, rng) for z in dyn_zooms}
        small = {z: all_tiles(items, z) for z in range(0, 8)}
        for z in dyn_zooms:  # warm both sides: files opened, page cache, the app's per-tile search cache
            for t in sets[z][:5]:
                direct.tile(*t)
                app_tile(built.search_id, *t)
        for z, ts in small.items():
            for t in ts:
                app_tile(built.search_id, *t)
                app_tile(twin, *t)

        rounds = []
        for r in range(args.rounds):
            rnd: dict = {"dynamic": {}, "overview": {}, "small_dynamic": {}, "overview_floor": {}}
            for z in dyn_zooms:
                order = ["direct", "app"] if r % 2 == 0 else ["app", "direct"]
                lat: dict[str, list[float]] = {}
                for side in order:
                    if side == "direct":
                        lat[side] = [timed(lambda t=t: direct.tile(*t)) for t in sets[z]]
                    else:
                        lat[side] = [timed(lambda t=t: app_tile(built.search_id, *t)) for t in sets[z]]
                rnd["dynamic"][z] = {s: {"p50": statistics.median(v), "p95": pct(v, 0.95)} for s, v in lat.items()}
                rnd["dynamic"][z]["ratio_p50"] = rnd["dynamic"][z]["app"]["p50"] / rnd["dynamic"][z]["direct"]["p50"]
            for z, ts in small.items():
                sources: set[str] = set()
                ov, dy = [], []
                for _ in range(args.repeat):
                    for t in ts:
                        started = time.perf_counter()
                        resp = app_tile(built.search_id, *t)
                        ov.append((time.perf_counter() - started) * 1000)
                        sources.add(resp.headers.get(SOURCE_HEADER, "?"))
                fl = [timed(lambda t=t: floor.tile(*t)) for _ in range(args.repeat) for t in ts]
                rnd["overview_floor"][z] = {"p50": statistics.median(fl), "p95": pct(fl, 0.95), "n": len(fl)}
                for t in ts:  # context: the dynamic mosaic of the same tiles, a few times
                    for _ in range(max(1, args.repeat // 5)):
                        dy.append(timed(lambda t=t: app_tile(twin, *t)))
                rnd["overview"][z] = {"p50": statistics.median(ov), "p95": pct(ov, 0.95), "n": len(ov),
                                      "tiles": len(ts), "sources": sorted(sources)}
                rnd["small_dynamic"][z] = {"p50": statistics.median(dy), "p95": pct(dy, 0.95), "n": len(dy)}
            rounds.append(rnd)
            print(f"round {r + 1}: " + ", ".join(f"z{z} ×{rnd['dynamic'][z]['ratio_p50']:.2f}" for z in dyn_zooms)
                  + " | overview p95 " + ", ".join(f"z{z} {rnd['overview'][z]['p95']:.0f} ms" for z in small),
                  flush=True)

        summary: dict = {"dynamic": {}, "overview": {}}
        all_ratios = []
        for z in dyn_zooms:
            ratios = [rnd["dynamic"][z]["ratio_p50"] for rnd in rounds]
            all_ratios += ratios
            summary["dynamic"][z] = {
                "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "app_p50_ms": statistics.median(rnd["dynamic"][z]["app"]["p50"] for rnd in rounds),
                "direct_p50_ms": statistics.median(rnd["dynamic"][z]["direct"]["p50"] for rnd in rounds),
                "app_p95_ms": statistics.median(rnd["dynamic"][z]["app"]["p95"] for rnd in rounds),
                "direct_p95_ms": statistics.median(rnd["dynamic"][z]["direct"]["p95"] for rnd in rounds),
                "distinct_tiles": len(set(sets[z]))}
        summary["dynamic_ratio_all_median"] = statistics.median(all_ratios)
        for z in small:
            p95s = [rnd["overview"][z]["p95"] for rnd in rounds]
            summary["overview"][z] = {
                "p50_ms": statistics.median(rnd["overview"][z]["p50"] for rnd in rounds),
                "p95_ms_median": statistics.median(p95s), "p95_ms_min": min(p95s), "p95_ms_max": max(p95s),
                "tiles": rounds[0]["overview"][z]["tiles"], "sources": rounds[0]["overview"][z]["sources"],
                "floor_p50_ms": statistics.median(rnd["overview_floor"][z]["p50"] for rnd in rounds),
                "floor_p95_ms": statistics.median(rnd["overview_floor"][z]["p95"] for rnd in rounds),
                "dynamic_p50_ms": statistics.median(rnd["small_dynamic"][z]["p50"] for rnd in rounds),
                "dynamic_p95_ms": statistics.median(rnd["small_dynamic"][z]["p95"] for rnd in rounds)}
        report = {
            "command": "python -m bench.mosaic_bench " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
            "data": {"tiles": list(TILES), "month": MONTH, "size_px_r1": args.size, "l2a_per_tile": 3,
                     "items": [i["id"] for i in items], "overview_build_s": build_s, "overview": built.path},
            "render": RENDER, "rounds": args.rounds, "tiles_per_zoom": args.tiles, "repeat": args.repeat,
            "summary": summary, "per_round": rounds}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print("\n| zoom | app p50 ms | rio-tiler p50 ms | ratio median [min–max] |\n|---|---|---|---|")
        for z, s in summary["dynamic"].items():
            print(f"| {z} | {s['app_p50_ms']:.1f} | {s['direct_p50_ms']:.1f} | **{s['ratio_median']:.2f}** "
                  f"[{s['ratio_min']:.2f}–{s['ratio_max']:.2f}] |")
        print("\n| zoom | tiles | source | p50 ms | p95 ms median [min–max] | floor p50 / p95 ms "
              "| dynamic p50 / p95 ms |")
        print("|---|---|---|---|---|---|---|")
        for z, s in summary["overview"].items():
            print(f"| {z} | {s['tiles']} | {','.join(s['sources'])} | {s['p50_ms']:.1f} | "
                  f"**{s['p95_ms_median']:.1f}** [{s['p95_ms_min']:.1f}–{s['p95_ms_max']:.1f}] | "
                  f"{s['floor_p50_ms']:.1f} / {s['floor_p95_ms']:.1f} | "
                  f"{s['dynamic_p50_ms']:.0f} / {s['dynamic_p95_ms']:.0f} |")
    finally:
        if api is not None:
            api.stop()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

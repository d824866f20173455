"""Time-lapse benchmark: rendering an animation against reading its frames' pixels alone, in the same run.

    .venv/bin/python -m bench.timelapse_bench                  # 12 products, 5 rounds, size 512
    .venv/bin/python -m bench.timelapse_bench --rounds 2       # a quick run

Inputs: synthetic L2As of tile 31TCH (`ingest.generate`, 1098 px a side at 10 m), their FRE_B4/B3/B2 written as
the COGs ingest publishes (`ingest.cog.write_cogs`), prepared once under /tmp/landsurf-timelapse-bench/ (kept for
reruns). The area is the inner 80 % of the products, the plan is made by `processing.timelapse.make_plan` from
item dicts as the search answers them (store hrefs replaced by the COG paths).

Phases, interleaved round by round (order rotating), each timed in this process:
* floor: the frames' pixels read and nothing else — `Reader.part` of the three bands of every item onto the
  frame grid (what any renderer of these frames must read);
* gif, webp, mp4: `processing.timelapse.render` into memory — the same reads, the stretch, the date label,
  the encoding.
Then, once, each format at the memory bound (`timelapse_max_pixels`, 40 Mpx: 100 frames of 632 px, the products
repeated on other dates) in its own process: peak RSS (VmHWM) over the process before rendering.
Writes docs/bench/timelapse.json; prints Markdown rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "timelapse.json"
DATA = Path("/tmp/landsurf-timelapse-bench")
KEYS = ("FRE_B4", "FRE_B3", "FRE_B2")


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _vmrss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def prepare(count: int) -> list[dict]:
    """Item dicts (id, datetime, cloud cover, COG paths as hrefs), the products made once."""
    done = DATA / f"items-{count}.json"
    if done.exists():
        return json.loads(done.read_text())
    from ingest.cog import write_cogs
    from ingest.generate import iter_series
    from ingest.muscate import read_l2a

    items = []
    for made in iter_series(DATA / "products", "31TCH", date(2024, 6, 1), date(2024, 6, 1) + timedelta(days=5 * (count - 1)),
                            5, size=1098, seed=7, as_zip=False):
        cogs = write_cogs(read_l2a(Path(made.path)), DATA / "cogs" / made.product_id, threads="1")
        items.append({"id": made.product_id, "properties": {"datetime": made.acquired.isoformat(),
                                                            "eo:cloud_cover": 0},
                      "assets": {k: {"href": str(cogs.files[k].path)} for k in KEYS}})
    done.write_text(json.dumps(items))
    return items


def _bbox(items: list[dict]) -> str:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(items[0]["assets"]["FRE_B4"]["href"]) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    dx, dy = (e - w) * 0.1, (n - s) * 0.1
    return f"{w + dx},{s + dy},{e - dx},{n - dy}"


def _plan(items: list[dict], fmt: str, size: int, frames: int | None = None):
    from processing.settings import ProcessingSettings
    from processing.timelapse import make_plan, parse_request

    settings = ProcessingSettings()
    if frames:  # the products repeated on later dates: as many frames as asked
        items = [{**it, "id": f"{it['id']}-{k}",
                  "properties": {**it["properties"], "datetime": (date(2024, 6, 1) + timedelta(days=k)).isoformat()
                                 + "T10:40:00Z"}}
                 for k, it in ((k, items[k % len(items)]) for k in range(frames))]
    days = sorted(i["properties"]["datetime"][:10] for i in items)
    req = parse_request({"bbox": _bbox(items), "datetime": f"{days[0]}/{days[-1]}", "format": fmt,
                         "size": str(size)}, settings)
    return make_plan(req, items, settings)


def floor(plan) -> None:
    import rasterio

    from processing.timelapse import _read, recipes

    recipe = recipes()[plan.request.collection]
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_CACHEMAX=64):
        for frame in plan.frames:
            for item in frame.items:
                for href in item.hrefs:
                    _read(recipe, href, plan)


def rendered(plan) -> int:
    from processing.timelapse import render

    buf = io.BytesIO()
    render(plan, str, buf)
    return len(buf.getvalue())


def peak(fmt: str, count: int) -> None:
    """Child process: one render at the memory bound; prints JSON."""
    items = prepare(count)
    plan = _plan(items, fmt, 632, frames=100)
    before = _vmrss_mb()
    start = time.perf_counter()
    size = rendered(plan)
    print(json.dumps({"format": fmt, "frames": len(plan.frames), "width": plan.width, "height": plan.height,
                      "seconds": time.perf_counter() - start, "bytes": size, "rss_before_mb": before,
                      "peak_mb": _vmhwm_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        peak(args.peak, args.count)
        return
    items = prepare(args.count)
    phases = ["floor", "gif", "webp", "mp4"]
    plans = {p: _plan(items, "gif" if p == "floor" else p, args.size) for p in phases}
    rendered(plans["gif"])  # warm: imports, fonts, GDAL's cache of headers
    times: dict[str, list[float]] = {p: [] for p in phases}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        order = phases[r % len(phases):] + phases[:r % len(phases)]
        for p in order:
            start = time.perf_counter()
            if p == "floor":
                floor(plans[p])
            else:
                sizes[p] = rendered(plans[p])
            times[p].append(time.perf_counter() - start)
    frames = len(plans["gif"].frames)
    result: dict = {"command": "python -m bench.timelapse_bench " + " ".join(sys.argv[1:]),
                    "machine": {"cpus": os.cpu_count(), "load": os.getloadavg(), "python": platform.python_version()},
                    "frames": frames, "width": plans["gif"].width, "height": plans["gif"].height,
                    "rounds": args.rounds, "seconds": times, "bytes": sizes, "formats": {}}
    print(f"{frames} frames of {plans['gif'].width}×{plans['gif'].height}, {args.rounds} rounds")
    print("| phase | median s | ms / frame | ratio to floor, median (min–max) | bytes |")
    print("|---|---|---|---|---|")
    for p in phases:
        ratios = [t / f for t, f in zip(times[p], times["floor"])]
        med = statistics.median(times[p])
        result["formats"][p] = {"median_s": med, "ratio_median": statistics.median(ratios),
                                "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"| {p} | {med:.2f} | {1000 * med / frames:.0f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) | {sizes.get(p, '')} |")
    result["peak"] = []
    for fmt in ("gif", "webp", "mp4"):
        out = subprocess.run([sys.executable, "-m", "bench.timelapse_bench", "--peak", fmt, "--count", str(args.count)],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        result["peak"].append(row)
        print(f"at the bound, {fmt}: {row['frames']} frames of {row['width']}×{row['height']} in {row['seconds']:.1f} s, "
              f"peak {row['peak_mb']:.0f} MB (RSS before {row['rss_before_mb']:.0f} MB), {row['bytes']} bytes")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Snow benchmark: a full-tile snow map against decoding its inputs once, in the same run, on the same files.

    .venv/bin/python -m bench.snow_bench                        # one full tile (prepared once, ~1 GB in /tmp)
    .venv/bin/python -m bench.snow_bench --size 2196 --rounds 2  # a quick run

Inputs: one synthetic L2A of tile 31TCH (`ingest.generate`, 10980² at 10 m for a full tile) of which the rasters a
snow map reads — FRE_B3, FRE_B4 (10 m), FRE_B11, CLM_R2, MG2_R2 (20 m) — are written as the COGs ingest publishes
(GDAL's COG driver with `ingest.cog.cog_options`: deflate, predictor on reflectances, 512-px blocks, overviews),
plus the tile's DEM prepared as `processing.dem` registers it. Prepared once under /tmp/landsurf-snow-bench/<size>/
(kept for reruns; `--clean` removes them).

Phases, each in its own process after a `sync`, interleaved round by round (order alternating):
* floor: every block of those six rasters decoded once, in the strips `snow_map` reads, by GDAL with the same
  threads, into reused buffers — the cost of reading the inputs and nothing else;
* floor2: the same by two threads at once over disjoint inputs (equal bytes), each with GDAL's threads; a round's
  floor is the faster of floor and floor2 (GDAL's own threads alone leave a core idle between a strip's reads);
* snow: `processing.snow.snow_map` — read, classify, snowline, pass 2, the SNW_R2 COG and the metadata written
  (fsync'd, checksummed);
* kernel (once): pass 0/1, snowline and pass 2 (`processing.snow.classify`) on the in-memory arrays, in bytes read
  and written per second (inputs + codes), against a numpy copy of a large array (the machine's memory bandwidth),
  and the same algorithm in plain numpy (temporaries), best of 5 each.
Peak memory: VmHWM of each phase's process. Writes docs/bench/snow.json; prints Markdown rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "snow.json"
DATA = Path("/tmp/landsurf-snow-bench")
DAY = date(2024, 3, 5)
KEYS = ("FRE_B3", "FRE_B4", "FRE_B11", "CLM_R2", "MG2_R2")


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def prepare(size: int) -> tuple[str, Path]:
    """The product's inputs as published COGs, and the DEM, in DATA/<size>/ (made once)."""
    folder = DATA / str(size)
    done = folder / "ready.json"
    if done.exists():
        info = json.loads(done.read_text())
        return info["product_id"], folder
    from rasterio.shutil import copy as gdal_copy

    from ingest.cog import cog_options
    from ingest.generate import generate_l2a
    from processing.dem import prepare_dem

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    made = generate_l2a(folder / "l2a", "31TCH", DAY, seed=0, size=size, as_zip=False, truth_dir=folder / "truth")
    generate_s = time.perf_counter() - t0
    for key in KEYS:
        rel = f"{made.product_id}_{key}.tif"
        src = made.path / rel if key.startswith("FRE") else made.path / "MASKS" / rel
        gdal_copy(str(src), str(folder / rel), driver="COG", **cog_options(key))
    prepare_dem("31TCH", made.dem_path, folder / "T31TCH_DEM.tif")
    shutil.rmtree(folder / "l2a")
    done.write_text(json.dumps({"product_id": made.product_id, "generate_s": round(generate_s, 1)}))
    return made.product_id, folder


def _inputs(product_id: str, folder: Path):
    from processing.snow import SnowInputs

    return SnowInputs.from_product_dir(folder, product_id, folder / "T31TCH_DEM.tif")


def floor(product_id: str, folder: Path, threads: str, readers: int = 1) -> None:
    """Decode every input once in snow_map's strips, into reused buffers, with GDAL's threads: nothing else.
    `readers` 2: two threads decode disjoint inputs at once (green, CLM and DEM; red, SWIR and MG2 — equal bytes),
    each with GDAL's threads too: the floor is the better of the two ways in each round."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from processing.raster_io import open_raster
    from processing.snow import READ_CACHE_MB, _strip_rows

    inputs = _inputs(product_id, folder)
    paths = {"green": inputs.green, "red": inputs.red, "swir": inputs.swir, "clm": inputs.clm, "mg2": inputs.mg2,
             "dem": inputs.dem}
    opened = {k: open_raster(p, k, NUM_THREADS=threads) for k, p in paths.items()}
    h = opened["swir"].height
    rows = _strip_rows(12)
    buffers = {k: np.empty((min(rows * ds.height // h, ds.height), ds.width), ds.dtypes[0])
               for k, ds in opened.items()}
    def decode(keys: list[str]) -> None:
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):
            for start in range(0, h, rows):
                for key in keys:
                    ds = opened[key]
                    f = ds.height // h
                    n = (min(start + rows, h) - start) * f
                    ds.read(1, window=Window(0, start * f, ds.width, n), out=buffers[key][:n])

    if readers == 1:
        decode(list(opened))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(decode, [["green", "clm", "dem"], ["red", "swir", "mg2"]]))
    for ds in opened.values():
        ds.close()


def run_phase(phase: str, product_id: str, folder: Path, threads: str) -> dict:
    from processing.snow import SnowParams, snow_map

    import numpy as np

    from processing.snow import classify

    params = SnowParams.load()
    z = np.zeros((24, 24), np.int16)
    classify(np.zeros((48, 48), np.int16), np.zeros((48, 48), np.int16), z, z.astype(np.uint8), z, params,
             z.astype(np.uint8))  # numba's cached machine code loaded before the clock, in both phases
    out = folder / f"out-{os.getpid()}"
    load = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), _cpu_s()
    extra = {}
    if phase in ("floor", "floor2"):
        floor(product_id, folder, threads, readers=1 if phase == "floor" else 2)
    else:
        product = snow_map(_inputs(product_id, folder), params, out, threads=threads)
        extra = {"zs": product.zs, "snow_percent": product.snow_percent, "cloud_percent": product.cloud_percent,
                 "pass2": product.pass2, "timings": {k: round(v, 3) for k, v in product.timings.items()},
                 "snw_bytes": product.files["SNW_R2"].size}
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    return {"phase": phase, "seconds": round(seconds, 3), "cpu_s": round(cpu, 2), "load_before": round(load, 2),
            "peak_rss_mb": round(_vmhwm_mb()), **extra}


def numpy_classify(green, red, swir, clm, dem, mg2, p) -> object:
    """The same algorithm in plain numpy (temporaries everywhere): the reference of the kernel figure."""
    import numpy as np

    h, w = swir.shape
    nd = p.reflectance_nodata
    g4 = green.reshape(h, 2, w, 2).astype(np.float32)
    r4 = red.reshape(h, 2, w, 2).astype(np.float32)
    gv, rv = (green != nd).reshape(h, 2, w, 2).sum((1, 3)), (red != nd).reshape(h, 2, w, 2).sum((1, 3))
    g = np.where(green.reshape(h, 2, w, 2) != nd, g4, 0).sum((1, 3)) / np.maximum(gv, 1)
    r = np.where(red.reshape(h, 2, w, 2) != nd, r4, 0).sum((1, 3)) / np.maximum(rv, 1)
    s = swir.astype(np.float32)
    valid = (swir != nd) & (gv > 0) & (rv > 0)
    ndsi = np.where(g + s > 0, (g - s) / np.where(g + s > 0, g + s, 1), -2)
    rf = p.rf
    hb, wb = -(-h // rf), -(-w // rf)
    pad = np.zeros((hb * rf, wb * rf), np.float32)
    cnt = np.zeros((hb * rf, wb * rf), np.float32)
    pad[:h, :w] = np.where(valid, r, 0)
    cnt[:h, :w] = valid
    coarse = pad.reshape(hb, rf, wb, rf).sum((1, 3)) / np.maximum(cnt.reshape(hb, rf, wb, rf).sum((1, 3)), 1)
    red_nn = np.repeat(np.repeat(coarse, rf, 0), rf, 1)[:h, :w]
    scale = p.reflectance_scale
    cloud = clm != 0
    refine = (cloud & (red_nn > p.red_darkcloud * scale)) | ((clm & p.shadow_bits) != 0) | (
        (clm & p.high_cloud_bits) != 0)
    back = cloud & (r > p.red_backtocloud * scale)
    dry = (mg2 & 1) == 0
    snow1 = ~cloud & (ndsi > p.ndsi_pass1) & (r > p.red_pass1 * scale) & dry & valid
    cand2 = ~refine & (ndsi > p.ndsi_pass2) & (r > p.red_pass2 * scale) & dry & valid
    z = dem.astype(np.int64) + 32768
    ok = valid & (dem != -32768)
    hist = np.stack([np.bincount(z[ok & ~cloud & ~snow1], minlength=65536),
                     np.bincount(z[ok & snow1 & ~cloud], minlength=65536),
                     np.bincount(z[ok & cloud], minlength=65536)])
    from processing.snow import snowline
    zs = snowline(hist, p)
    snow = snow1 | (cand2 & (dem > (zs if zs is not None else 1 << 20)) & (dem != -32768))
    return np.where(~valid, 254, np.where(snow, 100, np.where(refine | back, 205, 0))).astype(np.uint8)


def kernel(product_id: str, folder: Path) -> dict:
    import numpy as np
    import rasterio

    from processing.snow import SnowParams, classify

    inputs = _inputs(product_id, folder)
    arrays = {}
    for key in ("green", "red", "swir", "clm", "mg2", "dem"):
        with rasterio.open(getattr(inputs, key)) as ds:
            arrays[key] = ds.read(1)
    params = SnowParams.load()
    a = arrays
    nbytes = sum(x.nbytes for x in arrays.values()) + a["swir"].size  # inputs read, codes written

    def best(fn, n=5) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    classify(a["green"][:48, :48], a["red"][:48, :48], a["swir"][:24, :24], a["clm"][:24, :24],
             a["dem"][:24, :24], params, a["mg2"][:24, :24])  # compiled before the clock
    codes, zs = classify(a["green"], a["red"], a["swir"], a["clm"], a["dem"], params, a["mg2"])
    ref = numpy_classify(a["green"], a["red"], a["swir"], a["clm"], a["dem"], a["mg2"], params)
    agree = float((codes == ref).mean())
    src = np.ones(1 << 30, np.uint8)
    dst = np.empty_like(src)
    dst[:] = 0
    copy_s = best(lambda: np.copyto(dst, src))
    kernel_s = best(lambda: classify(a["green"], a["red"], a["swir"], a["clm"], a["dem"], params, a["mg2"]))
    numpy_s = best(lambda: numpy_classify(a["green"], a["red"], a["swir"], a["clm"], a["dem"], a["mg2"], params), 3)
    copy_bw = 2 * src.nbytes / copy_s
    return {"bytes": nbytes, "pixels_20m": int(a["swir"].size), "copy_gb_s": round(copy_bw / 1e9, 2),
            "kernel_s": round(kernel_s, 4), "kernel_gb_s": round(nbytes / kernel_s / 1e9, 2),
            "kernel_share_of_copy": round(nbytes / kernel_s / copy_bw, 3),
            "numpy_s": round(numpy_s, 4), "numpy_share_of_copy": round(nbytes / numpy_s / copy_bw, 3),
            "numpy_agreement": round(agree, 6), "zs": zs, "load_before": round(os.getloadavg()[0], 2)}


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.snow_bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="R1 pixels per side (10980 = a full tile)")
    parser.add_argument("--threads", default="ALL_CPUS", help="GDAL threads of both phases")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of floor and snow")
    parser.add_argument("--clean", action="store_true", help="remove the prepared inputs at the end")
    parser.add_argument("--phase", choices=["floor", "floor2", "snow", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--product", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = DATA / str(args.size)
    if args.phase == "kernel":
        print(json.dumps(kernel(args.product, folder)))
        return 0
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.product, folder, args.threads)))
        return 0

    t0 = time.perf_counter()
    product_id, folder = prepare(args.size)
    prepare_s = time.perf_counter() - t0
    input_bytes = sum(p.stat().st_size for p in folder.glob("*.tif"))
    child("--phase", "snow", "--product", product_id, "--size", str(args.size))  # numba cache, page cache warm
    runs: dict[str, list[dict]] = {"floor": [], "floor2": [], "snow": []}
    for i in range(args.rounds):
        for phase in ("floor", "snow", "floor2") if i % 2 == 0 else ("floor2", "snow", "floor"):
            os.sync()
            runs[phase].append(child("--phase", phase, "--product", product_id, "--size", str(args.size),
                                     "--threads", args.threads))
            last = runs[phase][-1]
            print(f"round {i + 1} {phase}: {last['seconds']} s wall, {last['cpu_s']} s CPU, load "
                  f"{last['load_before']}", file=sys.stderr)
    kern = child("--phase", "kernel", "--product", product_id, "--size", str(args.size))
    if args.clean:
        shutil.rmtree(folder, ignore_errors=True)

    import numba
    import rasterio

    best = [min(a["seconds"], b["seconds"]) for a, b in zip(runs["floor"], runs["floor2"])]  # the round's floor
    ratios = [s["seconds"] / f for f, s in zip(best, runs["snow"])]
    result = {
        "when": datetime_now(), "command": "python -m bench.snow_bench " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
                    "numba": numba.__version__},
        "inputs": {"r1_side": args.size, "files": len(KEYS) + 1, "bytes": input_bytes,
                   "prepare_s": round(prepare_s, 1)},
        "threads": args.threads, "rounds": runs,
        "floor_s": statistics.median(best), "floor_per_round_s": best,
        "snow_s": statistics.median(r["seconds"] for r in runs["snow"]),
        "round_ratios": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios), 3),
        "spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "peak_rss_mb": {"floor": max(r["peak_rss_mb"] for r in runs["floor"] + runs["floor2"]),
                        "snow": max(r["peak_rss_mb"] for r in runs["snow"])},
        "load": [r["load_before"] for phase in runs.values() for r in phase],
        "kernel": kern,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    n = args.size
    print(f"| snow map, {n}² R1 / {n // 2}² R2 | floor {result['floor_s']:.2f} s | snow_map {result['snow_s']:.2f} s "
          f"| **{result['median_ratio']:.2f}×** median of {args.rounds} (spread {result['spread'][0]:.2f}–"
          f"{result['spread'][1]:.2f}; goal ≤ 1.5×) | peak RSS {result['peak_rss_mb']['snow']} MB "
          f"| load {min(result['load']):.1f}–{max(result['load']):.1f} |")
    print(f"| snow kernel | {kern['kernel_gb_s']} GB/s = **{100 * kern['kernel_share_of_copy']:.0f} %** of a numpy "
          f"copy ({kern['copy_gb_s']} GB/s) | plain numpy {100 * kern['numpy_share_of_copy']:.0f} % |")
    return 0


def datetime_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())

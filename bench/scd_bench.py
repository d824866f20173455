"""SCD benchmark: a tile-year snow-cover duration against decoding its inputs once, in the same run, same files.

    .venv/bin/python -m bench.scd_bench                        # 70 full-tile snow maps (prepared once, ~2 GB RSS)
    .venv/bin/python -m bench.scd_bench --size 1098 --rounds 2  # a quick run

Inputs: 70 snow maps of tile 31TCH at 20 m (5490² for a full tile), one every 5 days from 10 days before 1 Sep 2023
to 31 Aug 2024 — what `processing.snow.snow_map` writes (uint8 COGs, deflate, 512-px blocks, overviews, codes
0/100/205/254). They are made from the generator's scenes (true snow of the day, the L2A cloud mask as 205, swath
edges as 254) rather than from 70 full-size L2As (≈ 3 GB and 80 s each), so their compressibility is that of real
snow maps; they are prepared once under /tmp/landsurf-scd-bench/<size>/ (kept for reruns; `--clean` removes them).

Phases, each in its own client process after a `sync`, on a LocalCluster of N worker processes × 1 thread started
before the clock (its start reported apart) and given to `scd` as a scheduler address, interleaved round by round
(order alternating):
* floor-N: every input decoded once, whole, by N worker processes (`client.map` over the files) — the floor;
* tasks-2: the same decoding through scd's own tasks (`compute_chunks(decode_only=True)`: block reads, chunk
  windows, the output array assembled) — what the reading costs inside scd;
* scd-N: `processing.scd.scd`: the five outputs, gap filling and all, written as COGs with their checksums;
* scd-2 on the first 35 maps (peak memory must not grow with the dates);
* kernel (once): `_scd_block` on an in-memory stack of one chunk (70 dates × 512 × 2048), bytes in + out per
  second, against a numpy copy of a large array (the machine's memory bandwidth).
Peak memory: VmHWM of the client and of each worker. Writes docs/bench/scd.json; prints Markdown rows.
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
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "scd.json"
DATA = Path("/tmp/landsurf-scd-bench")
START, STOP = date(2023, 9, 1), date(2024, 8, 31)
MAPS = 70


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# --- data -------------------------------------------------------------------------------------------------------

def dates() -> list[date]:
    return [START - timedelta(days=10) + timedelta(days=5 * k) for k in range(MAPS)]


def _one_map(args: tuple[int, str, str]) -> str:
    """One snow map from the generator's scene of that day, written as `snow_map` writes its SNW_R2."""
    import numpy as np

    from ingest.synthetic.grid import tile_grid
    from ingest.synthetic.scene import build_scene
    from ingest.synthetic.spectra import SNOW_CLASSES
    from processing.raster_io import Grid, write_cog
    from processing.snow import CLOUD, NODATA, NO_SNOW, SNOW

    size, day_iso, folder = args
    day = date.fromisoformat(day_iso)
    path = Path(folder) / f"SNOW_{day:%Y%m%d}_SNW_R2.tif"
    if path.exists():
        return str(path)
    land = _landscape(size)
    scene = build_scene(land, datetime.combine(day, datetime.min.time(), timezone.utc).replace(hour=10, minute=40))
    code = np.where(np.isin(scene.classes, SNOW_CLASSES), np.uint8(SNOW), np.uint8(NO_SNOW))
    code[(scene.clm & 1) != 0] = CLOUD
    code[scene.edge] = NODATA
    g = tile_grid("31TCH")
    grid = Grid(size, size, g.transform(20), f"EPSG:{g.epsg}")
    part = path.with_name("." + path.name)
    part.unlink(missing_ok=True)
    write_cog(part, code, grid, "SNW_R2", nodata=NODATA)
    part.rename(path)
    return str(path)


_LAND: dict = {}


def _landscape(size: int):
    from ingest.synthetic.grid import tile_grid
    from ingest.synthetic.landscape import build_landscape

    if size not in _LAND:
        _LAND[size] = build_landscape(tile_grid("31TCH"), size, 0)
    return _LAND[size]


def prepare(size: int, workers: int = 2) -> list[tuple[date, Path]]:
    folder = DATA / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(size, d.isoformat(), str(folder)) for d in dates()]
    with ProcessPoolExecutor(workers) as pool:
        paths = list(pool.map(_one_map, todo))
    return [(d, Path(p)) for d, p in zip(dates(), paths)]


def _warm() -> float:
    """In a worker: import the kernels and load numba's cached machine code (before the clock)."""
    import numpy as np

    from processing.scd import ScdParams, scd_arrays

    scd_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 5]), 10, ScdParams.load())
    return _vmhwm_mb()


def run_phase(phase: str, workers: int, size: int, count: int) -> dict:
    """One measured phase in this (client) process, on its own LocalCluster of `workers` processes."""
    from distributed import Client, LocalCluster

    from processing.raster_io import same_grids, untrimmed_workers
    from processing.scd import ScdParams, _day_groups, compute_chunks, scd, select_inputs
    from processing.settings import ProcessingSettings

    maps = prepare(size)[:count]
    params = ScdParams.load()
    out = DATA / str(size) / f"out-{os.getpid()}"
    t0 = time.perf_counter()
    with untrimmed_workers(), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           env={"GDAL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as warm:
        warm.run(_warm)
        cluster_s = time.perf_counter() - t0
        load = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), _cpu_s()
        if phase == "floor":  # every input decoded once, whole, spread over the workers: nothing else
            with Client(cluster.scheduler_address) as client:
                decoded = sum(client.gather(client.map(decode_file, [str(p) for _, p in maps], pure=False)))
            extra = {"decoded_bytes": decoded}
        elif phase == "tasks":  # the same, through scd's own tasks (block reads, chunk windows, output assembly)
            used = select_inputs(maps, START, STOP, params.date_margin_days)
            with Client(cluster.scheduler_address) as client:
                compute_chunks(_day_groups(used, START), same_grids([p for _, p in used], "snow map"),
                               (STOP - START).days + 1, params, client, decode_only=True)
            extra = {}
        else:
            settings = ProcessingSettings(dask_scheduler=cluster.scheduler_address)
            product = scd(maps, START, STOP, params, out, tile="31TCH", settings=settings)
            extra = {"timings": {k: round(v, 3) for k, v in product.timings.items()},
                     "output_bytes": sum(f.size for f in product.files.values()), "workers_seen": product.workers}
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        worker_peaks = sorted(round(v) for v in warm.run(_vmhwm_mb).values())
    shutil.rmtree(out, ignore_errors=True)
    return {"phase": f"{phase}-{workers}", "dates": len(maps), "seconds": round(seconds, 3),
            "client_cpu_s": round(cpu, 2), "cluster_start_s": round(cluster_s, 2), "load_before": round(load, 2),
            "peak_rss_mb": {"client": round(_vmhwm_mb()), "workers": worker_peaks,
                            "sum": round(_vmhwm_mb()) + sum(worker_peaks)}, **extra}


def decode_file(path: str) -> int:
    """Decode one snow map whole (one thread: the worker's), return its size in bytes."""
    import rasterio

    with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(path) as ds:
        return ds.read(1).nbytes


def numpy_scd(stack, days, n_days: int, min_snow_days: int):
    """The same outputs in plain numpy, day by day over the daily gap-filled series (the reference of the kernel
    figure, and an independent check of its results)."""
    import numpy as np

    t_n = stack.shape[0]
    valid = stack <= 100
    snow = (stack >= 1) & valid
    idx = np.arange(t_n)[:, None, None]
    last = np.maximum.accumulate(np.where(valid, idx, -1), axis=0)  # last valid input at or before t
    nxt = np.minimum.accumulate(np.where(valid, idx, t_n)[::-1], axis=0)[::-1]  # first valid at or after t
    any_valid = valid.any(axis=0)
    first_v, last_v = nxt[0], last[-1]
    shape = stack.shape[1:]
    scd, nsp = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    cur, cur_start = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    best, best_start = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    take = lambda a, i: np.take_along_axis(a, np.clip(i, 0, t_n - 1)[None], axis=0)[0]
    for d in range(n_days):
        k = int(np.searchsorted(days, d, side="right")) - 1  # last input date <= d
        p = last[k] if k >= 0 else np.full(shape, -1)
        q = nxt[k + 1] if k + 1 < t_n else np.full(shape, t_n)
        before = p < 0
        after = q >= t_n
        sp, sq = take(snow, p).astype(np.float32), take(snow, q).astype(np.float32)
        dp, dq = days[np.clip(p, 0, t_n - 1)], days[np.clip(q, 0, t_n - 1)]
        exact = ~before & (dp == d)
        frac = np.where(dq > dp, (d - dp) / np.maximum(dq - dp, 1), 0)
        value = np.where(before, take(snow, first_v), np.where(after, take(snow, last_v),
                         np.where(exact, sp, sp + (sq - sp) * frac)))
        on = (value >= 0.5) & any_valid
        scd += on
        starting = on & (cur == 0)
        cur_start = np.where(starting, d, cur_start)
        nsp += starting
        cur = np.where(on, cur + 1, 0)
        better = cur > best  # strictly: the first longest run wins ties
        best_start = np.where(better, cur_start, best_start)
        best = np.where(better, cur, best)
    long_enough = scd > min_snow_days
    return np.stack([scd, best_start * long_enough, (best_start + best - 1) * long_enough,
                     valid.sum(axis=0), nsp]).astype(np.uint16)


def kernel(size: int) -> dict:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from processing.scd import CHUNK_COLS, CHUNK_ROWS, ScdParams, _scd_block

    maps = prepare(size)
    days = np.array([(d - START).days for d, _ in maps], np.int32)
    h, w = min(CHUNK_ROWS, size), min(CHUNK_COLS, size)
    stack = np.empty((len(maps), h, w), np.uint8)
    for t, (_, path) in enumerate(maps):
        with rasterio.open(path) as ds:
            ds.read(1, window=Window(0, 0, w, h), out=stack[t])
    params = ScdParams.load()
    n_days = (STOP - START).days + 1
    out = np.zeros((5, h, w), np.uint16)
    _scd_block(stack, days, n_days, params.snow_min_value, params.min_snow_days, out)

    def best(fn, n=5) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    kernel_s = best(lambda: _scd_block(stack, days, n_days, params.snow_min_value, params.min_snow_days,
                                       np.zeros((5, h, w), np.uint16)))
    t0 = time.perf_counter()
    ref = numpy_scd(stack, days, n_days, params.min_snow_days)
    numpy_s = time.perf_counter() - t0
    src = np.ones(1 << 30, np.uint8)
    dst = np.empty_like(src)
    dst[:] = 0
    copy_s = best(lambda: np.copyto(dst, src))
    nbytes = stack.nbytes + out.nbytes
    copy_bw = 2 * src.nbytes / copy_s
    return {"stack": list(stack.shape), "bytes": nbytes, "copy_gb_s": round(copy_bw / 1e9, 2),
            "kernel_s": round(kernel_s, 4), "kernel_gb_s": round(nbytes / kernel_s / 1e9, 2),
            "kernel_share_of_copy": round(nbytes / kernel_s / copy_bw, 3),
            "ns_per_pixel_date": round(1e9 * kernel_s / stack.size, 3),
            "numpy_s": round(numpy_s, 3), "numpy_share_of_copy": round(nbytes / numpy_s / copy_bw, 4),
            "numpy_equal": {k: bool(np.array_equal(out[i], ref[i])) for i, k in
                            enumerate(("SCD", "SOD", "SMOD", "NOBS", "NSP"))},
            "load_before": round(os.getloadavg()[0], 2)}


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.scd_bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=7200, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5490, help="20 m pixels per side (5490 = a full tile)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every phase")
    parser.add_argument("--clean", action="store_true", help="remove the prepared snow maps at the end")
    parser.add_argument("--phase", choices=["floor", "tasks", "scd", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=MAPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "kernel":
        print(json.dumps(kernel(args.size)))
        return 0
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.workers, args.size, args.count)))
        return 0

    t0 = time.perf_counter()
    maps = prepare(args.size)
    prepare_s = time.perf_counter() - t0
    input_bytes = sum(p.stat().st_size for _, p in maps)
    common = ["--size", str(args.size)]
    child("--phase", "scd", "--workers", "1", *common)  # warm: page cache, numba cache
    phases = [("floor", 1, MAPS), ("scd", 1, MAPS), ("floor", 2, MAPS), ("scd", 2, MAPS), ("tasks", 2, MAPS),
              ("scd", 2, MAPS // 2)]
    runs: dict[str, list[dict]] = {}
    for i in range(args.rounds):
        for phase, workers, count in (phases if i % 2 == 0 else phases[::-1]):
            os.sync()
            r = child("--phase", phase, "--workers", str(workers), "--count", str(count), *common)
            key = f"{phase}-{workers}" + ("" if count == MAPS else f"-{count}dates")
            runs.setdefault(key, []).append(r)
            print(f"round {i + 1} {key}: {r['seconds']} s, load {r['load_before']}, peak {r['peak_rss_mb']}",
                  file=sys.stderr)
    kern = child("--phase", "kernel", *common)
    if args.clean:
        shutil.rmtree(DATA / str(args.size), ignore_errors=True)

    import numba
    import rasterio

    def med(key: str) -> float:
        return statistics.median(r["seconds"] for r in runs[key])

    def ratios(a: str, b: str) -> list[float]:
        return [x["seconds"] / y["seconds"] for x, y in zip(runs[a], runs[b])]

    floor_ratio = {n: ratios(f"scd-{n}", f"floor-{n}") for n in (1, 2)}
    scaling = ratios("scd-1", "scd-2")
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.scd_bench " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
                    "numba": numba.__version__},
        "inputs": {"maps": MAPS, "side": args.size, "bytes": input_bytes, "prepare_s": round(prepare_s, 1)},
        "rounds": runs,
        "median_s": {k: med(k) for k in runs},
        "scd_over_floor": {str(n): {"median": round(statistics.median(v), 3),
                                    "spread": [round(min(v), 3), round(max(v), 3)]} for n, v in floor_ratio.items()},
        "speedup_1_to_2_workers": {"median": round(statistics.median(scaling), 3),
                                   "spread": [round(min(scaling), 3), round(max(scaling), 3)]},
        "peak_rss_mb_sum": {k: max(r["peak_rss_mb"]["sum"] for r in v) for k, v in runs.items()},
        "load": [r["load_before"] for v in runs.values() for r in v],
        "kernel": kern,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for n in (1, 2):
        r = result["scd_over_floor"][str(n)]
        print(f"| SCD {MAPS} maps {args.size}², {n} worker(s) | floor {med(f'floor-{n}'):.2f} s | scd "
              f"{med(f'scd-{n}'):.2f} s | **{r['median']:.2f}×** (spread {r['spread'][0]:.2f}–{r['spread'][1]:.2f}; "
              f"goal ≤ 1.5×) | peak RSS client+workers {result['peak_rss_mb_sum'][f'scd-{n}']} MB |")
    s = result["speedup_1_to_2_workers"]
    print(f"| SCD 1 → 2 workers | **{s['median']:.2f}×** (spread {s['spread'][0]:.2f}–{s['spread'][1]:.2f}; goal "
          f"≥ 1.8×) | {MAPS // 2} maps: peak {result['peak_rss_mb_sum'][f'scd-2-{MAPS // 2}dates']} MB vs "
          f"{MAPS}: {result['peak_rss_mb_sum']['scd-2']} MB | load {min(result['load']):.1f}–"
          f"{max(result['load']):.1f} |")
    print(f"| SCD kernel | {kern['kernel_gb_s']} GB/s = **{100 * kern['kernel_share_of_copy']:.0f} %** of a numpy copy "
          f"({kern['copy_gb_s']} GB/s), {kern['ns_per_pixel_date']} ns per pixel-date | plain numpy "
          f"{100 * kern['numpy_share_of_copy']:.1f} % |")
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--prepare-only":
    prepare(int(sys.argv[2]) if len(sys.argv) > 2 else 5490)
    sys.exit(0)
elif __name__ == "__main__":
    sys.exit(main())

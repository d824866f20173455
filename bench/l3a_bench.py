"""L3A benchmark: a full-size tile-month synthesis against decoding its inputs once, in the same run, same files.

    .venv/bin/python -m bench.l3a_bench                        # 9 full tiles (~10 GB of COGs kept in /tmp)
    .venv/bin/python -m bench.l3a_bench --size 2196 --rounds 2  # a quick run

Inputs: nine synthetic L2As (`ingest.generate`, 10980² at 10 m, every 5 days around 15 March, alternating S2A/S2B)
written as the COGs ingest publishes (GDAL's COG driver with `ingest.cog.cog_options`: deflate, predictor, 512-px
blocks, overviews), only the 16 rasters a synthesis reads: FRE of 10 bands, CLM, MG2, ATB at R1 and R2. They are
prepared once under /tmp/landsurf-l3a-bench/<size>/ (kept for reruns; `--clean` removes them).

Phases, each in its own process after a `sync`, interleaved round by round (order alternating):
* floor-N: every block of those 16 rasters × 9 dates decoded once (the same bands L3A reads) by N threads, into
  reused buffers — the cost of reading the inputs, nothing else;
* l3a-N: `processing.l3a.synthesize` on a LocalCluster of N worker processes (started before the clock, its start
  reported apart), writing the 20 files of the product (18 COGs, quicklook, MTD), checksums included;
* l3a-2 on 3 dates (peak memory must not grow with the dates);
* kernel (once): the fused update kernel on in-memory arrays of one block, in bytes moved per second, against a
  numpy copy of a large array (the machine's memory bandwidth), and against the same update in plain numpy.
Peak memory: VmHWM of the client and of every worker (their sum bounds the simultaneous peak) and the largest
total RSS of the process tree sampled every 0.2 s. Writes docs/bench/l3a.json; prints Markdown rows.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "l3a.json"
DATA = Path("/tmp/landsurf-l3a-bench")
WHEN = date(2024, 3, 15)
DATES = 9
KEYS = [f"FRE_{b}" for b in ("B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12")] + [
    f"{m}_{g}" for m in ("CLM", "MG2", "ATB") for g in ("R1", "R2")]


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --- data -------------------------------------------------------------------------------------------------------

def prepare(size: int) -> Path:
    """Nine L2As as published COGs (only the rasters a synthesis reads) and their MTDs, made once."""
    folder = DATA / str(size)
    if (folder / "READY").exists():
        return folder
    from rasterio.shutil import copy as gdal_copy

    from ingest.cog import cog_options
    from ingest.generate import generate_l2a
    from ingest.synthetic.mtd import product_files

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = WHEN - timedelta(days=5 * (DATES // 2))
    for k in range(DATES):
        day = start + timedelta(days=5 * k)
        t0 = time.perf_counter()
        made = generate_l2a(folder / "raw", day, "31TCH", seed=0, size=size, as_zip=False,
                            platform=("SENTINEL2A", "SENTINEL2B")[k % 2], truth_dir=folder / "raw" / "truth")
        gen_s = time.perf_counter() - t0
        files = product_files(made.product_id)
        out = folder / made.product_id
        out.mkdir()
        for key in KEYS:
            gdal_copy(str(made.path / files[key]), str(out / f"{made.product_id}_{key}.tif"), driver="COG",
                      **cog_options(key))
        shutil.copy(made.path / files["metadata"], out / f"{made.product_id}_MTD_ALL.xml")
        shutil.rmtree(folder / "raw")
        print(f"prepared {made.product_id}: generated in {gen_s:.0f} s, COGs in "
              f"{time.perf_counter() - t0 - gen_s:.0f} s", file=sys.stderr, flush=True)
    (folder / "READY").write_text("ok\n")
    return folder


def inputs(folder: Path, count: int = DATES):
    from processing.l3a import l3a_input

    products = sorted(p for p in folder.iterdir() if p.is_dir())
    middle = len(products) // 2
    chosen = products[middle - count // 2: middle - count // 2 + count]
    return [l3a_input(p.name, {k: p / f"{p.name}_{k}.tif" for k in KEYS} | {"metadata": p / f"{p.name}_MTD_ALL.xml"})
            for p in chosen]


# --- phases -----------------------------------------------------------------------------------------------------

def floor(folder: Path, threads: int) -> dict:
    """Decode every block of every input the synthesis reads, once, with `threads` threads."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    jobs = []
    for i in inputs(folder):
        for key, path in i.files.items():
            with rasterio.open(path) as ds:
                height, width, dtype = ds.height, ds.width, ds.dtypes[0]
            band = 2 if key.startswith("ATB") else 1
            jobs += [(str(path), band, r, min(512, height - r), width, dtype) for r in range(0, height, 512)]
    local = threading.local()

    def decode(job) -> int:
        path, band, row, rows, width, dtype = job
        cache = local.__dict__.setdefault("ds", {})
        buffers = local.__dict__.setdefault("buf", {})
        if path not in cache:
            cache[path] = rasterio.open(path)
        buf = buffers.get((rows, width, dtype))
        if buf is None:
            buf = buffers[(rows, width, dtype)] = np.empty((rows, width), dtype)
        cache[path].read(band, window=Window(0, row, width, rows), out=buf)
        return buf.nbytes

    with rasterio.Env(GDAL_NUM_THREADS="1", GDAL_CACHEMAX=128 << 20, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        load = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), _cpu_s()
        with ThreadPoolExecutor(threads) as pool:
            decoded = sum(pool.map(decode, jobs))
        seconds = time.perf_counter() - t0
    compressed = sum(Path(j[0]).stat().st_size for j in {j[0]: j for j in jobs}.values())
    return {"phase": f"floor-{threads}", "seconds": round(seconds, 2), "cpu_s": round(_cpu_s() - cpu0, 2),
            "load_before": round(load, 2), "decoded_bytes": decoded, "compressed_bytes": compressed,
            "peak_rss_mb": round(_vmhwm_mb())}


def synthesis(folder: Path, workers: int, dates: int, out: Path) -> dict:
    """One synthesis on a LocalCluster of `workers` processes, timed from submission to the written product."""
    import psutil
    from distributed import Client, LocalCluster

    from processing.l3a import L3AParams, synthesize

    params = L3AParams.load()
    chosen = inputs(folder, dates)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"GDAL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        start_s = time.perf_counter() - t0
        me = psutil.Process()
        peak = {"total": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    total = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
                    peak["total"] = max(peak["total"], total / 2**20)
                except psutil.Error:
                    pass
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), _cpu_s()
        cpu_workers0 = sum(client.run(_cpu_s).values())
        product = synthesize(chosen, WHEN, params, out, scheduler=cluster.scheduler_address)
        seconds = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0 + sum(client.run(_cpu_s).values()) - cpu_workers0
        stop.set()
        sampler.join()
        worker_peaks = sorted(round(v) for v in client.run(_vmhwm_mb).values())
    written = sum(f.size for f in product.files.values())
    return {"phase": f"l3a-{workers}" + ("" if dates == DATES else f"-{dates}dates"), "seconds": round(seconds, 2),
            "cluster_start_s": round(start_s, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2),
            "timings": product.timings, "bytes_written": written, "files": len(product.files),
            "client_peak_rss_mb": round(_vmhwm_mb()), "worker_peak_rss_mb": worker_peaks,
            "sum_of_peaks_mb": round(_vmhwm_mb()) + sum(worker_peaks), "sampled_peak_total_mb": round(peak["total"]),
            "cloud_percent": product.cloud_percent, "snow_percent": product.snow_percent}


def kernel() -> dict:
    """Bytes the fused kernel moves per second on one in-memory R1 block, against a numpy copy."""
    import numpy as np

    from processing.l3a_kernel import axis_samples, update

    rows, cols, nb, group = 1024, 3072, 4, 4
    rng = np.random.default_rng(0)
    refl = rng.integers(100, 5000, (group, nb, rows, cols)).astype(np.int16)

    def blobs(share: float) -> np.ndarray:  # masks come in patches (clouds, snow fields), not as salt and pepper
        return (rng.random((group, rows // 32, cols // 32)) < share).repeat(32, axis=1).repeat(32, axis=2)

    clm = blobs(0.2).astype(np.uint8)  # a fifth cloudy
    mg2 = (blobs(0.05) * 4).astype(np.uint8)
    aot = rng.integers(10, 160, (group, rows, cols)).astype(np.uint8)
    cgrid = rng.random((group, 46, 46)).astype(np.float32)
    fgrid = (1 + 0.05 * rng.random((group, nb, 23, 23))).astype(np.float32)
    cy, cx = axis_samples(0, rows, 10, 240, 0.5, 46), axis_samples(0, cols, 10, 240, 0.5, 46)
    fy, fx = axis_samples(0, rows, 10, 5000, 0.0, 23), axis_samples(0, cols, 10, 5000, 0.0, 23)
    acc = np.zeros((nb, rows, cols), np.float32)
    wsum, dsum, blue = (np.zeros((rows, cols), np.float32) for _ in range(3))
    flag, nobs = np.zeros((rows, cols), np.uint8), np.zeros((rows, cols), np.uint8)
    correct, w_date, day = np.ones(group, np.bool_), np.full(group, 0.9), np.arange(group, dtype=np.int64)

    def run(per_call: int = group) -> None:
        for g in range(0, group, per_call):
            part = slice(g, g + per_call)
            update(refl[part], clm[part], mg2[part], aot[part], refl[part, 0], per_call, 1, cgrid[part], *cy, *cx,
                   fgrid[part], *fy, *fx, correct[part], w_date[part], day[part], 200.0, 0.8, 0.33, 1.0,
                   acc, wsum, dsum, blue, flag, nobs)

    def timed(fn, repeat: int) -> tuple[float, float]:
        """Median wall and thread-CPU seconds of `fn`: on a shared machine the CPU time is the steadier one."""
        walls, cpus = [], []
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.thread_time() - c0)
        return statistics.median(walls), statistics.median(cpus)

    run()  # compile / load from cache
    run(1)
    kernel_wall, kernel_s = timed(run, 7)
    single_wall, single_s = timed(lambda: run(1), 7)  # one date per call: the state crosses memory every date
    px = rows * cols
    # bytes a date-by-date update must move per pixel on the land path: read ρ (2·nb) + 3 masks + acc (4·nb read
    # and write) + wsum, dsum (4 read and write each) + flag, nobs (1 read and write each) — the grouped kernel
    # moves less (the state once per group), which is the point of grouping
    moved = group * px * (2 * nb + 3 + 8 * nb + 16 + 4)
    needed = group * px * (2 * nb + 3) + px * (8 * nb + 16 + 4)  # what the grouped kernel must move at least

    # numpy, with the temporaries it needs for the land update alone (no snow, water, cloud, interpolation)
    def numpy_update() -> None:
        for g in range(group):
            land = (clm[g] == 0) & (mg2[g] == 0)
            aotf = aot[g] / 200.0
            w = (0.33 + 0.67 * (1 - aotf / 0.8)) * 0.9
            w = np.where(land, w, 0).astype(np.float32)
            for b in range(nb):
                acc[b] += w * refl[g, b]
            wsum[...] += w
            dsum[...] += w * 3
            nobs[...] += land

    numpy_update()
    numpy_wall, numpy_s = timed(numpy_update, 3)
    big = np.ones(256 << 20 >> 3, np.float64)  # 256 MiB, far beyond the caches
    dst = np.empty_like(big)
    np.copyto(dst, big)
    copy_wall, copy_s = timed(lambda: np.copyto(dst, big), 7)
    copy_bw = 2 * big.nbytes / copy_s  # read + write
    return {"phase": "kernel", "block": [rows, cols, nb], "dates": group, "bytes_moved": moved,
            "kernel_s": round(kernel_s, 4), "kernel_wall_s": round(kernel_wall, 4),
            "kernel_gb_s": round(moved / kernel_s / 1e9, 2), "numpy_s": round(numpy_s, 4),
            "numpy_wall_s": round(numpy_wall, 4), "numpy_gb_s": round(moved / numpy_s / 1e9, 2),
            "copy_gb_s": round(copy_bw / 1e9, 2), "copy_wall_gb_s": round(2 * big.nbytes / copy_wall / 1e9, 2),
            "kernel_share_of_copy": round(moved / kernel_s / copy_bw, 3),
            "pixel_dates_per_s": round(group * px / kernel_s), "bytes_needed_grouped": needed,
            "grouped_traffic_share_of_copy": round(needed / kernel_s / copy_bw, 3),
            "one_date_per_call_s": round(single_s, 4), "one_date_per_call_wall_s": round(single_wall, 4),
            "one_date_per_call_share_of_copy": round(moved / single_s / copy_bw, 3),
            "numpy_share_of_copy": round(moved / numpy_s / copy_bw, 3), "load_before": round(os.getloadavg()[0], 2)}


# --- driver -----------------------------------------------------------------------------------------------------

def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.l3a_bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=7200, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="R1 pixels per side (10980 = a full tile)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clean", action="store_true", help="remove the prepared inputs at the end")
    parser.add_argument("--prepare", action="store_true", help="only prepare the inputs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--dates", type=int, default=DATES, help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = DATA / str(args.size)
    if args.phase == "floor":
        print(json.dumps(floor(folder, args.workers)))
        return 0
    if args.phase == "l3a":
        print(json.dumps(synthesis(folder, args.workers, args.dates, args.dest)))
        return 0
    if args.phase == "kernel":
        print(json.dumps(kernel()))
        return 0

    prepare_t0 = time.perf_counter()
    prepare(args.size)
    prepare_s = time.perf_counter() - prepare_t0
    if args.prepare:
        return 0
    work = DATA / f"out-{os.getpid()}"
    runs: dict[str, list[dict]] = {}
    plan = [("floor", 2, DATES), ("l3a", 2, DATES), ("floor", 1, DATES), ("l3a", 1, DATES), ("l3a", 2, 3)]
    try:
        for i in range(args.rounds):
            for phase, workers, dates in plan if i % 2 == 0 else list(reversed(plan)):
                dest = work / f"{phase}-{workers}-{dates}-{i}"
                os.sync()
                result = child(["--phase", phase, "--size", str(args.size), "--workers", str(workers),
                                "--dates", str(dates), "--dest", str(dest)])
                shutil.rmtree(dest, ignore_errors=True)
                runs.setdefault(result["phase"], []).append(result)
                print(f"round {i + 1} {result['phase']}: {result['seconds']} s, CPU {result['cpu_s']} s, "
                      f"load {result['load_before']}", file=sys.stderr, flush=True)
        runs["kernel"] = [child(["--phase", "kernel"])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.clean:
            shutil.rmtree(DATA / str(args.size), ignore_errors=True)

    def med(name: str, field: str = "seconds") -> float:
        return statistics.median(r[field] for r in runs[name])

    def ratios(a: str, b: str) -> list[float]:
        return [round(x["seconds"] / y["seconds"], 3) for x, y in zip(runs[a], runs[b])]

    import rasterio

    summary = {}
    for workers in (2, 1):
        r = ratios(f"l3a-{workers}", f"floor-{workers}")
        summary[f"l3a_{workers}_vs_floor_{workers}"] = {"median": statistics.median(r), "rounds": r,
                                                        "spread": [min(r), max(r)]}
    speed = [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs["l3a-1"], runs["l3a-2"])]
    summary["speedup_2_workers"] = {"median": statistics.median(speed), "rounds": speed}
    summary["peak_memory_mb"] = {
        name: {"sum_of_peaks": max(r["sum_of_peaks_mb"] for r in runs[name]),
               "sampled_total": max(r["sampled_peak_total_mb"] for r in runs[name])}
        for name in ("l3a-2", "l3a-1", "l3a-2-3dates")}
    summary["kernel"] = runs["kernel"][0]
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.l3a_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "inputs": {"size": args.size, "dates": DATES, "prepare_s": round(prepare_s, 1),
                   "compressed_bytes": runs["floor-2"][0]["compressed_bytes"],
                   "decoded_bytes": runs["floor-2"][0]["decoded_bytes"]},
        "summary": summary, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    k = summary["kernel"]
    print(f"| L3A, {DATES} dates of {args.size}² (2 workers) | floor {med('floor-2'):.1f} s | synthesis "
          f"{med('l3a-2'):.1f} s | **{summary['l3a_2_vs_floor_2']['median']:.2f}×** "
          f"(spread {summary['l3a_2_vs_floor_2']['spread'][0]:.2f}–{summary['l3a_2_vs_floor_2']['spread'][1]:.2f}) |")
    print(f"| L3A, 1 worker | floor {med('floor-1'):.1f} s | synthesis {med('l3a-1'):.1f} s | "
          f"**{summary['l3a_1_vs_floor_1']['median']:.2f}×** | 2 workers: "
          f"**{summary['speedup_2_workers']['median']:.2f}×** faster |")
    print(f"| peak memory (sum of process peaks) | 9 dates {summary['peak_memory_mb']['l3a-2']['sum_of_peaks']} MB "
          f"| 3 dates {summary['peak_memory_mb']['l3a-2-3dates']['sum_of_peaks']} MB |")
    print(f"| kernel | {k['kernel_gb_s']} GB/s = **{k['kernel_share_of_copy']:.0%}** of a numpy copy "
          f"({k['copy_gb_s']} GB/s); plain numpy {k['numpy_share_of_copy']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

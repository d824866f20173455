"""COG writing benchmark: `write_cogs` against the floor, measured in the same run on the same product.

The floor is GDAL's own COG driver writing the same rasters the way the pipeline does: the same sources (with the
MTD's nodata), the same creation options and threads, each COG encoded in GDAL's memory filesystem, then written
to disk (into the page cache: no fsync) — one after another, with no hashing, no validation, no quicklook and no
MTD. `write_cogs` adds what ingest needs: SHA-256 of every byte, COG validation, an fsync of every COG before
publication (overlapped with the next encoding), the re-encoded quicklook and the MTD. The goal is ≤ 1.3× the
floor.

    .venv/bin/python -m bench.ingest_cog_bench                 # one full 10980² product (~4 GB in /tmp)
    .venv/bin/python -m bench.ingest_cog_bench --size 2048     # a quicker run

Rounds interleave the two phases (floor first in even rounds, write_cogs first in odd ones); the figure is the
median of the per-round ratios, with their spread. Each phase runs in its own process (its peak RSS is its own),
after a `sync`. Writes bench/out/ingest_cog.json and prints a Markdown line for docs/benchmarks.md. Everything
written under /tmp is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WHEN = datetime(2024, 3, 10, 10, 40, 21, 123000, tzinfo=timezone.utc)


def _peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss it does not inherit the parent's peak across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(phase: str, root: Path, out: Path, compress: str, threads: str) -> dict:
    """One measured phase in this process (called in a child): read the product, then time the writes."""
    import rasterio

    from ingest.cog import write_cogs
    from ingest.muscate import read_l2a

    t0 = time.perf_counter()
    product = read_l2a(root)
    read_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), _cpu_s()
    if phase == "floor":
        floor_write(product, out, compress, threads)
        files = len(product.rasters)
    else:
        cogs = write_cogs(product, out / "staging", compress=compress, threads=threads)  # type: ignore[arg-type]
        files = len(cogs.files)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    with rasterio.open(product.rasters["FRE_B4"].path) as ds:
        shape = [ds.height, ds.width]
    return {"phase": phase, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2),
            "read_l2a_s": round(read_s, 2),
            "peak_rss_mb": round(_peak_rss_mb()), "files": files, "bytes_written": written, "r1_shape": shape}


def floor_write(product, out: Path, compress: str, threads: str) -> None:
    """The floor: GDAL encodes each COG in memory (as the pipeline does), Python writes it out — and nothing else."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as gdal_copy

    from ingest.cog import cog_options, source_path

    for key, raster in product.rasters.items():
        with MemoryFile(filename=raster.path.name) as mem:
            gdal_copy(source_path(raster), mem.name, driver="COG", **cog_options(key, compress, threads))
            with open(out / raster.path.name, "wb") as fh:
                fh.write(mem.getbuffer())  # no fsync: the page cache takes it (the pipeline fsyncs each COG)


def child(phase: str, root: Path, out: Path, compress: str, threads: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.ingest_cog_bench", "--phase", phase, "--root", str(root),
                           "--out", str(out), "--compress", compress, "--threads", threads],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="R1 pixels per side (10980 = a full tile)")
    parser.add_argument("--compress", default="deflate", choices=["deflate", "zstd"])
    parser.add_argument("--threads", default="ALL_CPUS")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of floor and write_cogs")
    parser.add_argument("--phase", choices=["floor", "write_cogs"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.root, args.out, args.compress, args.threads)))
        return 0

    from ingest.generate import generate_l2a

    work = Path(tempfile.mkdtemp(prefix="landsurf-ingest-bench-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        made = generate_l2a(work / "product", WHEN, "31TCH", seed=0, size=args.size, as_zip=False)
        generate_s = time.perf_counter() - t0
        source_bytes = sum(p.stat().st_size for p in made.path.rglob("*") if p.is_file())
        runs: dict[str, list[dict]] = {"floor": [], "write_cogs": []}
        for i in range(args.rounds):
            for phase in ("floor", "write_cogs") if i % 2 == 0 else ("write_cogs", "floor"):
                out = work / f"{phase}-{i}"
                os.sync()  # no phase pays for the write-back of the one before
                runs[phase].append(child(phase, made.path, out, args.compress, args.threads))
                shutil.rmtree(out)
                last = runs[phase][-1]
                print(f"round {i + 1} {phase}: {last['seconds']} s wall, {last['cpu_s']} s CPU, "
                      f"load {last['load_before']}", file=sys.stderr)
        floor = min(runs["floor"], key=lambda r: r["seconds"])
        ours = min(runs["write_cogs"], key=lambda r: r["seconds"])
        ratios = [w["seconds"] / f["seconds"] for f, w in zip(runs["floor"], runs["write_cogs"])]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import rasterio

    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
                    "rasterio": rasterio.__version__},
        "product": {"r1_shape": floor["r1_shape"], "rasters": floor["files"], "source_bytes": source_bytes,
                    "generate_s": round(generate_s, 1)},
        "compress": args.compress, "threads": args.threads, "rounds": runs,
        "floor_s": statistics.median(r["seconds"] for r in runs["floor"]),
        "write_cogs_s": statistics.median(r["seconds"] for r in runs["write_cogs"]),
        "round_ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "best_ratio": round(ours["seconds"] / floor["seconds"], 3),
        "cpu_s": {"floor": min(r["cpu_s"] for r in runs["floor"]),
                  "write_cogs": min(r["cpu_s"] for r in runs["write_cogs"])},
        "peak_rss_mb": {"floor": floor["peak_rss_mb"], "write_cogs": ours["peak_rss_mb"]},
        "read_l2a_s": ours["read_l2a_s"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest_cog.json").write_text(json.dumps(result, indent=2) + "\n")
    n = floor["r1_shape"][0]
    print(f"| COGs of one L2A ({n}² R1, {floor['files']} rasters, {args.compress}, {os.cpu_count()} CPUs) "
          f"| floor (COG driver in memory + write) {result['floor_s']:.1f} s median "
          f"| write_cogs (+SHA-256, validation, fsync, QKL, MTD) {result['write_cogs_s']:.1f} s median "
          f"| **{result['median_ratio']:.2f}×** median of {args.rounds} interleaved rounds "
          f"(spread {result['spread'][0]:.2f}–{result['spread'][1]:.2f}; goal ≤ 1.3×) "
          f"| CPU {result['cpu_s']['floor']:.0f} / {result['cpu_s']['write_cogs']:.0f} s "
          f"| peak RSS {floor['peak_rss_mb']} / {ours['peak_rss_mb']} MB | read_l2a {ours['read_l2a_s']:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

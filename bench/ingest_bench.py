"""Ingest benchmark (issue 9): one full-size L2A from drop to searchable against the COG-writing floor, in
interleaved rounds; products/min with 1 and 2 workers; the recovery time of a delivery whose worker is killed.

    .venv/bin/python -m bench.ingest_bench                              # full 10980² product (~30 min, ~16 GB /tmp)
    .venv/bin/python -m bench.ingest_bench --size 2196 --small 512      # a quick run of the same steps

- floor: `bench.ingest_cog_bench`'s floor — GDAL's COG driver writing the product's rasters the way the pipeline
  does (same sources, options and threads, each COG encoded in memory, then written, without fsync), one after
  another, from the extracted TIFFs, nothing else;
- drop → searchable: in a child process, on a fresh catalog, the zip lying in the inbox is taken as the watcher
  takes it (claim rename, SHA-256, receipt) and processed as a worker does (unzip with its checks and limits, read
  and validate, COGs with SHA-256 and validation, re-encoded quicklook, item, publication); the clock stops when
  the item is committed, i.e. searchable;
- rounds interleave the two (floor first in even rounds); the figure is the median of the per-round ratios with
  their spread, each phase after a `sync`;
- throughput: `--count` small products queued, drained by 1 and by 2 `landsurf worker --once` processes,
  interleaved 1, 2, 1, 2;
- recovery: a worker is killed with -9 while writing a small product's COGs and a new worker is started at once;
  the time from the kill to the product being searchable, with the default heartbeat/stalled/sweep settings and
  with a fast set.

Writes bench/out/ingest.json (copy it to docs/bench/ with the figures) and prints Markdown lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.ingest_cog_bench import child as cog_phase
from tests.conftest import env_for

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WHEN = datetime(2024, 3, 10, 10, 40, 21, 123000, tzinfo=timezone.utc)
FAST = {"LANDSURF_INGEST_HEARTBEAT_SECONDS": "1", "LANDSURF_INGEST_STALLED_SECONDS": "5",
        "LANDSURF_INGEST_SWEEP_SECONDS": "1", "LANDSURF_INGEST_POLL_SECONDS": "0.5"}


def _catalog(home: Path):
    from catalog.embedded import EmbeddedCluster
    from catalog.settings import CatalogSettings
    from processing.setup import prepare_database

    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    settings = CatalogSettings(home=home, statement_timeout_ms=600_000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    prepare_database(settings)
    return settings, cluster


DROP = """
import json, resource, sys, time
from pathlib import Path
from catalog.database import session
from catalog.settings import CatalogSettings
from ingest.inbox import take_from_inbox
from ingest.pipeline import process
from ingest.settings import IngestSettings
s = CatalogSettings(home=Path(sys.argv[1]), statement_timeout_ms=600000); i = IngestSettings()
u0 = resource.getrusage(resource.RUSAGE_SELF); cpu0 = u0.ru_utime + u0.ru_stime
t0 = time.perf_counter()
d = take_from_inbox(s, i, Path(sys.argv[2]))
t_take = time.perf_counter() - t0
o = process(s, i, d.receipt_id)
t = time.perf_counter() - t0
with session(s, 'api') as c:
    n = c.execute('SELECT count(*) FROM pgstac.items WHERE id = %s', (o.product_id,)).fetchone()[0]
hwm = int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))) // 1024
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({'status': o.status, 'seconds': round(t, 2), 'take_s': round(t_take, 2), 'searchable': n,
                  'peak_rss_mb': hwm, 'cpu_s': round(u.ru_utime + u.ru_stime - cpu0, 2)}))
"""


def drop_to_searchable(work: Path, zip_path: Path, index: int) -> dict:
    """A fresh catalog; the zip copied into its inbox (not timed); take + process timed in a child process."""
    settings, cluster = _catalog(work / f"home-{index}")
    try:
        inbox = settings.home_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        dropped = inbox / zip_path.name
        shutil.copy(zip_path, dropped)
        os.sync()
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, "-c", DROP, str(settings.home_dir), str(dropped)], cwd=ROOT,
                              capture_output=True, text=True, timeout=7200, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LANDSURF_LOG_LEVEL": "WARNING"})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if result["status"] != "published" or result["searchable"] != 1:
            raise RuntimeError(f"not published: {result}")
        return result | {"load_before": round(load, 2)}
    finally:
        cluster.stop()
        shutil.rmtree(settings.home_dir, ignore_errors=True)


def _queue(settings, made: list) -> list[int]:
    from ingest.inbox import take
    from ingest.settings import IngestSettings
    from processing.queue import defer, opened

    ingest = IngestSettings()
    ids = []
    with opened(settings, ingest) as app:
        for m in made:
            delivery = take(settings, ingest, m.path)
            defer(app, delivery)
            ids.append(delivery.receipt_id)
    return ids


def worker_throughput(settings, work: Path, n: int, workers: int, size: int, day0: int) -> dict:
    from ingest import receipts
    from ingest.generate import generate_l2a

    made = [generate_l2a(work / f"w{day0}-{k}", tile="31TCH", when=WHEN + timedelta(days=day0 + k), seed=k,
                         size=size) for k in range(n)]
    ids = _queue(settings, made)
    env = env_for(settings) | {"LANDSURF_LOG_LEVEL": "WARNING"}
    os.sync()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "processing.cli", "worker", "--once"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
             for _ in range(workers)]
    for p in procs:
        p.wait(7200)
    seconds = time.perf_counter() - t0
    statuses = {receipts.get(settings, i).status for i in ids}
    if statuses != {"published"}:
        raise RuntimeError(f"throughput run ended with {statuses}")
    for m in made:
        shutil.rmtree(m.path.parent, ignore_errors=True)
    return {"workers": workers, "products": n, "seconds": round(seconds, 1),
            "products_per_min": round(n / seconds * 60, 1)}


def recovery(settings, work: Path, size: int, day0: int, env_extra: dict[str, str]) -> dict:
    """Kill -9 the worker while it writes the COGs, start another at once: seconds until searchable."""
    from ingest import receipts
    from ingest.generate import generate_l2a
    from ingest.settings import IngestSettings

    made = generate_l2a(work / f"r{day0}", tile="31TCH", when=WHEN + timedelta(days=day0), seed=day0, size=size)
    (rid,) = _queue(settings, [made])
    staging = IngestSettings.staging_dir(settings) / str(rid)
    env = env_for(settings) | {"LANDSURF_LOG_LEVEL": "WARNING"} | env_extra

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "processing.cli", "worker"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    first = start()
    t_start = time.perf_counter()
    while not staging.exists():
        if time.perf_counter() - t_start > 600:
            raise RuntimeError("the worker never started writing COGs")
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    killed = time.perf_counter()
    second = start()
    try:
        while receipts.get(settings, rid).status != "published":
            if time.perf_counter() - killed > 1800:
                raise RuntimeError("not recovered in 30 min")
            time.sleep(0.05)
        recovered = time.perf_counter() - killed
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(120)
    rec = receipts.get(settings, rid)
    ingest = IngestSettings(**{k.removeprefix("LANDSURF_INGEST_").lower(): v for k, v in env_extra.items()
                               if k.startswith("LANDSURF_INGEST_")})
    return {"size": size, "attempts": rec.attempts, "recovery_s": round(recovered, 1),
            "heartbeat_seconds": ingest.heartbeat_seconds, "stalled_seconds": ingest.stalled_seconds,
            "sweep_seconds": ingest.sweep_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980, help="R1 size of the drop→searchable product")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of floor and drop→searchable")
    parser.add_argument("--small", type=int, default=1098, help="R1 size of the throughput and recovery products")
    parser.add_argument("--count", type=int, default=20, help="products per throughput run")
    args = parser.parse_args()
    import rasterio

    from ingest.generate import generate_l2a
    from ingest.model import Delivery
    from ingest.muscate import extract

    work = Path(tempfile.mkdtemp(prefix="landsurf-ingest-e2e-", dir="/tmp"))
    work.chmod(0o755)
    result: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "gdal": rasterio.__gdal_version__},
                    "args": vars(args)}
    try:
        t0 = time.perf_counter()
        made = generate_l2a(work / "gen", tile="31TCH", when=WHEN, seed=0, size=args.size)
        result["generate_s"] = round(time.perf_counter() - t0, 1)
        result["zip_bytes"] = made.path.stat().st_size
        root = extract(Delivery(made.path, made.path.name, "", 0), work / "extracted")
        floors, drops = [], []
        for i in range(args.rounds):
            for phase in ("floor", "drop") if i % 2 == 0 else ("drop", "floor"):
                os.sync()
                if phase == "floor":
                    floors.append(cog_phase("floor", root, work / "floor-out", "deflate", "ALL_CPUS"))
                    shutil.rmtree(work / "floor-out")
                else:
                    drops.append(drop_to_searchable(work, made.path, i))
                print(f"round {i + 1} {phase}: {(floors if phase == 'floor' else drops)[-1]['seconds']} s",
                      file=sys.stderr, flush=True)
        ratios = [d["seconds"] / f["seconds"] for f, d in zip(floors, drops)]
        cpu_ratios = [d["cpu_s"] / f["cpu_s"] for f, d in zip(floors, drops)]
        result |= {"floor": floors, "drop_to_searchable": drops, "round_ratios": [round(r, 3) for r in ratios],
                   "cpu_ratios": [round(r, 3) for r in cpu_ratios], "median_cpu_ratio": round(
                       statistics.median(cpu_ratios), 3),
                   "median_ratio": round(statistics.median(ratios), 3),
                   "spread": [round(min(ratios), 3), round(max(ratios), 3)],
                   "floor_median_s": statistics.median(f["seconds"] for f in floors),
                   "drop_median_s": statistics.median(d["seconds"] for d in drops)}
        shutil.rmtree(work / "extracted")
        print(json.dumps({k: result[k] for k in ("round_ratios", "median_ratio", "spread")}), file=sys.stderr)
        settings, cluster = _catalog(work / "home-small")
        try:
            result["throughput"] = [worker_throughput(settings, work / "small", args.count, w, args.small,
                                                      100 + 100 * k) for k, w in enumerate((1, 2, 1, 2))]
            result["recovery"] = [recovery(settings, work / "rec", args.small, 900, {}),
                                  recovery(settings, work / "rec", args.small, 901, FAST)]
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| one L2A {args.size}² from drop to searchable | floor {result['floor_median_s']:.1f} s | landsurf "
          f"{result['drop_median_s']:.1f} s | **{result['median_ratio']:.2f}×** median of {args.rounds} rounds "
          f"(spread {result['spread'][0]:.2f}–{result['spread'][1]:.2f}) | CPU {result['median_cpu_ratio']:.2f}× |")
    for t in result["throughput"]:
        print(f"| {t['products']} products of {args.small}² | {t['workers']} worker(s) | {t['seconds']} s "
              f"| {t['products_per_min']} products/min |")
    for r in result["recovery"]:
        print(f"| recovery after kill -9 (heartbeat {r['heartbeat_seconds']:g} s, stalled {r['stalled_seconds']:g} s, "
              f"sweep {r['sweep_seconds']:g} s) | {r['recovery_s']} s | attempts {r['attempts']} |")


if __name__ == "__main__":
    main()

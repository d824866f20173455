"""Ingest benchmark: one full-size L2A delivery from drop to searchable, against the COG-writing floor,
and the throughput of 20 small deliveries with 1 and 2 workers — all in one run.

    .venv/bin/python -m bench.ingest_bench                # full 10980² product (~15 min, ~8 GB in /tmp)
    .venv/bin/python -m bench.ingest_bench --size 2196    # quicker

Floor: GDAL's COG driver (rasterio, NUM_THREADS=ALL_CPUS) writing the product's rasters with the same
options, one after another, from the extracted TIFFs (`bench.ingest_cog_bench`'s floor phase).
Drop→searchable: the zip is taken from the inbox (checksum, receipt), extracted, read and validated,
written as COGs (hashes, validation), its item built and published; the clock stops when the item is
committed, i.e. searchable. Writes bench/out/ingest.json and prints Markdown lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _setup(home: Path):
    from catalog.embedded import EmbeddedCluster
    from catalog.settings import CatalogSettings
    from processing.setup import prepare_database

    settings = CatalogSettings(home=home, statement_timeout_ms=600_000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    prepare_database(settings)
    return settings, cluster


def drop_to_searchable(home: Path, zip_path: Path) -> dict:
    """In a child process: take + process one delivery; returns seconds and peak RSS."""
    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from catalog.settings import CatalogSettings\n"
        "from catalog.database import session\n"
        "from ingest.settings import IngestSettings\n"
        "from ingest.inbox import take\n"
        "from ingest.pipeline import process\n"
        f"s = CatalogSettings(home=Path({str(home)!r}), statement_timeout_ms=600000); i = IngestSettings()\n"
        "t0 = time.perf_counter()\n"
        f"d = take(s, i, Path({str(zip_path)!r}))\n"
        "t_take = time.perf_counter() - t0\n"
        "o = process(s, i, d.receipt_id)\n"
        "t = time.perf_counter() - t0\n"
        "with session(s, 'api') as c:\n"
        "    n = c.execute('SELECT count(*) FROM pgstac.items WHERE id = %s', (o.product_id,)).fetchone()[0]\n"
        "print(json.dumps({'status': o.status, 'seconds': round(t, 2), 'take_s': round(t_take, 2), 'searchable': n,"
        " 'peak_rss_mb': round(int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))) / 1024)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LANDSURF_LOG_LEVEL": "WARNING"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_throughput(settings, work: Path, n: int, workers: int, size: int, day0: int) -> dict:
    from ingest.generate import generate_l2a
    from ingest.inbox import take
    from ingest.settings import IngestSettings
    from processing.queue import create_queue, defer

    ingest = IngestSettings()
    made = [generate_l2a(work / f"w{workers}-{k}", tile="31TCH", when=WHEN + timedelta(days=day0 + k),
                         seed=k, size=size) for k in range(n)]
    queue = create_queue(settings, ingest)
    with queue.open():
        for m in made:
            defer(queue, take(settings, ingest, m.path))
    env = env_for(settings) | {"LANDSURF_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "processing.cli", "worker", "--once"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
             for _ in range(workers)]
    for p in procs:
        p.wait(3600)
    seconds = time.perf_counter() - t0
    return {"workers": workers, "products": n, "seconds": round(seconds, 1),
            "products_per_min": round(n / seconds * 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--small", type=int, default=1098, help="R1 size of the 20 throughput products")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    from ingest.generate import generate_l2a
    from ingest.model import Delivery
    from ingest.muscate import extract

    work = Path(tempfile.mkdtemp(prefix="landsurf-ingest-e2e-", dir="/tmp"))
    work.chmod(0o755)
    home = work / "home"
    home.mkdir()
    home.chmod(0o755)
    result: dict = {"size": args.size}
    try:
        settings, cluster = _setup(home)
        t0 = time.perf_counter()
        made = generate_l2a(work / "gen", tile="31TCH", when=WHEN, seed=0, size=args.size)
        result["generate_s"] = round(time.perf_counter() - t0, 1)
        result["zip_bytes"] = made.path.stat().st_size
        root = extract(Delivery(made.path, made.path.name, "", 0), work / "extracted")
        os.sync()
        result["floor"] = cog_phase("floor", root, work / "floor-out", "deflate", "ALL_CPUS")
        shutil.rmtree(work / "floor-out")
        shutil.rmtree(work / "extracted")
        os.sync()
        result["drop_to_searchable"] = drop_to_searchable(home, made.path)
        result["ratio"] = round(result["drop_to_searchable"]["seconds"] / result["floor"]["seconds"], 2)
        print(json.dumps(result), flush=True)
        result["throughput"] = [worker_throughput(settings, work / "small", args.count, w, args.small, 100 * w)
                                for w in (1, 2)]
        cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2))
    f, e = result["floor"], result["drop_to_searchable"]
    print(f"| one L2A {args.size}² from drop to searchable | floor {f['seconds']:.1f} s | landsurf {e['seconds']:.1f} s "
          f"(take {e['take_s']:.1f} s) | **{result['ratio']:.2f}×** | peak RSS {f['peak_rss_mb']} / {e['peak_rss_mb']} MB |")
    for t in result["throughput"]:
        print(f"| {t['products']} products of {args.small}² | {t['workers']} worker(s) | {t['seconds']} s "
              f"| {t['products_per_min']} products/min |")


if __name__ == "__main__":
    main()

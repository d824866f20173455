"""On-demand request for a product already made: `processing.derive.request_product` must answer at once.

    .venv/bin/python -m bench.derive_bench           # recorded run
    .venv/bin/python -m bench.derive_bench --requests 50 --no-write                  # a quick look

A private embedded catalog (temporary home) gets a few synthetic L2As of tile 31TCH through the real pipeline, their
snow maps and one L3A made by `run_request`; then `request_product` is timed, in this process, for the published
snow maps and the L3A (round robin, after one warm-up call each): each call validates the request, looks up the
current item by collection, tile and datetime on a fresh connection, and returns. Also timed: a request whose job
is already waiting (the second lookup, on the queue's table). Goal (issue 10): < 100 ms. Writes
docs/bench/derive.json (load average included) and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "derive.json"


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2), "max_ms": round(ms[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    os.environ["LANDSURF_PROCESSING_AUTO_DERIVE"] = "false"  # only what the bench asks for is made
    from catalog.embedded import EmbeddedCluster
    from ingest.generate import generate_l2a
    from ingest.inbox import take
    from ingest.pipeline import process
    from ingest.settings import IngestSettings
    from processing.derive import DerivedRequest, request_product, run_request
    from processing.setup import prepare_database
    from tests.conftest import make_home, settings_for

    home = make_home("landsurf-derive-bench-")
    settings = settings_for(home, statement_timeout_ms=10000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    try:
        prepare_database(settings)
        ingest = IngestSettings()
        days = [date(2024, 2, 1) + timedelta(days=8 * k) for k in range(4)]
        l2as = []
        for d in days:
            made = generate_l2a(home / "deliveries", "31TCH", d, seed=3, size=args.size)
            outcome = process(settings, ingest, take(settings, ingest, made.path).receipt_id)
            assert outcome.status == "published", outcome
            l2as.append(made.product_id)
        published = [DerivedRequest("snow", l2a_id=i) for i in l2as] + [DerivedRequest("l3a", tile="31TCH",
                                                                                          month="2024-02")]
        for req in published:
            assert run_request(settings, req, plan=False).status == "published"
            assert request_product(settings, req).status == "published"  # warm-up
        samples = []
        for k in range(args.requests):
            req = published[k % len(published)]
            t0 = time.perf_counter()
            outcome = request_product(settings, req, requested_by="bench")
            samples.append(time.perf_counter() - t0)
            assert outcome.status == "published" and outcome.job_id is None
        waiting = DerivedRequest("scd", tile="31TCH", start=date(2024, 2, 1), stop=date(2024, 2, 29))
        first = request_product(settings, waiting)
        queued = []
        for _ in range(max(10, args.requests // 10)):
            t0 = time.perf_counter()
            again = request_product(settings, waiting)
            queued.append(time.perf_counter() - t0)
            assert again.job_id == first.job_id
        result = {
            "benchmark": "derive.request_product",
            "command": ".venv/bin/python -m bench.derive_bench"
                       + (f" --requests {args.requests}" if args.requests != 300 else ""),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]},
            "published": _stats(samples),
            "already_queued": _stats(queued),
            "goal_ms": 100,
        }
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result, indent=2))
    p = result["published"]
    print(f"| on-demand request for a product already published (`request_product`) | median {p['median_ms']} ms, "
          f"p95 {p['p95_ms']} ms (n = {p['n']}) | < 100 ms |")
    if not args.no_write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Catalog benchmark: load ≥200k synthetic items, then landsurf's API against stock stac-fastapi-pgstac
and against raw `pgstac.search()`, all in one run on one database.

    .venv/bin/python -m bench.catalog_bench            # full run (~10 min on 2 cores)
    .venv/bin/python -m bench.catalog_bench --quick    # a smaller smoke run

Writes bench/out/catalog.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods

from bench import items as gen
from bench.queries import QUERIES, Scope, http_latency, peak_rss, sql_latency, throughput
from catalog.collections import COLLECTIONS, ensure_collections
from catalog.database import migrate, session
from catalog.embedded import EmbeddedCluster
from catalog.settings import CatalogSettings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
KEEP = ("href", "file:size", "file:checksum")


def with_catalog_assets(items: Iterator[dict]) -> Iterator[dict]:
    """Give each asset the full definition of our collections' item_assets, as published items have."""
    defs = {cid: spec.item_assets for cid, spec in COLLECTIONS.items()}
    for item in items:
        assets = defs[item["collection"]]
        item["assets"] = {
            key: ({**assets[key], **{k: a[k] for k in KEEP}} if key in assets else a)
            for key, a in item["assets"].items()
        }
        yield item


def catalog_items(n_tiles: int, l2a_from: date, end: date, l3a_from: date, base_url: str) -> tuple[Iterator, Scope]:
    tiles = gen.tiles(n_tiles)

    def stream() -> Iterator[dict]:
        yield from gen.l3a_items(tiles, l3a_from, end, base_url=base_url)
        yield from gen.l2a_items(tiles, l2a_from, end, base_url=base_url)
        yield from gen.snow_items(tiles, l2a_from, end, base_url=base_url)

    return with_catalog_assets(stream()), Scope.from_tiles(tiles, l3a_from, end, now=end)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, path: str = "/_mgmt/ping") -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready: {log.read_text()[-3000:]}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_landsurf(settings: CatalogSettings, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANDSURF_", "PG"))}
    env |= {"LANDSURF_HOME": str(settings.home), "LANDSURF_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LANDSURF_STATEMENT_TIMEOUT_MS": "120000", "LANDSURF_DB_MAX_CONN": "10", "LANDSURF_LOG_LEVEL": "WARNING"}
    log = Path(settings.home) / "landsurf-api.log"
    proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "serve", "--port", str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log, "/health")
    return proc, url


def start_peer(cluster: EmbeddedCluster, port: int, home: Path) -> tuple[subprocess.Popen, str]:
    """Stock stac-fastapi-pgstac, default settings, same database, same read-only role."""
    user, password = cluster.state()["roles"]["api"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANDSURF_", "PG", "USE_API", "DB_"))}
    env |= {"PGUSER": user, "PGPASSWORD": password, "PGHOST": "127.0.0.1", "PGPORT": str(cluster.port),
            "PGDATABASE": "landsurf"}
    log = home / "peer-api.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return proc, url


def load(settings: CatalogSettings, cluster: EmbeddedCluster, stream: Iterator[dict]) -> dict[str, Any]:
    counted = 0

    def counting() -> Iterator[dict]:
        nonlocal counted
        for it in stream:
            counted += 1
            yield it

    db = PgstacDB(dsn=cluster.url("ingest"))
    db.connect().execute("SET statement_timeout = 0")
    start = time.perf_counter()
    Loader(db=db).load_items(counting(), insert_mode=Methods.insert, chunksize=10_000)
    elapsed = time.perf_counter() - start
    db.close()
    t0 = time.perf_counter()
    with psycopg.connect(cluster.superuser_url(), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("ANALYZE")
        size = conn.execute("SELECT pg_database_size('landsurf')").fetchone()[0]
        per_coll = dict(conn.execute("SELECT collection, count(*) FROM pgstac.items GROUP BY 1").fetchall())
    return {"items": counted, "seconds": round(elapsed, 1), "items_per_s": round(counted / elapsed),
            "analyze_s": round(time.perf_counter() - t0, 1), "db_mb": round(size / 2**20), "per_collection": per_coll}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home)
    if home.exists() and not args.reuse:
        EmbeddedCluster(CatalogSettings(home=home)).stop() if (home / "pg" / "landsurf.json").exists() else None
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    settings = CatalogSettings(home=home, pg_shared_buffers="2GB", statement_timeout_ms=600_000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    migrate(settings)
    with session(settings) as conn:
        ensure_collections(conn)
    port_ls, port_peer = free_port(), free_port()
    end = date(2024, 12, 31)
    stream, scope = catalog_items(args.tiles, date(args.l2a_from, 1, 1), end, date(2016, 7, 1),
                                  f"http://127.0.0.1:{port_ls}")
    result: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                              "args": vars(args)}
    if not args.reuse:
        result["load"] = load(settings, cluster, stream)
        print("load:", json.dumps(result["load"]), flush=True)
    ls_proc, ls_url = start_landsurf(settings, port_ls)
    peer_proc, peer_url = start_peer(cluster, port_peer, home)
    sql_dsn = cluster.url("api")
    servers = {"landsurf": ls_url, "peer": peer_url}
    result["latency"] = {}
    try:
        with peak_rss(ls_proc.pid) as ls_mem, peak_rss(peer_proc.pid) as peer_mem:
            for key in ("a", "b", "c"):
                query = QUERIES[key](scope)
                runs = args.runs if key != "c" else args.runs_c
                row = {"sql": sql_latency(sql_dsn, query, runs=runs, seed=1)}
                for name, url in servers.items():
                    row[name] = http_latency(url, query, runs=runs, seed=1)
                result["latency"][key] = row
                print(key, json.dumps(row), flush=True)
            result["throughput"] = {}
            for key in ("a", "b"):
                query = QUERIES[key](scope)
                result["throughput"][key] = {
                    name: throughput(url, query, concurrency=8, duration_s=args.duration, seed=2)
                    for name, url in servers.items()
                }
                print(key, json.dumps(result["throughput"][key]), flush=True)
        result["rss_mb"] = {"landsurf": {"peak": ls_mem.peak_mb, "hwm": ls_mem.hwm_mb},
                            "peer": {"peak": peer_mem.peak_mb, "hwm": peer_mem.hwm_mb}}
    finally:
        for proc in (ls_proc, peer_proc):
            proc.terminate()
            proc.wait(20)
        if not args.keep:
            cluster.stop()
    return result


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, row in result["latency"].items():
        out[f"{key}_p95_ratio"] = round(row["landsurf"]["p95_ms"] / row["peer"]["p95_ms"], 2)
        out[f"{key}_p50_ratio"] = round(row["landsurf"]["p50_ms"] / row["peer"]["p50_ms"], 2)
    for key, row in result.get("throughput", {}).items():
        out[f"{key}_throughput_ratio"] = round(row["landsurf"]["req_per_s"] / row["peer"]["req_per_s"], 2)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| query | raw pgstac.search() p50 / p95 | peer p50 / p95 | landsurf p50 / p95 | landsurf/peer p95 |",
             "|---|---|---|---|---|"]
    for key, row in result["latency"].items():
        cells = [f"{row[n]['p50_ms']:.0f} / {row[n]['p95_ms']:.0f}" for n in ("sql", "peer", "landsurf")]
        lines.append(f"| ({key}) n={row['landsurf']['n_returned_median']:.0f} | " + " | ".join(cells)
                     + f" | {row['landsurf']['p95_ms'] / row['peer']['p95_ms']:.2f} |")
    lines += ["", "| concurrency 8 | peer req/s (p95 ms) | landsurf req/s (p95 ms) | ratio |", "|---|---|---|---|"]
    for key, row in result.get("throughput", {}).items():
        p, ls = row["peer"], row["landsurf"]
        lines.append(f"| ({key}) | {p['req_per_s']:.1f} ({p['p95_ms']:.0f}) | {ls['req_per_s']:.1f} ({ls['p95_ms']:.0f}) "
                     f"| {ls['req_per_s'] / p['req_per_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="/tmp/landsurf-bench", help="bench home (wiped unless --reuse)")
    parser.add_argument("--tiles", type=int, default=847, help="number of MGRS tiles (847 = the whole grid)")
    parser.add_argument("--l2a-from", type=int, default=2023, help="first year of L2A and snow items")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runs-c", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per throughput test")
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database of a previous run")
    parser.add_argument("--keep", action="store_true", help="leave the database running")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.l2a_from, args.runs, args.runs_c, args.duration = 60, 2024, 5, 2, 5.0
    result = measure(args)
    result["ratios"] = ratios(result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "catalog.json").write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))
    print(json.dumps(result["ratios"]), json.dumps(result.get("rss_mb")))


if __name__ == "__main__":
    main()

"""Where landsurf spends a search's time, on the databases of a kept catalog benchmark run:

    .venv/bin/python -m bench.catalog_bench --keep          # loads /tmp/landsurf-bench and leaves it running
    .venv/bin/python -m bench.catalog_profile [--py-spy BIN] # then this; --destroy tears the cluster down after

1. **The database**, for query (a): `pgstac.search()` as landsurf calls it, taken apart into the SQL pgSTAC runs
   for it — translating the body (`stac_search_to_where`, `sort_sqlorderby`), the count of `numberMatched`
   (`where_stats`: an EXPLAIN and a count), the partition chunker (an EXPLAIN), the rows (`search_rows`) — beside
   the same rows and count by plain SQL. One connection, read-only like landsurf's pool, same seeded bodies.
2. **The API process**: CPU per request of `landsurf serve`'s app and of PostgreSQL under (a) at concurrency 8,
   with the garbage collector's share (thread CPU time of every collection), as is and with the built app's
   heap frozen out of the collector (`gc.freeze()`), in interleaved rounds (`bench.catalog_gcserve`).
3. **Rendering hrefs** (issue 13), in process: `render_item` + `add_tile_links` on pages of (a)'s size (7 items)
   and (c)'s (1000), store-relative hrefs against absolute ones that pass through.
4. **py-spy** (optional, `--py-spy` names its binary: `pip install py-spy`): 20 s of samples of the API
   process holding the GIL under the same load, summarised as the functions with the most samples.

Writes `--out` (bench/out/catalog_profile.json) and prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import re
import shutil
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench import items as gen
from bench.catalog_bench import cpu_per_request, forget_counts
from bench.catalog_machine import CpuShare, loadavg
from bench.catalog_servers import ROOT, start_landsurf
from bench.catalog_sql import AS_LANDSURF, TILE_COUNT, TILE_ROWS, _connect, tile_params
from bench.queries import QUERIES, Scope, http_latency, throughput
from catalog.embedded import EmbeddedCluster
from catalog.settings import CatalogSettings

OUT = ROOT / "bench" / "out" / "catalog_profile.json"


def _time(conn: psycopg.Connection, bodies: list[dict], step: Callable[[psycopg.Connection, dict], None],
          warmup: int = 3) -> dict[str, float]:
    for body in bodies[:warmup]:
        step(conn, body)
    ms = []
    for body in bodies:
        t0 = time.perf_counter()
        step(conn, body)
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"p50_ms": round(statistics.median(ms), 2), "mean_ms": round(statistics.fmean(ms), 2),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2)}


def _one(conn: psycopg.Connection, sql: str, *params: Any) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def database_parts(api_dsn: str, scope: Scope, runs: int) -> dict[str, Any]:
    """Query (a) in pgSTAC, step by step, and by plain SQL (milliseconds, client-side, one connection)."""
    rng = random.Random(11)
    bodies = [QUERIES["a"](scope)(rng) for _ in range(runs)]
    prepared = {}
    with _connect(api_dsn, AS_LANDSURF) as conn:
        for b in bodies:
            j = json.dumps(b)
            where = _one(conn, "SELECT stac_search_to_where(%s::jsonb)", j)
            orderby = _one(conn, "SELECT sort_sqlorderby(%s::jsonb, false, '{collection,id}', "
                                 "to_text_array(%s::jsonb->'collections'))", j, j)
            prepared[j] = (where, orderby)

        def search(c: psycopg.Connection, b: dict) -> None:
            _one(c, "SELECT search(%s::jsonb)::text", json.dumps({**b, "conf": {"nohydrate": True}}))

        def translate(c: psycopg.Connection, b: dict) -> None:
            j = json.dumps(b)
            _one(c, "SELECT stac_search_to_where(%s::jsonb)", j)
            _one(c, "SELECT sort_sqlorderby(%s::jsonb, false, '{collection,id}', "
                    "to_text_array(%s::jsonb->'collections'))", j, j)

        def filter_only(c: psycopg.Connection, b: dict) -> None:
            _one(c, "SELECT cql2_query(%s::jsonb)", json.dumps(b["filter"]))

        def count(c: psycopg.Connection, b: dict) -> None:
            _one(c, "SELECT (where_stats(%s, true, '{\"context\": \"on\"}'::jsonb)).total_count",
                 prepared[json.dumps(b)][0])

        def chunker(c: psycopg.Connection, b: dict) -> None:
            c.execute("SELECT * FROM chunker(%s)", (prepared[json.dumps(b)][0],)).fetchall()

        def rows(c: psycopg.Connection, b: dict) -> None:
            where, orderby = prepared[json.dumps(b)]
            c.execute("SELECT format_item(i, '{}'::jsonb, false)::text FROM search_rows(%s, %s, NULL, %s) i",
                      (where, orderby, b["limit"] + 1)).fetchall()

        def plain(c: psycopg.Connection, b: dict) -> None:
            c.execute(TILE_ROWS, tile_params(b)).fetchall()
            c.execute(TILE_COUNT, tile_params(b)).fetchone()

        steps = {"pgstac.search (as landsurf: nohydrate, read-only, context on)": search,
                 "  translate the body: stac_search_to_where + sort_sqlorderby": translate,
                 "    of which the CQL2 filter alone: cql2_query": filter_only,
                 "  numberMatched: where_stats (EXPLAIN + count)": count,
                 "  partitions: chunker (EXPLAIN)": chunker,
                 "  rows: search_rows + format_item (nohydrate)": rows,
                 "plain SQL: rows + count through the grid:code index": plain}
        return {name: _time(conn, bodies, step) for name, step in steps.items()}


def render_cost(repeat: int = 300) -> dict[str, Any]:
    """Milliseconds per page of what landsurf adds to each item at response time: rendered hrefs and tile links."""
    import copy

    from bench.catalog_bench import with_catalog_assets
    from catalog.stac import add_tile_links, render_item

    base = "http://127.0.0.1:8123/"
    out: dict[str, Any] = {}
    for size in (7, 1000):
        tiles = gen.tiles(size)
        first, last = date(2024, 12, 1), date(2024, 12, 6)  # two acquisitions: up to 2 x 847 items
        pages = {"store-relative": list(with_catalog_assets(gen.l2a_items(tiles, first, last)))[:size],
                 "absolute": list(with_catalog_assets(gen.l2a_items(tiles, first, last, base_url=base)))[:size]}
        n = max(3, repeat * 7 // size)
        for hrefs, page in pages.items():
            copies = [copy.deepcopy(page) for _ in range(n)]
            t0 = time.perf_counter()
            for items in copies:
                for item in items:
                    render_item(item, base)
            t1 = time.perf_counter()
            for items in copies:
                for item in items:
                    add_tile_links(item, base)
            t2 = time.perf_counter()
            out[f"{len(page)} items, {hrefs}"] = {"render_item_ms": round((t1 - t0) / n * 1000, 3),
                                                  "add_tile_links_ms": round((t2 - t1) / n * 1000, 3)}
    return out


def _gc_cost(stats: dict[str, Any]) -> float:
    return sum(stats["cpu_ms"])


def api_and_gc(home: Path, logs: Path, scope: Scope, rounds: int, duration: float, postmaster: int) -> dict[str, Any]:
    """CPU per request of the API and of PostgreSQL under (a), and the garbage collector's share, with and without
    `gc.freeze()`, in interleaved rounds."""
    query = QUERIES["a"](scope)
    out: dict[str, list[dict[str, Any]]] = {"default": [], "freeze": []}
    superuser = EmbeddedCluster(CatalogSettings(home=home)).superuser_url()
    for r in range(rounds):
        for mode in (("default", "freeze") if r % 2 == 0 else ("freeze", "default")):
            stats_path = logs / f"gc-{mode}.json"
            server = start_landsurf(f"gc-{mode}", home, logs, gc_stats=stats_path, gc_freeze=mode == "freeze")
            try:
                http_latency(server.url, query, runs=10, seed=99)  # warm the pools and caches
                time.sleep(0.6)  # the stats file is rewritten twice a second
                before = json.loads(stats_path.read_text())
                forget_counts(superuser)
                with CpuShare([server.pid, postmaster], {"server": [server.pid], "db": [postmaster]}) as cpu:
                    tp = throughput(server.url, query, concurrency=8, duration_s=duration, seed=r)
                time.sleep(0.6)
                after = json.loads(stats_path.read_text())
            finally:
                server.stop()
            tp["machine"] = cpu.result()
            tp |= cpu_per_request(tp)
            tp["gc_cpu_ms_per_req"] = round((_gc_cost(after) - _gc_cost(before)) / max(tp["ok"], 1), 2)
            tp["gc_collections"] = [a - b for a, b in zip(after["collections"], before["collections"])]
            tp["gc_max_cpu_ms"] = after["max_cpu_ms"]
            tp["gc_objects"] = after.get("objects")
            out[mode].append(tp)
            print(f"round {r + 1} {mode}: {tp['req_per_s']} req/s, p95 {tp['p95_ms']} ms, API "
                  f"{tp['cpu_ms_per_req_server']} ms/req (GC {tp['gc_cpu_ms_per_req']}), DB {tp['cpu_ms_per_req_db']}",
                  flush=True)
    fields = ("req_per_s", "p95_ms", "cpu_ms_per_req_server", "gc_cpu_ms_per_req", "cpu_ms_per_req_db")
    summary = {mode: {f: round(statistics.median(x[f] for x in runs), 2) for f in fields} for mode, runs in out.items()}
    return {"rounds": out, "median": summary}


def py_spy(binary: str, home: Path, logs: Path, scope: Scope, duration: float) -> dict[str, Any]:
    """Samples of `landsurf serve` holding the GIL under (a) at concurrency 8: the top functions, self and
    inclusive (native frames of C extensions, e.g. asyncpg's protocol, count toward their Python caller)."""
    query = QUERIES["a"](scope)
    raw = logs / "py-spy.txt"
    server = start_landsurf("py-spy", home, logs)
    try:
        http_latency(server.url, query, runs=10, seed=99)
        spy = subprocess.Popen([binary, "record", "--pid", str(server.pid), "--rate", "200", "--duration",
                                str(int(duration)), "--gil", "--nonblocking", "--format", "raw", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        throughput(server.url, query, concurrency=8, duration_s=duration - 2, seed=7)
        spy.wait(60)
    finally:
        server.stop()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \((?:.*/site-packages/|.*/landsurf[^/]*/)?([^:)]*)(?::\d+)?\)$", r" (\1)", f)
                  for f in stack.split(";")]
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)

    def top(c: collections.Counter[str], n: int) -> list[list[Any]]:
        return [[f, round(100 * k / total, 1)] for f, k in c.most_common(n)]

    return {"samples": total, "self_pct": top(own, 25), "inclusive_pct": top(inclusive, 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="/tmp/landsurf-bench", help="home of a `catalog_bench --keep` run")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--tiles", type=int, default=847, help="as given to catalog_bench")
    parser.add_argument("--runs", type=int, default=60, help="bodies of (a) per database step")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the GC comparison")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy binary (skipped when absent)")
    parser.add_argument("--destroy", action="store_true", help="tear the cluster and home down afterwards")
    args = parser.parse_args()
    home = Path(args.home)
    cluster = EmbeddedCluster(CatalogSettings(home=home))
    if not cluster.status().running:
        raise SystemExit(f"no running benchmark cluster in {home}: run `python -m bench.catalog_bench --keep` first")
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    end = date(2024, 12, 31)
    scope = Scope.from_tiles(gen.tiles(args.tiles), date(2016, 7, 1), end, now=end)
    result: dict[str, Any] = {"load1_at_start": loadavg(), "args": {k: v for k, v in vars(args).items()
                                                                  if k not in ("home", "out", "py_spy")}}
    try:
        result["database_a"] = database_parts(cluster.url("api"), scope, args.runs)
        for name, fig in result["database_a"].items():
            print(f"{name:70s} p50 {fig['p50_ms']:7.2f} ms  mean {fig['mean_ms']:7.2f}", flush=True)
        result["render_per_page"] = render_cost()
        print(json.dumps(result["render_per_page"]), flush=True)
        result["api_a"] = api_and_gc(home, logs, scope, args.rounds, args.duration, cluster.status().pid or 0)
        print(json.dumps(result["api_a"]["median"]), flush=True)
        if args.py_spy:
            result["py_spy_a"] = py_spy(args.py_spy, home, logs, scope, args.duration)
            for f, pct in result["py_spy_a"]["self_pct"][:15]:
                print(f"{pct:5.1f}%  {f}")
    finally:
        if args.destroy:
            with contextlib.suppress(Exception):
                cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)
    result["load1_at_end"] = loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

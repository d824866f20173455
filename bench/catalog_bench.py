"""Catalog benchmark: ~260k synthetic items, then every API in one interleaved run on one cluster.

    .venv/bin/python -m bench.catalog_bench            # full run (~35 min on 2 cores)
    .venv/bin/python -m bench.catalog_bench --quick    # a smaller smoke run (~3 min)

Servers, each its own uvicorn process (1 worker, access log off), reading as the same read-only role:
- `landsurf`: this checkout, on database `landsurf` whose items keep store-relative asset hrefs (rendered at
  response time);
- `peer-tuned`: stock stac-fastapi-pgstac with its documented `USE_API_HYDRATE=true`, same database;
- `peer`: stock stac-fastapi-pgstac with its defaults, same database;
- `stored-href`: landsurf at `--baseline` (c738a65, the last commit whose items carried absolute hrefs), from a
  detached git worktree, on database `landsurf_abs`: the same items with absolute hrefs;
- `landsurf-abs`: this checkout on `landsurf_abs` (its hrefs pass through unrendered): a control that
  separates what rendering costs from everything else that changed since the baseline;
- `landsurf-gc-frozen`: an experiment for (a) and (b), this checkout's app served by `bench.catalog_gcserve`,
  which calls `gc.freeze()` once the app is built and measures the garbage collector's CPU time.

`numberMatched` is on for all of them: pgSTAC's `context` setting in the database (`pgstac_settings`, set by
`catalog.collections.ensure_collections`), which is what every client of the database reads. Before timing,
every server must return the same ids in the same order, and a `numberMatched`, for the same bodies.

Then `--rounds` rounds, each measuring every server in turn (the order rotates from round to round): latency
of (a), (b), (c) one request at a time, then closed-loop throughput at concurrency 8; plus, beside them, what
the database alone needs (`bench.catalog_sql`). pgSTAC's count cache (`search_wheres`) is emptied before each
server's turn, so no server answers from a count another one computed. Figures are medians over rounds with
their min–max, and ratios are taken within each round.

Writes `--out` (bench/out/catalog.json) and prints the Markdown tables of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import time
from datetime import date, datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import psycopg
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods

from bench import items as gen
from bench.catalog_machine import CpuShare, loadavg
from bench.catalog_servers import ROOT, Server, checkout_of, free_port, start_landsurf, start_peer, with_database
from bench.catalog_sql import (AS_LANDSURF, AS_PEER, plain_latency, search_latency, sql_throughput, tile_ids,
                               tile_plan)
from bench.queries import QUERIES, Scope, http_latency, peak_rss, search_pages, throughput
from catalog.collections import COLLECTIONS, ensure_collections
from catalog.database import migrate, session
from catalog.embedded import EmbeddedCluster
from catalog.settings import CatalogSettings

OUT = ROOT / "bench" / "out" / "catalog.json"
KEEP = ("href", "file:size", "file:checksum")
DB_REL, DB_ABS = "landsurf", "landsurf_abs"
BASELINE = "c738a65"

LANDSURF, TUNED, PEER, STORED, CONTROL = "landsurf", "peer-tuned", "peer", "stored-href", "landsurf-abs"
FROZEN = "landsurf-gc-frozen"  # experiment: this checkout's app with its start-up heap frozen out of the GC
ISSUE8 = [LANDSURF, TUNED, PEER]
SERVERS_OF = {"a": [LANDSURF, TUNED, PEER, STORED, CONTROL, FROZEN], "b": [*ISSUE8, FROZEN], "c": ISSUE8}
# what the database alone needs, beside the APIs: pgstac.search() as the stock peer calls it (hydrating in
# PostgreSQL, recording the search) and as landsurf does (nohydrate, read-only); query (a) by plain SQL
SQL_LATENCY = {"a": ["sql-search", "sql-search-nohydrate", "sql-plain"], "b": ["sql-search", "sql-search-nohydrate"],
               "c": ["sql-search-nohydrate"]}
SQL_THROUGHPUT = {"a": ["sql-plain", "sql-search-nohydrate"]}
# (server, reference, throughput at least, p95 at most): issue 8 against both peers, issue 13 against the
# stored-href build (p95 "at >= 0.95x" read as: no more than 1/0.95 of the baseline's)
GOALS = [(LANDSURF, TUNED, 1.5, 0.67, "abc"), (LANDSURF, PEER, 2.0, 0.5, "abc"),
         (LANDSURF, STORED, 0.95, round(1 / 0.95, 3), "a")]


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


def catalog_items(tiles: list[gen.Tile], l2a_from: date, end: date, l3a_from: date,
                  base_url: str | None) -> Iterator[dict]:
    """The benchmark's items: store-relative hrefs (`base_url` None), or absolute under `base_url`."""
    def stream() -> Iterator[dict]:
        yield from gen.l3a_items(tiles, l3a_from, end, base_url=base_url)
        yield from gen.l2a_items(tiles, l2a_from, end, base_url=base_url)
        yield from gen.snow_items(tiles, l2a_from, end, base_url=base_url)

    return with_catalog_assets(stream())


def load(dsn: str, superuser_dsn: str, stream: Iterator[dict]) -> dict[str, Any]:
    """pypgstac's Loader (insert, chunks of 10,000, one client), then ANALYZE."""
    counted = 0

    def counting() -> Iterator[dict]:
        nonlocal counted
        for it in stream:
            counted += 1
            yield it

    db = PgstacDB(dsn=dsn)
    db.connect().execute("SET statement_timeout = 0")
    start = time.perf_counter()
    Loader(db=db).load_items(counting(), insert_mode=Methods.insert, chunksize=10_000)
    elapsed = time.perf_counter() - start
    db.close()
    t0 = time.perf_counter()
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        per_coll = dict(conn.execute("SELECT collection, count(*) FROM pgstac.items GROUP BY 1 ORDER BY 1").fetchall())
    return {"items": counted, "seconds": round(elapsed, 1), "items_per_s": round(counted / elapsed),
            "analyze_s": round(time.perf_counter() - t0, 1), "db_mb": round(size / 2**20), "per_collection": per_coll}


def forget_counts(superuser_dsn: str) -> None:
    """Empty pgSTAC's count cache in both databases: the next search counts afresh, whoever asked before."""
    for db in (DB_REL, DB_ABS):
        with psycopg.connect(with_database(superuser_dsn, db), autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET statement_timeout = 60000")
            conn.execute("DELETE FROM pgstac.search_wheres")


def rotate(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


# -- the check before timing --------------------------------------------------------------------------------------
def _first_href(pages: list[dict]) -> str | None:
    for page in pages:
        for feature in page["features"]:
            for asset in feature.get("assets", {}).values():
                return asset.get("href")
    return None


def check_answers(servers: dict[str, Server], scope: Scope, api_dsn: str, bodies: dict[str, int]) -> dict[str, Any]:
    """Every server returns the same ids, in the same order, and the same `numberMatched` on every page, for the
    same bodies; landsurf renders its hrefs and the stored-href build serves absolute ones. Raises otherwise."""
    report: dict[str, Any] = {}
    for key, n in bodies.items():
        query = QUERIES[key](scope)
        rng = random.Random(f"check/{key}")
        names = [s for s in SERVERS_OF[key] if s in servers]
        total_ids, matched_seen = 0, []
        for _ in range(n):
            body = query(rng)
            answers = {}
            hrefs = {}
            for name in names:
                pages = search_pages(servers[name].url, body, query.follow_next)
                answers[name] = ([f["id"] for p in pages for f in p["features"]],
                                 [p.get("numberMatched") for p in pages])
                hrefs[name] = _first_href(pages)
            if key == "a":
                ids, count = tile_ids(api_dsn, body)
                answers["sql-plain"] = (ids, [count])
            ref_ids, ref_matched = answers[LANDSURF]
            wrong = {name: len(ids) for name, (ids, _) in answers.items() if ids != ref_ids}
            missing = [name for name, (_, m) in answers.items() if not m or any(not isinstance(v, int) for v in m)]
            differs = [name for name, (_, m) in answers.items() if set(m) != set(ref_matched)]
            if wrong or missing or differs:
                raise RuntimeError(f"servers disagree on {body}: ids differ from landsurf's ({len(ref_ids)}) for "
                                   f"{wrong}, no numberMatched from {missing}, another numberMatched from {differs}")
            for name, href in hrefs.items():
                if href is None:
                    continue
                rendered = href.startswith(servers[name].url + "/download/")
                if name in (LANDSURF, STORED) and not rendered:
                    raise RuntimeError(f"{name} answered asset href {href!r}, not under {servers[name].url}/download/")
            total_ids += len(ref_ids)
            matched_seen.append(ref_matched[0])
        if total_ids == 0:
            raise RuntimeError(f"query ({key}) matched nothing in {n} bodies: the check would prove nothing")
        report[key] = {"bodies": n, "servers": names + (["sql-plain"] if key == "a" else []), "ids_compared": total_ids,
                       "identical_ids_in_order": True, "numberMatched_on_every_page": True,
                       "numberMatched_median": statistics.median(matched_seen)}
        print(f"check ({key}): {n} bodies, {total_ids} ids, identical on {', '.join(report[key]['servers'])}",
              flush=True)
    return report


# -- the rounds ---------------------------------------------------------------------------------------------------
def cpu_per_request(result: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per completed request of the API process and of PostgreSQL (all its backends): what a
    request costs, whatever else the machine was doing."""
    machine, ok = result["machine"], max(result["ok"], 1)
    return {f"cpu_ms_per_req_{part}": round(machine[f"cpu_s_{part}"] * 1000 / ok, 2)
            for part in ("server", "db") if f"cpu_s_{part}" in machine}


def run_round(r: int, args: argparse.Namespace, servers: dict[str, Server], scope: Scope, api_dsn: str,
              superuser_dsn: str, roots: list[int], postmaster: int) -> dict[str, Any]:
    out: dict[str, Any] = {"round": r, "load1_start": loadavg(), "latency": {}, "throughput": {}}
    for key in "abc":
        query = QUERIES[key](scope)
        runs = args.runs if key != "c" else args.runs_c
        row = out["latency"][key] = {}
        for name in rotate([s for s in SERVERS_OF[key] if s in servers], r):
            forget_counts(superuser_dsn)
            with CpuShare(roots) as cpu:
                row[name] = http_latency(servers[name].url, query, runs=runs, seed=r)
            row[name]["machine"] = cpu.result()
        for kind in SQL_LATENCY[key]:
            forget_counts(superuser_dsn)
            with CpuShare(roots) as cpu:
                if kind == "sql-plain":
                    row[kind] = plain_latency(api_dsn, query, runs=runs, seed=r)
                elif kind == "sql-search":
                    row[kind] = search_latency(api_dsn, query, runs=runs, seed=r, settings=AS_PEER)
                else:
                    row[kind] = search_latency(api_dsn, query, runs=runs, seed=r, conf={"nohydrate": True},
                                               settings=AS_LANDSURF)
            row[kind]["machine"] = cpu.result()
        print(f"round {r} latency ({key}):", json.dumps({n: {k: v.get(k) for k in ("p50_ms", "p95_ms")}
                                                          for n, v in row.items()}), flush=True)
    for key in "abc":
        query = QUERIES[key](scope)
        duration = args.duration if key != "c" else args.duration_c
        row = out["throughput"][key] = {}
        for name in rotate([s for s in SERVERS_OF[key] if s in servers], r):
            forget_counts(superuser_dsn)
            with CpuShare(roots, {"server": [servers[name].pid], "db": [postmaster]}) as cpu:
                row[name] = throughput(servers[name].url, query, concurrency=args.concurrency, duration_s=duration,
                                       seed=r, timeout_s=300 if key == "c" else 60)
            row[name]["machine"] = cpu.result()
            row[name] |= cpu_per_request(row[name])
        for kind in SQL_THROUGHPUT.get(key, []):
            forget_counts(superuser_dsn)
            with CpuShare(roots, {"db": [postmaster]}) as cpu:
                row[kind] = sql_throughput(api_dsn, query, "plain" if kind == "sql-plain" else "search",
                                           concurrency=args.concurrency, duration_s=duration, seed=r)
            row[kind]["machine"] = cpu.result()
            row[kind] |= cpu_per_request(row[kind])
        print(f"round {r} throughput ({key}):", json.dumps({n: v["req_per_s"] for n, v in row.items()}), flush=True)
    out["load1_end"] = loadavg()
    return out


# -- summaries ----------------------------------------------------------------------------------------------------
def _med(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _figure(result: dict[str, Any], part: str) -> float:
    return result["rows_and_count"][part] if "rows_and_count" in result else result[part]


FIGURES = {"latency": ("p50_ms", "p95_ms"),
           "throughput": ("req_per_s", "p50_ms", "p95_ms", "cpu_ms_per_req_server", "cpu_ms_per_req_db")}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds (with min and max) of each server's p50, p95, req/s and CPU per request."""
    out: dict[str, Any] = {"latency": {}, "throughput": {}}
    for kind, fields in FIGURES.items():
        for key in rounds[0][kind]:
            names = rounds[0][kind][key].keys()
            out[kind][key] = {}
            for name in names:
                first = rounds[0][kind][key][name]
                present = [f for f in fields if f in first or "rows_and_count" in first]
                out[kind][key][name] = {f: _med([_figure(rd[kind][key][name], f) for rd in rounds]) for f in present}
            for name in names:
                first = rounds[0][kind][key][name]
                if kind == "latency":
                    out[kind][key][name]["n_returned_median"] = _figure(first, "n_returned_median")
                else:
                    out[kind][key][name]["errors"] = sum(rd[kind][key][name]["errors"] for rd in rounds)
    return out


def ratios(rounds: list[dict[str, Any]], name: str, ref: str, keys: str) -> dict[str, Any]:
    """Per-round ratios of `name` to `ref` (same round, same bodies), as median and range over rounds."""
    out: dict[str, Any] = {}
    for key in keys:
        lat = [rd["latency"][key] for rd in rounds if ref in rd["latency"].get(key, {})]
        tp = [rd["throughput"][key] for rd in rounds if ref in rd["throughput"].get(key, {})]
        if not lat or not tp:
            continue
        out[key] = {
            "throughput": _med([t[name]["req_per_s"] / t[ref]["req_per_s"] for t in tp]),
            "p95": _med([x[name]["p95_ms"] / x[ref]["p95_ms"] for x in lat]),
            "p50": _med([x[name]["p50_ms"] / x[ref]["p50_ms"] for x in lat]),
            "p95_under_load": _med([t[name]["p95_ms"] / t[ref]["p95_ms"] for t in tp]),
        }
    return out


def goals(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal, judged on the median ratio over rounds; `all_rounds` says whether every round met it too."""
    out = []
    for name, ref, tp_min, p95_max, keys in GOALS:
        r = ratios(rounds, name, ref, keys)
        for key, row in r.items():
            tp_ok = row["throughput"]["median"] >= tp_min
            p95_ok = row["p95"]["median"] <= p95_max
            load_ok = row["p95_under_load"]["median"] <= p95_max
            out.append({"server": name, "reference": ref, "query": key, "throughput_ratio": row["throughput"],
                        "throughput_goal": tp_min, "throughput_met": tp_ok,
                        "p95_ratio": row["p95"], "p95_under_load_ratio": row["p95_under_load"], "p95_goal": p95_max,
                        "p95_met": p95_ok, "p95_under_load_met": load_ok,
                        "all_rounds": row["throughput"]["min"] >= tp_min and row["p95"]["max"] <= p95_max
                        and row["p95_under_load"]["max"] <= p95_max})
    return out


def _cell(fig: dict[str, float], digits: int = 0) -> str:
    return f"{fig['median']:.{digits}f} ({fig['min']:.{digits}f}–{fig['max']:.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| query | server | p50 ms | p95 ms | items |", "|---|---|---|---|---|"]
    for key, row in s["latency"].items():
        for name, fig in row.items():
            lines.append(f"| ({key}) | {name} | {_cell(fig['p50_ms'])} | {_cell(fig['p95_ms'])} "
                         f"| {fig['n_returned_median']:g} |")
    lines += ["", f"| concurrency {result['args']['concurrency']} | server | req/s | p50 ms | p95 ms "
                  "| API CPU ms/req | DB CPU ms/req | errors |", "|---|---|---|---|---|---|---|---|"]
    for key, row in s["throughput"].items():
        for name, fig in row.items():
            cpu = [_cell(fig[f], 1) if f in fig else "–" for f in ("cpu_ms_per_req_server", "cpu_ms_per_req_db")]
            lines.append(f"| ({key}) | {name} | {_cell(fig['req_per_s'], 1)} | {_cell(fig['p50_ms'])} "
                         f"| {_cell(fig['p95_ms'])} | {cpu[0]} | {cpu[1]} | {fig['errors']} |")
    lines += ["", "| goal | query | throughput ratio | p95 ratio (one at a time) | p95 ratio (under load) | met |",
              "|---|---|---|---|---|---|"]
    for g in result["goals"]:
        met = g["throughput_met"] and g["p95_met"] and g["p95_under_load_met"]
        lines.append(f"| {g['server']} vs {g['reference']}: ≥ {g['throughput_goal']}× / ≤ {g['p95_goal']}× "
                     f"| ({g['query']}) | {_cell(g['throughput_ratio'], 2)} | {_cell(g['p95_ratio'], 2)} "
                     f"| {_cell(g['p95_under_load_ratio'], 2)} | {'yes' if met else 'no'}"
                     f"{'' if g['all_rounds'] == met else ' (not every round)' if met else ''} |")
    lines += ["", f"| experiment: {FROZEN} vs | query | throughput ratio | p95 ratio (one at a time) "
                  "| p95 ratio (under load) |", "|---|---|---|---|---|"]
    for ref, rows in result.get("experiment_gc_frozen", {}).items():
        for key, row in rows.items():
            lines.append(f"| {ref} | ({key}) | {_cell(row['throughput'], 2)} | {_cell(row['p95'], 2)} "
                         f"| {_cell(row['p95_under_load'], 2)} |")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------------------------
def _code_state() -> dict[str, Any]:
    """The commit, the files of catalog/ and bench/ that differ from it (the tree is shared and edited while the
    benchmark runs), and a digest of catalog/ as the servers imported it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "catalog", "bench"],
                           capture_output=True, text=True, timeout=30).stdout.split("\n")
    digest = hashlib.sha256()
    for path in sorted((ROOT / "catalog").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".sql"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {"commit": head, "uncommitted": sorted(line[3:] for line in dirty if line.strip()),
            "catalog_sha256": digest.hexdigest()[:16]}


def _versions() -> dict[str, str]:
    return {p: version(p) for p in ("stac-fastapi-pgstac", "pypgstac", "asyncpg", "uvicorn", "orjson")}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home)
    settings = CatalogSettings(home=home, pg_shared_buffers="2GB", statement_timeout_ms=600_000)
    if home.exists() and not args.reuse:
        EmbeddedCluster(settings).destroy()
        shutil.rmtree(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs = home / "logs"
    for d in (logs, home / CONTROL, home / STORED):  # homes (stores) of the servers on an external URL
        d.mkdir(mode=0o700, exist_ok=True)
    cluster = EmbeddedCluster(settings)
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load1_at_start": loadavg()},
        "versions": _versions(), "args": {k: v for k, v in vars(args).items() if k not in ("home", "out")},
    }
    servers: dict[str, Server] = {}
    try:
        cluster.start()
        superuser = cluster.superuser_url()
        api_dsn = cluster.url("api")
        tiles = gen.tiles(args.tiles)
        end = date(2024, 12, 31)
        scope = Scope.from_tiles(tiles, date(2016, 7, 1), end, now=end)
        stored_port = free_port()
        if not args.reuse:
            migrate(settings)
            with session(settings) as conn:
                ensure_collections(conn)  # also sets pgSTAC's `context` on: numberMatched for every client
            with psycopg.connect(with_database(superuser, "postgres"), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DB_ABS}")
                # a copy needs its template to itself: the migration's connections of this fresh cluster go
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DB_REL,))
                conn.execute(f"CREATE DATABASE {DB_ABS} TEMPLATE {DB_REL}")
            result["load"] = {}
            for db, base in ((DB_REL, None), (DB_ABS, f"http://127.0.0.1:{stored_port}")):
                stream = catalog_items(tiles, date(args.l2a_from, 1, 1), end, date(2016, 7, 1), base)
                result["load"][db] = load(with_database(cluster.url("ingest"), db), with_database(superuser, db),
                                          stream)
                result["load"][db]["asset_hrefs"] = "store-relative" if base is None else "absolute"
                print(f"load {db}:", json.dumps(result["load"][db]), flush=True)
        with psycopg.connect(api_dsn, autocommit=True) as conn:
            result["pgstac_settings"] = dict(conn.execute(
                "SELECT name, value FROM pgstac.pgstac_settings WHERE name LIKE 'context%' ORDER BY 1").fetchall())
        abs_api = with_database(api_dsn, DB_ABS)
        result["code"] = _code_state()
        servers[LANDSURF] = start_landsurf(LANDSURF, home, logs)
        servers[TUNED] = start_peer(TUNED, api_dsn, logs, api_hydrate=True)
        servers[PEER] = start_peer(PEER, api_dsn, logs, api_hydrate=False)
        servers[CONTROL] = start_landsurf(CONTROL, home / CONTROL, logs, database_url=abs_api)
        gc_stats = home / "gc-frozen.json"
        servers[FROZEN] = start_landsurf(FROZEN, home, logs, gc_stats=gc_stats, gc_freeze=True)
        with contextlib.ExitStack() as stack:
            if args.baseline:
                checkout = stack.enter_context(checkout_of(args.baseline))
                servers[STORED] = start_landsurf(STORED, home / STORED, logs, database_url=abs_api, checkout=checkout,
                                                 port=stored_port)
                result["baseline"] = args.baseline
            result["check"] = check_answers(servers, scope, api_dsn, {"a": args.check_bodies, "b": args.check_bodies,
                                                                      "c": 2})
            result["sql_plan_a"] = tile_plan(api_dsn, QUERIES["a"](scope)(random.Random(0)))
            postmaster = cluster.status().pid or 0
            roots = [s.pid for s in servers.values()] + [postmaster]
            partial = Path(args.out).with_suffix(".partial.json")
            with contextlib.ExitStack() as sampling:
                mems = {name: sampling.enter_context(peak_rss(s.pid)) for name, s in servers.items()}
                result["rounds"] = []
                for r in range(1, args.rounds + 1):
                    result["rounds"].append(run_round(r, args, servers, scope, api_dsn, superuser, roots, postmaster))
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps(result, indent=1, default=str) + "\n")
            result["rss_mb"] = {name: {"peak": m.peak_mb, "hwm": m.hwm_mb} for name, m in mems.items()}
            result["gc_frozen"] = json.loads(gc_stats.read_text())
            for s in servers.values():
                s.stop()
            partial.unlink(missing_ok=True)
    finally:
        for s in servers.values():
            s.stop()
        if not args.keep:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)
    result["machine"]["load1_at_end"] = loadavg()
    result["summary"] = summarise(result["rounds"])
    result["goals"] = goals(result["rounds"])
    result["experiment_gc_frozen"] = {ref: ratios(result["rounds"], FROZEN, ref, "ab") for ref in (LANDSURF, TUNED)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="/tmp/landsurf-bench", help="bench home (wiped unless --reuse)")
    parser.add_argument("--out", default=str(OUT), help="where the JSON of the run goes")
    parser.add_argument("--tiles", type=int, default=847, help="number of MGRS tiles (847 = the whole grid)")
    parser.add_argument("--l2a-from", type=int, default=2023, help="first year of L2A and snow items")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (>= 3 for a recorded run)")
    parser.add_argument("--runs", type=int, default=30, help="searches of (a) and (b) per server and round")
    parser.add_argument("--runs-c", type=int, default=3, help="searches of (c) (every page) per server and round")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per throughput test of (a), (b)")
    parser.add_argument("--duration-c", type=float, default=20.0, help="seconds per throughput test of (c)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--check-bodies", type=int, default=20, help="bodies of (a) and (b) in the identity check")
    parser.add_argument("--baseline", default=BASELINE, help="commit of the stored-href build ('' to leave it out)")
    parser.add_argument("--reuse", action="store_true", help="keep the loaded databases of a previous --keep run")
    parser.add_argument("--keep", action="store_true", help="leave the cluster and home in place")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.l2a_from, args.rounds, args.runs, args.runs_c = 60, 2024, 2, 5, 2
        args.duration, args.duration_c, args.check_bodies = 3.0, 3.0, 5
    result = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(markdown(result))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""What the database itself needs for a search, timed client-side like the HTTP figures.

- `pgstac.search(body)` as each API calls it: stock stac-fastapi-pgstac (items hydrated in PostgreSQL, the
  search recorded) or landsurf / the tuned peer (`conf.nohydrate`, and landsurf's `pgstac.readonly=true`);
- for query (a), plain SQL: the rows fetched through the items' indexes (the `grid:code` btree of one
  partition), as stored (dehydrated), and their count (`numberMatched`), with no pgSTAC function in between.

Each measure reads the same seeded bodies as `bench.queries.http_latency`, so the figures sit side by side.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import psycopg

from bench.queries import Body, Query, _pct, _summary

# Query (a) by hand: the same rows pgSTAC returns, in the same order (its tie-breakers are collection, id in the
# direction of the last sort key), read through the partition's `to_text(grid:code)` index.
TILE_WHERE = """collection = %(collection)s AND to_text(content->'properties'->'grid:code') = %(code)s
   AND datetime <= %(end)s::timestamptz AND end_datetime >= %(start)s::timestamptz"""
TILE_ROWS = f"""SELECT id, collection, datetime, end_datetime, geometry, content::text FROM pgstac.items
 WHERE {TILE_WHERE} ORDER BY datetime DESC, collection DESC, id DESC LIMIT %(limit)s"""
TILE_COUNT = f"SELECT count(*) FROM pgstac.items WHERE {TILE_WHERE}"

# Connection settings of each API's read pool.
AS_PEER: dict[str, str] = {}
AS_LANDSURF = {"pgstac.readonly": "true"}


def tile_params(body: Body) -> dict[str, Any]:
    """Parameters of TILE_ROWS / TILE_COUNT for a query (a) body."""
    start, end = body["datetime"].split("/")
    return {"collection": body["collections"][0], "code": body["filter"]["args"][1], "start": start, "end": end,
            "limit": body["limit"]}


def _connect(dsn: str, settings: dict[str, str]) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    conn.execute("SET statement_timeout = 120000")
    conn.execute("SET search_path TO pgstac, public")  # pgstac's functions resolve their tables through it
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return conn


def tile_ids(dsn: str, body: Body) -> tuple[list[str], int]:
    """(ids, count) of a query (a) body by plain SQL: the identity check of the SQL figures."""
    with _connect(dsn, {}) as conn:
        params = tile_params(body)
        ids = [r[0] for r in conn.execute(TILE_ROWS, params).fetchall()]
        return ids, conn.execute(TILE_COUNT, params).fetchone()[0]


def tile_plan(dsn: str, body: Body) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the plain select: which index, how many rows and buffers, how long inside PostgreSQL."""
    with _connect(dsn, {}) as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + TILE_ROWS, tile_params(body)).fetchone()[0]
    top = plan[0]
    nodes, todo = [], [top["Plan"]]
    while todo:
        node = todo.pop()
        if "Index Name" in node or node["Node Type"].startswith(("Index", "Bitmap", "Seq")):
            nodes.append({k: node.get(k) for k in ("Node Type", "Relation Name", "Index Name", "Actual Rows",
                                                    "Shared Hit Blocks", "Shared Read Blocks")})
        todo.extend(node.get("Plans", []))
    return {"execution_ms": top["Execution Time"], "planning_ms": top["Planning Time"], "scans": nodes}


def plain_latency(dsn: str, builder: Query, runs: int = 30, warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Query (a) by plain SQL on one connection: rows, count, and both (what an answer with numberMatched needs)."""
    rng = random.Random(seed)
    rows_t, count_t, both_t, counts = [], [], [], []
    with _connect(dsn, {}) as conn, conn.cursor() as cur:
        for i in range(warmup + runs):
            params = tile_params(builder(rng))
            t0 = time.perf_counter()
            cur.execute(TILE_ROWS, params)
            n = len(cur.fetchall())
            t1 = time.perf_counter()
            cur.execute(TILE_COUNT, params)
            cur.fetchone()
            t2 = time.perf_counter()
            if i >= warmup:
                rows_t.append(t1 - t0)
                count_t.append(t2 - t1)
                both_t.append(t2 - t0)
                counts.append(n)
    return {"rows": _summary(rows_t, counts), "count": _summary(count_t, counts),
            "rows_and_count": _summary(both_t, counts)}


def search_latency(dsn: str, builder: Query, runs: int = 30, warmup: int = 1, seed: int = 0,
                   conf: dict[str, Any] | None = None, settings: dict[str, str] | None = None) -> dict[str, float]:
    """`pgstac.search()` of the same bodies on one connection (every page when the query pages), with the
    `conf` and connection settings of the API it stands for."""
    from bench.queries import _next_link, _page_token

    rng, times, counts = random.Random(seed), [], []
    with _connect(dsn, settings or {}) as conn, conn.cursor() as cur:
        for i in range(warmup + runs):
            body = builder(rng)
            if conf:
                body = {**body, "conf": conf}
            spent, n = 0.0, 0
            while True:
                t0 = time.perf_counter()
                cur.execute("SELECT pgstac.search(%s::jsonb)::text", (json.dumps(body),))
                row = cur.fetchone()
                spent += time.perf_counter() - t0
                page = json.loads(row[0]) if row else {"features": []}
                n += len(page["features"])
                token = _page_token(_next_link(page))
                if not builder.follow_next or not token:
                    break
                body = {**body, "token": token}
            if i >= warmup:
                times.append(spent)
                counts.append(n)
    return _summary(times, counts)


async def _sql_throughput(dsn: str, builder: Query, statement: str, concurrency: int, duration_s: float,
                          seed: int, settings: dict[str, str]) -> dict[str, float]:
    latencies: list[float] = []

    async def worker(i: int, deadline: float) -> None:
        rng = random.Random(f"{seed}/{i}")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            await conn.execute("SET statement_timeout = 120000")
            await conn.execute("SET search_path TO pgstac, public")
            for name, value in settings.items():
                await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            while time.perf_counter() < deadline:
                body = builder(rng)
                t0 = time.perf_counter()
                if statement == "plain":
                    params = tile_params(body)
                    await (await conn.execute(TILE_ROWS, params)).fetchall()
                    await (await conn.execute(TILE_COUNT, params)).fetchone()
                else:
                    await (await conn.execute("SELECT pgstac.search(%s::jsonb)::text",
                                              (json.dumps({**body, "conf": {"nohydrate": True}}),))).fetchone()
                latencies.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(i, t_start + duration_s) for i in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    ms = [t * 1000 for t in latencies] or [float("nan")]
    return {"req_per_s": round(len(latencies) / elapsed, 2), "p50_ms": round(_pct(ms, 0.5), 1),
            "p95_ms": round(_pct(ms, 0.95), 1), "ok": len(latencies), "errors": 0, "elapsed_s": round(elapsed, 2)}


def sql_throughput(dsn: str, builder: Query, statement: str, concurrency: int = 8, duration_s: float = 20,
                   seed: int = 0) -> dict[str, float]:
    """Closed-loop load on the database alone, like `bench.queries.throughput` on an API: `statement` is
    "plain" (query (a)'s rows + count by plain SQL) or "search" (`pgstac.search()` as landsurf calls it)."""
    settings = AS_LANDSURF if statement == "search" else {}
    return asyncio.run(_sql_throughput(dsn, builder, statement, concurrency, duration_s, seed, settings))

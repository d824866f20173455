"""Search workloads and their measurement, independent of how the servers were started.

The same seeded request bodies go to every STAC API over HTTP and to the database over SQL
(`bench.catalog_sql`), so the latencies compare like with like. Latency runs time the requests only, not
the client's JSON parsing; throughput times whole requests. Usage:

    scope = Scope.from_tiles(tiles, date(2016, 7, 1), date(2024, 12, 31))
    http_latency("http://127.0.0.1:8081", QUERIES["a"](scope))
    throughput("http://127.0.0.1:8081", QUERIES["a"](scope), concurrency=8, duration_s=20)
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

Body = dict[str, Any]
FRANCE = (-5.0, 42.3, 8.2, 51.1)
AOI = (-8.0, 33.5, 24.0, 57.0)
MAX_PAGES = 10_000


@dataclass(frozen=True, slots=True)
class Scope:
    """What the catalogue holds, so that each generated query can match something."""

    codes: tuple[str, ...]
    start: date = date(2016, 7, 1)
    end: date = date(2024, 12, 31)
    now: date = date(2024, 12, 31)
    area: tuple[float, float, float, float] = AOI

    @classmethod
    def from_tiles(cls, tiles: Iterable[Any], start: date, end: date, now: date | None = None) -> Scope:
        """Scope of a catalogue built from `bench.items` tiles (anything with .code and .bbox)."""
        tiles = list(tiles)
        area = (min(t.bbox[0] for t in tiles), min(t.bbox[1] for t in tiles),
                max(t.bbox[2] for t in tiles), max(t.bbox[3] for t in tiles))
        return cls(tuple(t.code for t in tiles), start, end, now or end, area)


@dataclass(frozen=True, slots=True)
class Query:
    """A named body builder; `follow_next` makes one run page through every result."""

    name: str
    build: Callable[[random.Random], Body]
    follow_next: bool = False

    def __call__(self, rng: random.Random) -> Body:
        return self.build(rng)


def _interval(first: date, last: date) -> str:
    return f"{first}T00:00:00Z/{last}T23:59:59Z"


def _month(rng: random.Random, scope: Scope) -> tuple[date, date]:
    m = rng.randrange(scope.start.year * 12 + scope.start.month - 1, scope.end.year * 12 + scope.end.month)
    first = date(m // 12, m % 12 + 1, 1)
    return first, (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def tile_recent(scope: Scope) -> Query:
    """(a) one tile by `grid:code`, L2A, the 30 days before `now`, newest first, limit 10."""
    def build(rng: random.Random) -> Body:
        return {"collections": ["sentinel2-l2a"], "filter-lang": "cql2-json",
                "filter": {"op": "=", "args": [{"property": "grid:code"}, f"MGRS-{rng.choice(scope.codes)}"]},
                "datetime": _interval(scope.now - timedelta(days=30), scope.now),
                "sortby": [{"field": "datetime", "direction": "desc"}], "limit": 10}
    return Query("a-tile-recent", build)


def bbox_month_cloud(scope: Scope) -> Query:
    """(b) a 1x1 degree box inside the covered area, one month, cloud cover below 20 %, all collections."""
    def build(rng: random.Random) -> Body:
        x0, y0, x1, y1 = scope.area
        lon, lat = round(rng.uniform(x0, x1 - 1), 3), round(rng.uniform(y0, y1 - 1), 3)
        return {"bbox": [lon, lat, round(lon + 1, 3), round(lat + 1, 3)], "datetime": _interval(*_month(rng, scope)),
                "filter-lang": "cql2-json", "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
                "limit": 100}
    return Query("b-bbox-month-cloud", build)


def country_year_l3a(scope: Scope) -> Query:
    """(c) France, one calendar year of L3A composites, limit 1000, paged to the end."""
    def build(rng: random.Random) -> Body:
        year = rng.randrange(scope.start.year, scope.end.year + 1)
        return {"collections": ["sentinel2-l3a"], "bbox": list(FRANCE),
                "datetime": _interval(date(year, 1, 1), date(year, 12, 31)), "limit": 1000}
    return Query("c-country-year-l3a", build, follow_next=True)


QUERIES: dict[str, Callable[[Scope], Query]] = {"a": tile_recent, "b": bbox_month_cloud, "c": country_year_l3a}


def _pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, like numpy's default, without numpy."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def _summary(times_s: list[float], counts: list[int]) -> dict[str, float]:
    ms = [t * 1000 for t in times_s]
    return {"p50_ms": round(_pct(ms, 0.5), 1), "p95_ms": round(_pct(ms, 0.95), 1),
            "n_returned_median": statistics.median(counts), "runs": len(ms)}


def _next_link(page: Body) -> Body | None:
    return next((link for link in page.get("links", []) if link.get("rel") == "next"), None)


def _follow(link: Body, body: Body) -> tuple[str, str, Body | None]:
    """(method, href, json body) for a STAC API next link: GET with the token in the href, or POST with a body
    that replaces the previous one, or is merged into it when the link says `merge: true`."""
    if link.get("method", "GET").upper() == "POST":
        new = link.get("body", {})
        return "POST", link["href"], {**body, **new} if link.get("merge") else new
    return "GET", link["href"], None


def _require_loopback(base_url: str) -> None:
    """Load generators must not be pointed at someone else's server by a typo."""
    host = urlsplit(base_url).hostname or ""
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as e:
        raise ValueError(f"cannot resolve {host!r} from {base_url}") from e
    if not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addrs):
        raise ValueError(f"{base_url} is not a loopback address; refusing to generate load against it")


async def _http_run(client: httpx.AsyncClient, base_url: str, body: Body, follow: bool) -> tuple[float, int]:
    """(seconds spent in requests, features returned) for one search, following `next` when asked."""
    method, href = "POST", f"{base_url.rstrip('/')}/search"
    payload: Body | None = body
    spent, n = 0.0, 0
    for _ in range(MAX_PAGES):
        t0 = time.perf_counter()
        r = await client.request(method, href, json=payload)
        spent += time.perf_counter() - t0
        r.raise_for_status()
        page = r.json()
        n += len(page["features"])
        link = _next_link(page)
        if not follow or link is None:
            return spent, n
        method, href, payload = _follow(link, payload or body)
    raise RuntimeError(f"more than {MAX_PAGES} pages for {body}")


async def _latency(base_url: str, builder: Query, runs: int, warmup: int, seed: int,
                   timeout_s: float) -> dict[str, float]:
    rng, times, counts = random.Random(seed), [], []
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for i in range(warmup + runs):
            spent, n = await _http_run(client, base_url, builder(rng), builder.follow_next)
            if i >= warmup:
                times.append(spent)
                counts.append(n)
    return _summary(times, counts)


def http_latency(base_url: str, builder: Query, runs: int = 30, warmup: int = 1, seed: int = 0,
                 timeout_s: float = 300) -> dict[str, float]:
    """p50/p95 of POST /search (all pages when the query pages), over `runs` seeded bodies after `warmup`.

    One request at a time on one keep-alive connection; an HTTP error fails the measurement.
    """
    _require_loopback(base_url)
    return asyncio.run(_latency(base_url, builder, runs, warmup, seed, timeout_s))


def _page_token(link: Body | None) -> str | None:
    """The `next:` token of a pgSTAC next link (in its href, or in a POST body), ready for a search body."""
    if link is None:
        return None
    token = (link.get("body") or {}).get("token") or parse_qs(urlsplit(link["href"]).query).get("token", [None])[0]
    if not token:
        return None
    return token if token.startswith(("next:", "prev:")) else f"next:{token}"


def search_pages(base_url: str, body: Body, follow: bool, timeout_s: float = 300) -> list[Body]:
    """Every page of one POST /search (only the first unless `follow`), for checks rather than timing."""
    _require_loopback(base_url)
    pages: list[Body] = []
    method, href, payload = "POST", f"{base_url.rstrip('/')}/search", body
    with httpx.Client(timeout=timeout_s) as client:
        for _ in range(MAX_PAGES):
            r = client.request(method, href, json=payload)
            r.raise_for_status()
            pages.append(r.json())
            link = _next_link(pages[-1])
            if not follow or link is None:
                return pages
            method, href, payload = _follow(link, payload or body)
    raise RuntimeError(f"more than {MAX_PAGES} pages for {body}")


async def _throughput(base_url: str, builder: Query, concurrency: int, duration_s: float, max_requests: int,
                      timeout_s: float, seed: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    started = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t_start = time.perf_counter()
        deadline = t_start + duration_s

        async def worker(i: int) -> None:
            nonlocal errors, started
            rng = random.Random(f"{seed}/{i}")
            while time.perf_counter() < deadline and started < max_requests:
                started += 1
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(_http_run(client, base_url, builder(rng), builder.follow_next),
                                           timeout_s)
                except (TimeoutError, httpx.HTTPError, KeyError, ValueError) as exc:
                    errors += 1
                    status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
                    kind = f"{type(exc).__name__}{f' {status}' if status else ''}"
                    kinds[kind] = kinds.get(kind, 0) + 1
                else:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    ms = [t * 1000 for t in latencies] or [float("nan")]
    return {"req_per_s": round(len(latencies) / elapsed, 2), "p50_ms": round(_pct(ms, 0.5), 1),
            "p95_ms": round(_pct(ms, 0.95), 1), "ok": len(latencies), "errors": errors, "error_kinds": kinds,
            "elapsed_s": round(elapsed, 2)}


def throughput(base_url: str, builder: Query, concurrency: int = 8, duration_s: float = 30,
               max_requests: int = 100_000, timeout_s: float = 60, seed: int = 0) -> dict[str, Any]:
    """Closed-loop load: `concurrency` clients issue seeded searches back to back until time or count runs out.

    A request that pages counts once. No request starts after `duration_s` and each is cut at `timeout_s`
    (counted as an error), so the call returns within `duration_s + timeout_s`. Call from synchronous code.
    """
    _require_loopback(base_url)
    return asyncio.run(_throughput(base_url, builder, concurrency, duration_s, max_requests, timeout_s, seed))


def _status_kb(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in keys:
                    out[name] = int(value.split()[0])
    except OSError:  # the process ended
        pass
    return out


def _descendants(pid: int) -> list[int]:
    """pid and its descendants, from /proc/*/stat (this kernel has no /proc/*/task/*/children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


@dataclass
class PeakRss:
    """Samples the resident memory of a process tree in the background, as a context manager.

    `peak_mb` is the peak of summed VmRSS (shared pages, e.g. PostgreSQL's shared_buffers, count once per
    process), `peak_anon_mb` the peak of summed RssAnon (private memory), `hwm_mb` the largest VmHWM (the
    kernel's own high-water mark, which catches peaks between samples) of the tree's processes at exit.
    """

    pid: int
    interval_s: float = 0.25
    children: bool = True
    peak_mb: int = 0
    peak_anon_mb: int = 0
    hwm_mb: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def sample(self) -> None:
        pids = _descendants(self.pid) if self.children else [self.pid]
        stats = [_status_kb(p, "VmRSS", "RssAnon") for p in pids]
        self.peak_mb = max(self.peak_mb, sum(s.get("VmRSS", 0) for s in stats) // 1024)
        self.peak_anon_mb = max(self.peak_anon_mb, sum(s.get("RssAnon", 0) for s in stats) // 1024)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread = threading.Thread(target=self._run, name=f"peak-rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        pids = _descendants(self.pid) if self.children else [self.pid]
        self.hwm_mb = max(_status_kb(p, "VmHWM").get("VmHWM", 0) for p in pids) // 1024

    def __int__(self) -> int:
        return self.peak_mb


def peak_rss(pid: int, interval_s: float = 0.25, children: bool = True) -> PeakRss:
    """`with peak_rss(pid) as m: ...` then `m.peak_mb` (also `int(m)`), `m.peak_anon_mb` and `m.hwm_mb`."""
    return PeakRss(pid, interval_s, children)

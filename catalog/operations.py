"""Ingest's operational state for `/health` and `/metrics`: plain functions on an asyncpg connection.

The inbox watcher writes its heartbeat and what it sees to `landsurf.inbox_watchers` at every pass
(ingest/watch.py); receipts live in `landsurf.deliveries`. This module only reads them, with a timeout on every
query, so the API can tell at a glance whether deliveries are flowing:

    state = await inbox_state(conn)         # a dict, JSON-ready: the readiness detail of /health
    for name, value in inbox_gauges(state).items():
        ...                                 # one Prometheus gauge per name (no labels)

`state["ok"]` is False when a watcher died without stopping (heartbeat older than `stale_after_s`) or when an
open receipt has had no live job for `stranded_after_s` (the latter needs SELECT on `public.procrastinate_jobs`;
without it `stranded` is None and does not count).
"""

from __future__ import annotations

import math
from typing import Any

WATCHER_STALE_S = 60.0
STRANDED_AFTER_S = 120.0
OPEN = ("received", "processing", "retrying")


async def inbox_state(conn: Any, *, stale_after_s: float = WATCHER_STALE_S,
                      stranded_after_s: float = STRANDED_AFTER_S, timeout: float = 5.0) -> dict[str, Any]:
    """Watcher liveness, the inbox's untaken entries, receipts per status, open and stranded receipts."""
    rows = await conn.fetch(
        "SELECT id, inbox, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s, "
        "stopped_at IS NOT NULL AS stopped, untaken, "
        "extract(epoch FROM now() - oldest_untaken_since)::float8 AS oldest_untaken_age_s, taken, refused, "
        "last_error, extract(epoch FROM now() - last_error_at)::float8 AS last_error_age_s "
        "FROM landsurf.inbox_watchers ORDER BY heartbeat_at DESC", timeout=timeout)
    watchers = [dict(r) for r in rows]
    live = [w for w in watchers if not w["stopped"] and w["heartbeat_age_s"] <= stale_after_s]
    dead = [w for w in watchers if not w["stopped"] and w["heartbeat_age_s"] > stale_after_s]
    state = "running" if live else "dead" if dead else "stopped" if watchers else "none"
    shown = live or dead or watchers
    ages = [w["oldest_untaken_age_s"] for w in (live or dead) if w["oldest_untaken_age_s"] is not None]
    untaken: dict[str, int] = {}  # watchers of one inbox see the same entries: the largest count per inbox
    for w in live or dead:
        untaken[w["inbox"]] = max(untaken.get(w["inbox"], 0), w["untaken"])
    watcher = {
        "state": state,
        "running": bool(live),
        "heartbeat_age_s": _round(shown[0]["heartbeat_age_s"]) if shown else None,
        "inbox": shown[0]["inbox"] if shown else None,
        "untaken": sum(untaken.values()),
        "oldest_untaken_age_s": _round(max(ages)) if ages else None,
        "taken": sum(w["taken"] for w in (live or dead)),
        "refused": sum(w["refused"] for w in (live or dead)),
        "last_error": shown[0]["last_error"] if shown else None,
        "last_error_age_s": _round(shown[0]["last_error_age_s"]) if shown else None,
        "watchers": len(live),
    }

    counts = {r["status"]: r["n"] for r in await conn.fetch(
        "SELECT status, count(*)::int AS n FROM landsurf.deliveries GROUP BY status", timeout=timeout)}
    oldest_open = await conn.fetchval(
        "SELECT extract(epoch FROM now() - min(received_at))::float8 FROM landsurf.deliveries "
        "WHERE status = ANY($1::text[])", list(OPEN), timeout=timeout)
    stranded = None
    readable = await conn.fetchval(
        "SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL "
        "AND has_table_privilege('public.procrastinate_jobs', 'SELECT')", timeout=timeout)
    if readable:
        stranded = await conn.fetchval(
            "SELECT count(*)::int FROM landsurf.deliveries d WHERE d.status = ANY($1::text[]) "
            "AND d.updated_at <= now() - make_interval(secs => $2) AND NOT EXISTS (SELECT 1 FROM "
            "procrastinate_jobs j WHERE j.task_name = 'ingest.delivery' AND j.status IN ('todo', 'doing') "
            "AND j.args->>'receipt_id' = d.id::text)", list(OPEN), float(stranded_after_s), timeout=timeout)
    deliveries = {
        "counts": counts,
        "open": sum(counts.get(s, 0) for s in OPEN),
        "oldest_open_age_s": _round(oldest_open),
        "failed": counts.get("failed", 0),
        "stranded": stranded,
    }
    return {"ok": state != "dead" and not stranded, "watcher": watcher, "deliveries": deliveries}


def inbox_gauges(state: dict[str, Any]) -> dict[str, float]:
    """Prometheus gauges (name → value) from `inbox_state`; unknown values are NaN."""
    w, d = state["watcher"], state["deliveries"]
    return {
        "landsurf_inbox_watcher_up": 1.0 if w["running"] else 0.0,
        "landsurf_inbox_watcher_heartbeat_age_seconds": _num(w["heartbeat_age_s"]),
        "landsurf_inbox_untaken": float(w["untaken"]),
        "landsurf_inbox_oldest_untaken_seconds": _num(w["oldest_untaken_age_s"], 0.0),
        "landsurf_deliveries_open": float(d["open"]),
        "landsurf_deliveries_oldest_open_seconds": _num(d["oldest_open_age_s"], 0.0),
        "landsurf_deliveries_failed": float(d["failed"]),
        "landsurf_deliveries_stranded": _num(d["stranded"]),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _num(value: float | None, default: float = math.nan) -> float:
    return default if value is None else float(value)

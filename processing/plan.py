"""Planning with no human in the loop, and the lineage cascade: which derived products to queue, and when.

* An L2A published as the current version → its snow map; the L3A of every month whose ±23-day window it
  completes (the first L2A of the tile dated after the window's end) and of every month whose window holds it
  when that L3A exists already (the cascade: it is made again only if its inputs changed).
* A new version of any input (an L2A re-delivered, a DEM replaced) → every current product with a
  `derived_from` link to the superseded item is asked for again.
* A snow map published → the SCDs whose period (± margin) holds it (cascade), and the SCD of a hydrological year
  that it closes (the first snow map dated after its end + margin).
* The worker's tick (every sweep): L3As whose window ended more than `l3a_deadline_days` ago with no later L2A,
  and L2As left without a snow map (a deferral lost with a crash).

Everything here only queues requests; `processing.derive.run_request` decides, by the inputs' signature, whether
there is anything to make. A product made again with the same inputs is a no-op, so the cascade ends; each job
holds its product's lock, so two runs never race to publish two current versions.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Iterable

from catalog.collections import DEM, S2_L2A, S2_L3A, S2_SCD, S2_SNOW
from catalog.database import session
from catalog.errors import LandsurfError
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from catalog.store import api_path
from processing.derive import DerivedRequest, current_product, parse_l2a_id
from processing.settings import ProcessingSettings

log = get_logger(__name__)
DERIVED = (S2_SNOW, S2_L3A, S2_SCD)


def _enabled() -> bool:
    return ProcessingSettings().auto_derive


def queue_requests(settings: CatalogSettings, requests: Iterable[DerivedRequest], cause: str) -> list[int]:
    """Queue each request once (a waiting job of the same product absorbs it); returns the new job ids."""
    from ingest.settings import IngestSettings
    from processing.queue import defer_derive, opened

    unique = {r.key: r for r in requests}
    if not unique:
        return []
    jobs = []
    with opened(settings, IngestSettings()) as app:
        for req in unique.values():
            job = defer_derive(settings, req, cause=cause, requested_by="landsurf", app=app)
            if job is not None:
                jobs.append(job)
                log.info("derived product queued", request=req.describe(), job=job, cause=cause)
    return jobs


def dependants(settings: CatalogSettings, collection: str, item_id: str, tile: str) -> list[DerivedRequest]:
    """The requests of every current derived product of `tile` with a `derived_from` link to an item."""
    import json

    link = [{"rel": "derived_from", "href": api_path("collections", collection, "items", item_id)}]
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT content->'properties'->'landsurf:request' FROM pgstac.items WHERE collection = ANY(%s) "
            "AND content->'properties'->>'grid:code' = %s AND content->'links' @> %s::jsonb",
            (list(DERIVED), f"MGRS-{tile}", json.dumps(link))).fetchall()
    out = []
    for (args,) in rows:
        try:
            out.append(DerivedRequest.from_args(args or {}))
        except LandsurfError as exc:
            log.warning("derived item without a usable request", error=str(exc))
    return out


def _l2a_dates(settings: CatalogSettings, tile: str, first: date, last: date) -> list[date]:
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT datetime FROM pgstac.items WHERE collection = %s AND content->'properties'->>'grid:code' = %s "
            "AND datetime >= %s AND datetime < %s ORDER BY datetime",
            (S2_L2A, f"MGRS-{tile}", _day(first), _day(last) + timedelta(days=1))).fetchall()
    return [r[0].astimezone(timezone.utc).date() for r in rows]


def _day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def _months(around: date, before: int, after: int) -> list[str]:
    out = []
    for k in range(-before, after + 1):
        index = around.year * 12 + around.month - 1 + k
        out.append(f"{index // 12:04d}-{index % 12 + 1:02d}")
    return out


def l3a_requests(settings: CatalogSettings, tile: str, acquired: date) -> list[DerivedRequest]:
    """L3As an L2A of `tile` acquired on `acquired` makes due: windows it completes, existing ones it is in."""
    from processing.l3a import L3AParams, window

    params = L3AParams.load()
    months = _months(acquired, 3, 1)
    spans = {m: window(DerivedRequest("l3a", tile, month=m).synthesis_date, params) for m in months}
    dates = _l2a_dates(settings, tile, min(f for f, _ in spans.values()), acquired + timedelta(days=62))
    latest = max(dates, default=None)
    out = []
    for month, (first, last) in spans.items():
        if not any(first <= d <= last for d in dates):
            continue
        req = DerivedRequest("l3a", tile, month=month)
        exists = current_product(settings, req) is not None
        if (first <= acquired <= last and exists) or (not exists and latest is not None and latest > last):
            out.append(req)
    return out


def on_l2a_published(settings: CatalogSettings, outcome) -> list[int]:
    """The hook ingest calls after publishing an L2A (`ingest.pipeline.on_published`)."""
    if not _enabled() or outcome.collection != S2_L2A or not outcome.product_id:
        return []  # published as history: the current version, and so every product, is unchanged
    _, tile, when = parse_l2a_id(outcome.product_id)
    requests = [DerivedRequest("snow", l2a_id=outcome.product_id)]
    superseded = (outcome.reason or "").removeprefix("supersedes ") if (outcome.reason or "").startswith(
        "supersedes ") else None
    if superseded:
        requests += dependants(settings, S2_L2A, superseded, tile)
    requests += l3a_requests(settings, tile, when.date())
    return queue_requests(settings, requests, f"L2A {outcome.product_id} published")


def on_dem_published(settings: CatalogSettings, tile: str, superseded: str | None) -> list[int]:
    """A DEM registered: the snow maps made with the one it replaces, and those made in pass-1-only mode (no DEM,
    or one that did not cover them), are asked for again (a run whose inputs did not change makes nothing)."""
    if not _enabled():
        return []
    from processing.derive import normalise_tile

    tile = normalise_tile(tile)
    requests = dependants(settings, DEM, superseded, tile) if superseded else []
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT content->'properties'->'landsurf:request' FROM pgstac.items WHERE collection = %s "
            "AND content->'properties'->>'grid:code' = %s AND (content->'properties'->>'landsurf:pass1_only')::boolean",
            (S2_SNOW, f"MGRS-{tile}")).fetchall()
    requests += [DerivedRequest.from_args(args) for (args,) in rows if args]
    return queue_requests(settings, requests, f"DEM of T{tile} registered")


def after_derived(settings: CatalogSettings, req: DerivedRequest, item_id: str) -> list[int]:
    """After a derived product is published: the SCDs its snow map feeds (cascade, closed hydrological year)."""
    if not _enabled():
        return []
    if req.kind == "l3a":  # the month's mosaic overview (debounced: one build for a while of publications)
        from processing.mosaics import queue_overview

        job = queue_overview(settings, S2_L3A, req.month, f"L3A {item_id} published")
        return [job] if job is not None else []
    if req.kind != "snow":
        return []
    from processing.scd import ScdParams, hydrological_year

    _, tile, when = parse_l2a_id(req.l2a_id)
    day = when.date()
    margin = timedelta(days=ScdParams.load().date_margin_days)
    requests = []
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            "SELECT content->'properties'->'landsurf:request' FROM pgstac.items WHERE collection = %s "
            "AND content->'properties'->>'grid:code' = %s AND datetime <= %s AND end_datetime >= %s",
            (S2_SCD, f"MGRS-{tile}", _day(day + margin), _day(day - margin))).fetchall()
    for (args,) in rows:
        if args:
            requests.append(DerivedRequest.from_args(args))
    for year in (day.year - 2, day.year - 1):
        start, stop = hydrological_year(year)
        closed = stop + margin
        if closed < day <= closed + timedelta(days=366):
            req = DerivedRequest("scd", tile, start=start, stop=stop)
            if current_product(settings, req) is None and _has_snow(settings, tile, start, stop):
                requests.append(req)
    return queue_requests(settings, requests, f"snow map {item_id} published")


def _has_snow(settings: CatalogSettings, tile: str, start: date, stop: date) -> bool:
    with session(settings, "ingest") as conn:
        return conn.execute(
            "SELECT 1 FROM pgstac.items WHERE collection = %s AND content->'properties'->>'grid:code' = %s "
            "AND datetime >= %s AND datetime < %s LIMIT 1",
            (S2_SNOW, f"MGRS-{tile}", _day(start), _day(stop) + timedelta(days=1))).fetchone() is not None


def _attempted(settings: CatalogSettings, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    with session(settings, "ingest") as conn:
        rows = conn.execute("SELECT DISTINCT key FROM landsurf.derived_requests WHERE key = ANY(%s)",
                            (keys,)).fetchall()
    return {r[0] for r in rows}


STAGING_MAX_AGE_S = 24 * 3600  # far longer than any derived product takes


def _clean_staging(settings: CatalogSettings) -> list[str]:
    """Staging directories of derived products left by killed jobs (`.staging/derive-*`, untouched for a day)."""
    import shutil
    import time

    from ingest.settings import IngestSettings

    root = IngestSettings.staging_dir(settings)
    removed = []
    try:
        for entry in root.glob("derive-*"):
            if time.time() - entry.stat().st_mtime > STAGING_MAX_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    except OSError as exc:
        log.warning("staging of derived products not cleaned", error=str(exc))
    if removed:
        log.info("staging of killed derived-product jobs removed", directories=removed)
    return removed


def tick(settings: CatalogSettings, today: date | None = None) -> list[int]:
    """The worker's periodic planning: late L3As and L2As without a snow map (each tried once: a request
    already made, whatever its outcome, is not queued again by the tick); and staging left by killed jobs."""
    _clean_staging(settings)
    if not _enabled():
        return []
    from processing.l3a import L3AParams, window

    processing = ProcessingSettings()
    today = today or datetime.now(timezone.utc).date()
    since = today - timedelta(days=processing.derive_lookback_days)
    with session(settings, "ingest") as conn:
        l2as = conn.execute(
            "SELECT l.id, l.content->'properties'->>'grid:code', l.datetime FROM pgstac.items l "
            "WHERE l.collection = %s AND l.datetime >= %s AND NOT EXISTS (SELECT 1 FROM pgstac.items s "
            "WHERE s.collection = %s AND s.datetime = l.datetime "
            "AND s.content->'properties'->>'grid:code' = l.content->'properties'->>'grid:code')",
            (S2_L2A, _day(since), S2_SNOW)).fetchall()
        days = conn.execute(
            "SELECT DISTINCT content->'properties'->>'grid:code', (datetime AT TIME ZONE 'UTC')::date "
            "FROM pgstac.items WHERE collection = %s AND datetime >= %s", (S2_L2A, _day(since))).fetchall()
    requests = [DerivedRequest("snow", l2a_id=i) for i, _, _ in l2as]
    params = L3AParams.load()
    due: set[tuple[str, str]] = set()
    for code, day in days:
        for m in _months(day, 1, 1):
            first, last = window(DerivedRequest("l3a", "31TCH", month=m).synthesis_date, params)
            if first <= day <= last and last + timedelta(days=processing.l3a_deadline_days) < today:
                due.add((code.removeprefix("MGRS-"), m))
    for tile, m in sorted(due):
        req = DerivedRequest("l3a", tile, month=m)
        if current_product(settings, req) is None:
            requests.append(req)
    unique = {r.key: r for r in requests}
    tried = _attempted(settings, list(unique))
    return queue_requests(settings, [r for k, r in unique.items() if k not in tried], "planning tick")

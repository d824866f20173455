"""Derived-product requests: what to make (`DerivedRequest`), asking for it (`request_product`), following it
(`request_status`), and running it (`run_request`, the body of the `processing.derive` task).

A request names a product by its identity (kind, tile and date or period), never by version: its `key` is the
product id without the version suffix. It is the queueing lock of its job (one waiting job per product) and its
lock (one running job per product), and `catalog.publish` keeps one current version per product.

Running a request is idempotent and drives the lineage cascade: it reads the current inputs from the catalog,
computes their signature (the input item ids, the software version and the parameter-set hash), and does nothing
when the current product already has that signature. Otherwise it runs the algorithm into a staging directory and
publishes a new version (the old one goes to history). A re-delivered L2A (a new current version) therefore
re-runs exactly the products whose inputs changed, and re-running an unchanged product is a no-op: the cascade
ends, and never loops (snow → SCD, L2A → snow, L3A is a DAG).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Literal

import psycopg

from catalog import __version__
from catalog.collections import S2_L3A, S2_SCD, S2_SNOW
from catalog.database import session
from catalog.errors import BadRequest, DatabaseError, LandsurfError, NotFound
from catalog.logging import get_logger
from catalog.settings import CatalogSettings

log = get_logger(__name__)

Kind = Literal["snow", "l3a", "scd"]
KINDS: tuple[str, ...] = ("snow", "l3a", "scd")
COLLECTIONS: dict[str, str] = {"snow": S2_SNOW, "l3a": S2_L3A, "scd": S2_SCD}
Status = Literal["published", "queued", "running", "failed"]
_L2A_ID = re.compile(r"^(SENTINEL2[A-D])_(\d{8}-\d{6}-\d{3})_L2A_T(\d{2}[A-Z]{3})_([A-Z])_V(\d+-\d+)$")
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")


class DeriveInputError(BadRequest):
    """The request cannot be made: its inputs are not (or no longer) in the catalog. Not retried."""

    exit_code = 6


class TransientDeriveError(LandsurfError):
    """The system failed (database down, disk full, I/O error): the job is retried with backoff."""

    exit_code = 7


def normalise_tile(tile: str) -> str:
    from ingest.synthetic.grid import tile_grid

    try:
        return tile_grid(str(tile)).tile
    except ValueError as exc:
        raise BadRequest(str(exc), "give an MGRS tile id such as 31TCH") from exc


def parse_l2a_id(l2a_id: str) -> tuple[str, str, datetime]:
    """(platform, tile, acquisition time) of a MUSCATE L2A identifier."""
    m = _L2A_ID.match(l2a_id or "")
    if not m:
        raise BadRequest(f"{l2a_id!r} is not a MUSCATE Sentinel-2 L2A identifier",
                         "give an id such as SENTINEL2A_20240603-104010-000_L2A_T31TCH_C_V1-0")
    when = datetime.strptime(m[2], "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc)
    return m[1], m[3], when


@dataclass(frozen=True)
class DerivedRequest:
    """One derived product, by identity: a snow map of an L2A, an L3A of a tile-month, an SCD of a tile-period."""

    kind: str
    tile: str | None = None
    l2a_id: str | None = None
    month: str | None = None  # "YYYY-MM" (l3a)
    start: date | None = None  # scd period (inclusive); a hydrological year: 1 Sep N – 31 Aug N+1
    stop: date | None = None

    def validate(self) -> "DerivedRequest":
        """The request, normalised (tile from the L2A id, `T` prefix dropped); `BadRequest` naming what is wrong."""
        if self.kind not in KINDS:
            raise BadRequest(f"unknown product kind {self.kind!r}", f"give one of {', '.join(KINDS)}")
        if self.kind == "snow":
            if not self.l2a_id:
                raise BadRequest("a snow map is asked for by its L2A: l2a_id is missing", "give l2a_id")
            _, tile, _ = parse_l2a_id(self.l2a_id)
            if self.tile and normalise_tile(self.tile) != tile:
                raise BadRequest(f"tile {self.tile} is not the tile of {self.l2a_id}", "omit tile or fix it")
            return DerivedRequest("snow", tile, self.l2a_id)
        if not self.tile:
            raise BadRequest(f"an {self.kind} product is asked for by tile: tile is missing", "give tile, e.g. 31TCH")
        tile = normalise_tile(self.tile)
        if self.kind == "l3a":
            m = _MONTH.match(self.month or "")
            if not m or not 1 <= int(m[2]) <= 12:
                raise BadRequest(f"month {self.month!r} is not YYYY-MM", "give e.g. month=2024-03")
            return DerivedRequest("l3a", tile, month=f"{int(m[1]):04d}-{int(m[2]):02d}")
        start, stop = _as_date(self.start, "start"), _as_date(self.stop, "stop")
        if start is None or stop is None:
            raise BadRequest("an SCD is asked for by period: start and stop are missing",
                             "give start and stop (a hydrological year: 1 Sep N to 31 Aug N+1)")
        from processing.scd import MAX_DAYS

        if not 0 <= (stop - start).days < MAX_DAYS:
            raise BadRequest(f"the period {start} – {stop} ends before it starts or lasts more than {MAX_DAYS} days",
                             "give start ≤ stop, at most ten years apart")
        return DerivedRequest("scd", tile, start=start, stop=stop)

    @property
    def collection(self) -> str:
        return COLLECTIONS[self.kind]

    @property
    def key(self) -> str:
        """The product id it publishes, without the version: `…_L2B-SNOW_T31TCH_C`, `L3A_T31TCH_20240315`
        (the platform part of an L3A id depends on its inputs), `LIS_S2-SNOW_T31TCH_20230901_20240831`."""
        r = self.validate()
        if r.kind == "snow":
            from processing.snow import snow_product_id

            return snow_product_id(r.l2a_id).rsplit("_V", 1)[0]
        if r.kind == "l3a":
            return f"L3A_T{r.tile}_{r.synthesis_date:%Y%m%d}"
        from processing.scd import scd_product_id

        return scd_product_id(r.tile, r.start, r.stop).rsplit("_V", 1)[0]

    @property
    def synthesis_date(self) -> date:
        year, month = (int(x) for x in (self.month or "").split("-"))
        return date(year, month, 15)

    @property
    def datetime_range(self) -> tuple[datetime, datetime]:
        """[first, last) of the product's `datetime` (what `catalog.publish` keys versions on, with the tile)."""
        r = self.validate()
        if r.kind == "snow":
            _, _, when = parse_l2a_id(r.l2a_id)
            return when, when + timedelta(milliseconds=1)
        when = r.synthesis_date if r.kind == "l3a" else r.start
        start = datetime(when.year, when.month, when.day, tzinfo=timezone.utc)
        return start, start + timedelta(seconds=1)

    @property
    def end_datetime(self) -> datetime | None:
        if self.kind != "scd" or self.stop is None:
            return None
        return datetime(self.stop.year, self.stop.month, self.stop.day, 23, 59, 59, tzinfo=timezone.utc)

    def as_args(self) -> dict[str, Any]:
        """JSON-able form (the job's arguments)."""
        d = asdict(self.validate())
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in d.items() if v is not None}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "DerivedRequest":
        known = {k: args.get(k) for k in ("kind", "tile", "l2a_id", "month", "start", "stop")}
        if not known["kind"]:
            raise BadRequest("the request has no kind", f"give one of {', '.join(KINDS)}")
        return cls(**known).validate()  # type: ignore[arg-type]

    def describe(self) -> str:
        r = self.validate()
        if r.kind == "snow":
            return f"snow map of {r.l2a_id}"
        if r.kind == "l3a":
            return f"L3A of T{r.tile} {r.month}"
        return f"SCD of T{r.tile} {r.start} – {r.stop}"


def _as_date(value: Any, name: str) -> date | None:
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return value.date()
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise BadRequest(f"{name} {value!r} is not a date", f"give {name} as YYYY-MM-DD") from exc


@dataclass(frozen=True)
class RequestOutcome:
    status: str  # published | queued | running | failed
    job_id: int | None = None
    item_id: str | None = None
    collection: str | None = None
    reason: str | None = None


# ------------------------------------------------------------------------------------------------ lookups


def current_product(settings: CatalogSettings, req: DerivedRequest, conn=None) -> dict[str, Any] | None:
    """The current published item of the request's product: {id, collection, inputs_hash, version}, or None."""
    req = req.validate()
    first, last = req.datetime_range
    sql_text = ("SELECT id, content->'properties'->>'landsurf:inputs_hash', content->'properties'->>'version' "
                "FROM pgstac.items WHERE collection = %s AND datetime >= %s AND datetime < %s "
                "AND content->'properties'->>'grid:code' = %s")
    params: list[Any] = [req.collection, first, last, f"MGRS-{req.tile}"]
    if req.end_datetime is not None:
        sql_text += " AND end_datetime = %s"
        params.append(req.end_datetime)
    if conn is None:
        with session(settings, "ingest") as own:
            row = own.execute(sql_text + " LIMIT 1", params).fetchone()
    else:
        row = conn.execute(sql_text + " LIMIT 1", params).fetchone()
    if row is None:
        return None
    return {"id": row[0], "collection": req.collection, "inputs_hash": row[1], "version": row[2]}


_STATES = {"todo": "queued", "doing": "running", "succeeded": "published", "failed": "failed",
           "cancelled": "failed", "aborting": "failed", "aborted": "failed"}


def request_product(settings: CatalogSettings, req: DerivedRequest, requested_by: str | None = None,
                    cause: str = "request") -> RequestOutcome:
    """Ask for a product without waiting: published already → at once; a live job for it → that job; else a new
    job on the `derive` queue. Never blocks on the work."""
    req = req.validate()
    key = req.key
    with session(settings, "ingest") as conn:
        current = current_product(settings, req, conn)
        if current is not None:
            return RequestOutcome("published", None, current["id"], current["collection"])
        live = _live_job(conn, key)
    if live is not None:
        return live
    from processing.queue import defer_derive

    job_id = defer_derive(settings, req, cause=cause, requested_by=requested_by)
    if job_id is None:  # another caller queued it between our look and our deferral
        with session(settings, "ingest") as conn:
            live = _live_job(conn, key)
        if live is not None:
            return live
        current = current_product(settings, req)
        if current is not None:
            return RequestOutcome("published", None, current["id"], current["collection"])
        raise TransientDeriveError(f"the job of {req.describe()} could not be queued", "ask again")
    return RequestOutcome("queued", job_id, None, req.collection)


def _live_job(conn, key: str) -> RequestOutcome | None:
    from processing.queue import DERIVE_TASK

    row = conn.execute("SELECT id, status::text FROM procrastinate_jobs WHERE task_name = %s AND queueing_lock = %s "
                       "AND status IN ('todo', 'doing') ORDER BY id LIMIT 1", (DERIVE_TASK, key)).fetchone()
    if row is None:
        row = conn.execute("SELECT id, status::text FROM procrastinate_jobs WHERE task_name = %s AND lock = %s "
                           "AND status = 'doing' ORDER BY id LIMIT 1", (DERIVE_TASK, key)).fetchone()
    if row is None:
        return None
    return RequestOutcome(_STATES[row[1]], int(row[0]), None, None)


def request_status(settings: CatalogSettings, job_id: int) -> RequestOutcome:
    """Where a job stands: queued, running, published (with the item), or failed (with the reason)."""
    with session(settings, "ingest") as conn:
        row = conn.execute("SELECT status, item_id, collection, reason FROM landsurf.derived_requests "
                           "WHERE job_id = %s", (job_id,)).fetchone()
        job = conn.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None and job is None:
        raise NotFound(f"no derived-product job {job_id}", "give the job id a request returned")
    if row is not None and row[0] in ("published", "failed"):
        return RequestOutcome(row[0], job_id, row[1], row[2], row[3])
    if job is not None:
        status = _STATES.get(job[0], "failed")
        if status == "published" and row is not None:
            return RequestOutcome("published", job_id, row[1], row[2], row[3])
        reason = row[3] if row is not None else None
        if status == "failed" and reason is None:
            reason = "the job stopped without an outcome (killed?); ask for the product again"
        return RequestOutcome(status, job_id, None, row[2] if row else None, reason)
    status = row[0] if row[0] in ("queued", "running") else "failed"
    return RequestOutcome(status, job_id, row[1], row[2], row[3])


def record(settings: CatalogSettings, job_id: int | None, req: DerivedRequest | None = None, *,
           status: str, item_id: str | None = None, collection: str | None = None, reason: str | None = None,
           requested_by: str | None = None, cause: str | None = None) -> None:
    """Write where a job stands (landsurf.derived_requests: kept after procrastinate deletes finished jobs)."""
    if job_id is None:
        return
    with session(settings, "ingest") as conn:
        conn.execute(
            "INSERT INTO landsurf.derived_requests (job_id, key, kind, request, requested_by, cause, status, "
            "item_id, collection, reason) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (job_id) DO UPDATE SET status = EXCLUDED.status, "
            "item_id = COALESCE(EXCLUDED.item_id, landsurf.derived_requests.item_id), "
            "collection = COALESCE(EXCLUDED.collection, landsurf.derived_requests.collection), "
            "reason = EXCLUDED.reason, updated_at = now()",
            (job_id, req.key if req else "", req.kind if req else "", json.dumps(req.as_args() if req else {}),
             requested_by, cause, status, item_id, collection, reason))


def _record_quietly(settings: CatalogSettings, job_id: int | None, req: DerivedRequest, status: str,
                   reason: str | None, item_id: str | None = None, collection: str | None = None) -> None:
    """`record`, when the database answers: a status left behind is corrected by `request_status` from the queue."""
    try:
        record(settings, job_id, req, status=status, item_id=item_id, collection=collection, reason=reason)
    except (DatabaseError, psycopg.OperationalError) as exc:
        log.warning("job status not recorded", job=job_id, status=status, error=str(exc)[:300])


# ------------------------------------------------------------------------------------------------ running


def inputs_hash(input_ids: list[str], params_hash: str, software: str = __version__) -> str:
    """The signature of a product's making: same inputs, software and parameters → same hash → nothing to do."""
    blob = json.dumps({"inputs": sorted(input_ids), "params": params_hash, "software": software},
                      separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


LOCK_POLL_S = 1.0
LOCK_WAIT_S = 6 * 3600.0  # far longer than any product takes to make


@contextmanager
def product_lock(settings: CatalogSettings, key: str, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """One run of a product at a time, wherever it runs (a worker's job, `landsurf process` in a shell): a session
    advisory lock on the request key, held on its own connection for the run (released if the process dies)."""
    from catalog.database import connect, resolve_urls

    conn = connect(resolve_urls(settings).ingest, settings)
    try:
        started = time.monotonic()
        told = False
        while not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 1))", (key,)).fetchone()[0]:
            if time.monotonic() - started > LOCK_WAIT_S:
                raise TransientDeriveError(f"another run of {key} has held it for {LOCK_WAIT_S / 3600:g} h",
                                           "the job is retried; check for a stuck worker")
            if waiting is not None and not told:
                waiting()
                told = True
            time.sleep(LOCK_POLL_S)
        yield
    finally:
        conn.close()  # releases the lock


def run_request(settings: CatalogSettings, req: DerivedRequest, *, job_id: int | None = None,
                progress: Callable[[str, int, int], None] | None = None, plan: bool = True,
                waiting: Callable[[], None] | None = None) -> RequestOutcome:
    """Make the product now (in this process), unless the current one already has these inputs and parameters.
    Another run of the same product (a job, another shell) is waited for first (`waiting()` is told once).

    Raises `DeriveInputError` (inputs missing: not retried) or `TransientDeriveError` (retry later)."""
    req = req.validate()
    try:
        with product_lock(settings, req.key, waiting):
            return _run(settings, req, job_id, progress, plan)
    except (DatabaseError, psycopg.OperationalError) as exc:  # the lock's connection (the run converts its own)
        _record_quietly(settings, job_id, req, "queued", f"retrying after: {exc.problem}")
        raise TransientDeriveError(f"{req.describe()}: {exc}", "the job is retried with backoff") from exc


def _run(settings: CatalogSettings, req: DerivedRequest, job_id: int | None,
         progress: Callable[[str, int, int], None] | None, plan: bool) -> RequestOutcome:
    from ingest.settings import IngestSettings
    from processing import publish_derived as pd

    # a job's staging is named after it: its retry first removes what a killed attempt left (as ingest does)
    name = f"derive-job-{job_id}" if job_id is not None else f"derive-{uuid.uuid4().hex[:16]}"
    staging = IngestSettings.staging_dir(settings) / name
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            record(settings, job_id, req, status="running")
            inputs = pd.resolve_inputs(settings, req)
            signature = inputs_hash(inputs.ids, inputs.params_hash)
            current = current_product(settings, req)
            if current is not None and current["inputs_hash"] == signature:
                outcome = RequestOutcome("published", job_id, current["id"], current["collection"],
                                         "already made from these inputs and parameters")
                record(settings, job_id, req, status="published", item_id=current["id"],
                       collection=current["collection"], reason=outcome.reason)
                return outcome
            version = pd.next_version(settings, req)
            published = pd.make_and_publish(settings, req, inputs, signature, version, staging, progress)
        except (DatabaseError, OSError, psycopg.OperationalError) as exc:  # system faults: database, disk
            raise TransientDeriveError(f"{req.describe()}: {exc}", "the job is retried with backoff") from exc
    except TransientDeriveError as exc:
        _record_quietly(settings, job_id, req, "queued", f"retrying after: {exc.problem}")
        raise
    except LandsurfError as exc:
        _record_quietly(settings, job_id, req, "failed", str(exc))
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised for the queue
        _record_quietly(settings, job_id, req, "failed", f"unexpected error ({type(exc).__name__}): {exc}")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reason = f"supersedes {published.superseded}" if published.superseded else None
    if published.outcome == "duplicate":
        reason = published.reason
    log.info("derived product published", product=published.item_id, collection=published.collection,
             outcome=published.outcome, superseded=published.superseded)
    # published: nothing after this point may fail the job (a re-run would find the product made and stop)
    _record_quietly(settings, job_id, req, "published", reason, published.item_id, published.collection)
    if plan and published.outcome == "published":
        from processing.plan import after_derived

        try:
            after_derived(settings, req, published.item_id)
        except Exception as exc:  # noqa: BLE001 - planning catches up (asking for the SCD again re-runs it)
            log.warning("planning after a derived product failed", product=published.item_id, error=str(exc)[:300])
    return RequestOutcome("published", job_id, published.item_id, published.collection, reason)

"""On-demand derived products through OGC API – Processes (Part 1: Core): a FastAPI router the CLI adds to the
catalog's app (`create_app(settings, routers=[processes_router(settings)])` — catalog never imports processing).

    GET  /processes                      the three processes: snow, l3a, scd
    GET  /processes/{processId}          inputs and outputs as JSON schemas
    POST /processes/{processId}/execution  a bearer token of role user (or admin): 201 + Location /jobs/{jobId}
    GET  /jobs                           the caller's jobs (operator and admin tokens: everyone's)
    GET  /jobs/{jobId}                   statusInfo: accepted | running | successful | failed
    GET  /jobs/{jobId}/results           links to the published STAC item and its assets
    DELETE /jobs/{jobId}                 dismiss: the caller's job stops counting (the product, shared work, may
                                         still be made and published)

Execution is asynchronous only (`jobControlOptions: [async-execute]`): the work is a job on the crash-safe queue
(`processing.derive.request_product`, which never blocks on the work). A product that already exists is answered
at once, still as the standard's 201: the job is created already `successful`, its statusInfo links the results,
so a client that polls finds them on its first look. Bounded per token name: at most `max_live_jobs` different
products accepted or running (429 + Retry-After beyond), a small body, bounded strings and periods. Jobs live in
`landsurf.process_jobs` (catalog/sql/006_process_jobs.sql); every statement carries a timeout.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from catalog import __version__
from catalog.auth import GRANTS, TOKEN_HINT, bearer_token, token_owner
from catalog.errors import BadRequest, Busy, LandsurfError, NotFound, PayloadTooLarge, Unauthorized
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from catalog.store import render_href

log = get_logger(__name__)

OGC = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
CONFORMANCE = [OGC + c for c in ("core", "ogc-process-description", "json", "oas30", "job-list", "dismiss")]
REL_RESULTS = "http://www.opengis.net/def/rel/ogc/1.0/results"
REL_DESCRIPTION = "http://www.opengis.net/def/rel/ogc/1.0/processes"
LIVE = ("accepted", "running")
STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
# processing.derive.RequestOutcome.status → OGC statusCode
OUTCOME_STATUS = {"queued": "accepted", "running": "running", "published": "successful", "failed": "failed"}
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
TILE = re.compile(r"^T?(\d{2}[A-Z]{3})$")
L2A_TILE = re.compile(r"_L2A_T(\d{2}[A-Z]{3})_")
MAX_TEXT = 128
FIRST_YEAR, LAST_YEAR = 2015, 2100
MAX_PERIOD_DAYS = 400  # an SCD period: a hydrological year and a little more


class ProcessesSettings(BaseSettings):
    """Bounds of the processes API (environment variables prefixed `LANDSURF_PROCESSES_`)."""

    model_config = SettingsConfigDict(env_prefix="LANDSURF_PROCESSES_", extra="ignore")

    max_live_jobs: int = Field(4, ge=1, description="Different products one token name may have accepted or "
                                                    "running at once; one more is 429 with Retry-After.")
    retry_after_s: int = Field(60, ge=1, description="Retry-After of that 429.")
    max_body_bytes: int = Field(16 << 10, ge=1024, description="Largest execute request body.")
    max_refresh: int = Field(20, ge=1, description="Live jobs whose state one request looks up on the queue.")


class TooManyJobs(LandsurfError):
    """The caller already has its maximum of live jobs."""

    http_status = 429

    def __init__(self, problem: str, fix: str, retry_after_s: int) -> None:
        super().__init__(problem, fix)
        self.retry_after_s = retry_after_s


# --- the processes --------------------------------------------------------------------------------------------

TILE_SCHEMA = {"type": "string", "pattern": r"^T?\d{2}[A-Z]{3}$", "maxLength": 6,
               "description": "MGRS tile, e.g. 31TCH (a leading T is accepted)."}
DATE_SCHEMA = {"type": "string", "format": "date", "maxLength": 10}
ITEM_OUTPUT = {"item": {"title": "The published STAC item",
                        "description": "A link to the item in the catalog; its assets are in the job's results.",
                        "schema": {"type": "string", "format": "uri", "contentMediaType": "application/geo+json"}}}


def _input(title: str, description: str, schema: dict, required: bool = True) -> dict[str, Any]:
    return {"title": title, "description": description, "schema": schema, "minOccurs": 1 if required else 0,
            "maxOccurs": 1}


PROCESSES: dict[str, dict[str, Any]] = {
    "snow": {
        "title": "Snow map of an L2A product",
        "description": "LIS-like snow map (20 m; codes 0 no snow, 100 snow, 205 cloud, 254 no data) of one "
                       "published L2A, with lineage to it (and to the tile's DEM when one is registered).",
        "keywords": ["snow", "LIS", "Sentinel-2"],
        "inputs": {"l2a_id": _input("L2A product id", "The id of a published sentinel2-l2a item.",
                                    {"type": "string", "pattern": r"^[A-Za-z0-9_-]+_L2A_T\d{2}[A-Z]{3}_[A-Za-z0-9_-]+$",
                                     "maxLength": MAX_TEXT})},
    },
    "l3a": {
        "title": "Monthly L3A synthesis of a tile",
        "description": "WASP-like monthly synthesis dated the 15th from the L2As within ±23 days.",
        "keywords": ["L3A", "WASP", "synthesis", "Sentinel-2"],
        "inputs": {"tile": _input("Tile", "MGRS tile.", TILE_SCHEMA),
                   "month": _input("Month", "The synthesis month, YYYY-MM.",
                                   {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$", "maxLength": 7})},
    },
    "scd": {
        "title": "Snow-cover duration of a tile over a period",
        "description": "SCD, SOD, SMOD, NOBS and NSP from the tile's snow maps. Give either `hydrological_year` "
                       "(1 September of that year to 31 August of the next) or both `start` and `stop`.",
        "keywords": ["snow", "SCD", "snow-cover duration"],
        "inputs": {"tile": _input("Tile", "MGRS tile.", TILE_SCHEMA),
                   "hydrological_year": _input("Hydrological year", "The year of its 1 September.",
                                               {"type": "integer", "minimum": FIRST_YEAR, "maximum": LAST_YEAR},
                                               required=False),
                   "start": _input("Start", "First day of the period (with `stop`).", DATE_SCHEMA, required=False),
                   "stop": _input("Stop", f"Last day of the period (at most {MAX_PERIOD_DAYS} days after start).",
                                  DATE_SCHEMA, required=False)},
    },
}

EXECUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "inputs": {"type": "object", "maxProperties": 8,
                   "additionalProperties": {"oneOf": [{"type": "string", "maxLength": MAX_TEXT}, {"type": "integer"},
                                                      {"type": "object", "required": ["value"],
                                                       "properties": {"value": {}}}]}},
        "outputs": {"type": "object"},
        "response": {"type": "string", "enum": ["document"]},
    },
    "required": ["inputs"],
}


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    @property
    def sees_all(self) -> bool:
        return "operator" in GRANTS.get(self.role, ())


# --- inputs → a derived-product request -----------------------------------------------------------------------

def _plain(name: str, value: Any) -> Any:
    """An input's value, given raw or qualified (`{"value": …}`)."""
    if isinstance(value, dict):
        if set(value) - {"value", "mediaType", "encoding", "schema"} or "value" not in value:
            raise BadRequest(f"input {name!r} is an object without a single `value`",
                             'give it as a plain value or as {"value": …}')
        value = value["value"]
    return value


def _text(name: str, value: Any, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise BadRequest(f"input {name!r} must be a non-empty string of at most {MAX_TEXT} characters",
                         "see GET /processes/{processId} for its schema")
    if pattern is not None and not pattern.match(value):
        raise BadRequest(f"input {name!r} = {value[:40]!r} does not match {pattern.pattern}",
                         "see GET /processes/{processId} for its schema")
    return value


def _tile(value: Any) -> str:
    return TILE.match(_text("tile", value, TILE)).group(1)  # type: ignore[union-attr]


DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day(name: str, value: Any) -> date:
    text = _text(name, value)
    try:
        if DAY.match(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise BadRequest(f"input {name!r} = {text[:40]!r} is not a date", "use YYYY-MM-DD")


def parse_inputs(process_id: str, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The execute body → (the request's fields for `DerivedRequest`, the inputs as given, normalised).
    Every way of getting it wrong is a BadRequest naming the input."""
    if not isinstance(body, dict):
        raise BadRequest("the execute request must be a JSON object", 'send {"inputs": {…}}')
    unknown_keys = set(body) - {"inputs", "outputs", "response", "subscriber"}
    if unknown_keys:
        raise BadRequest(f"unknown members of the execute request: {', '.join(sorted(unknown_keys))[:200]}",
                         "an execute request has inputs, and optionally outputs and response")
    if body.get("response", "document") != "document":
        raise BadRequest("only `response: document` is offered", "leave `response` out")
    if body.get("subscriber") is not None:
        raise BadRequest("callbacks (`subscriber`) are not offered", "poll the job's status instead")
    raw = body.get("inputs")
    if not isinstance(raw, dict):
        raise BadRequest("`inputs` must be an object of input id → value", "see GET /processes/{processId}")
    described = PROCESSES[process_id]["inputs"]
    unknown = [k for k in raw if k not in described]
    if unknown:
        raise BadRequest(f"unknown inputs of process {process_id!r}: {', '.join(map(str, unknown))[:200]}",
                         f"its inputs are {', '.join(described)}")
    given = {k: _plain(k, v) for k, v in raw.items()}
    missing = [k for k, d in described.items() if d["minOccurs"] and k not in given]
    if missing:
        raise BadRequest(f"process {process_id!r} needs input(s) {', '.join(missing)}",
                         "see GET /processes/{processId}")
    if process_id == "snow":
        l2a_id = _text("l2a_id", given["l2a_id"], re.compile(described["l2a_id"]["schema"]["pattern"]))
        tile = L2A_TILE.search(l2a_id).group(1)  # type: ignore[union-attr]
        return {"kind": "snow", "tile": tile, "l2a_id": l2a_id}, {"l2a_id": l2a_id}
    tile = _tile(given["tile"])
    if process_id == "l3a":
        month = _text("month", given["month"], re.compile(described["month"]["schema"]["pattern"]))
        year = int(month[:4])
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise BadRequest(f"input 'month' = {month!r} is outside {FIRST_YEAR}–{LAST_YEAR}", "ask for another month")
        return {"kind": "l3a", "tile": tile, "month": month}, {"tile": tile, "month": month}
    year = given.get("hydrological_year")
    if year is not None:
        if "start" in given or "stop" in given:
            raise BadRequest("give either `hydrological_year` or `start` and `stop`, not both",
                             "drop one of them")
        if isinstance(year, bool) or not isinstance(year, int) or not FIRST_YEAR <= year <= LAST_YEAR:
            raise BadRequest(f"input 'hydrological_year' must be an integer in {FIRST_YEAR}–{LAST_YEAR}",
                             "e.g. 2023 for 2023-09-01 … 2024-08-31")
        start, stop = date(year, 9, 1), date(year + 1, 8, 31)
        return ({"kind": "scd", "tile": tile, "start": start, "stop": stop},
                {"tile": tile, "hydrological_year": year})
    if "start" not in given or "stop" not in given:
        raise BadRequest("process 'scd' needs `hydrological_year`, or both `start` and `stop`",
                         'e.g. {"tile": "31TCH", "hydrological_year": 2023}')
    start, stop = _day("start", given["start"]), _day("stop", given["stop"])
    if not start < stop or (stop - start).days > MAX_PERIOD_DAYS:
        raise BadRequest(f"the period {start} … {stop} must run forward and last at most {MAX_PERIOD_DAYS} days",
                         "give a period within one hydrological year")
    if not FIRST_YEAR <= start.year <= LAST_YEAR:
        raise BadRequest(f"the period must start in {FIRST_YEAR}–{LAST_YEAR}", "ask for another period")
    return ({"kind": "scd", "tile": tile, "start": start, "stop": stop},
            {"tile": tile, "start": start.isoformat(), "stop": stop.isoformat()})


# --- the queue side (processing.derive, the orchestration's module) -------------------------------------------

def _derive():
    try:
        from processing import derive
    except ImportError as exc:  # pragma: no cover - only before the orchestration module is installed
        raise Busy("on-demand processing is not available in this installation", "ask an operator") from exc
    return derive


def derived_request(fields: dict[str, Any]):
    """The checked `DerivedRequest` (its `key`: the product it publishes)."""
    try:
        req = _derive().DerivedRequest(**fields).validate()
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"invalid request: {str(exc)[:200]}", "see GET /processes/{processId}") from exc
    return req


WARM_UP = ({"kind": "snow", "tile": "31TCH", "l2a_id": "SENTINEL2A_20240603-104010-000_L2A_T31TCH_C_V1-0"},
           {"kind": "l3a", "tile": "31TCH", "month": "2024-03"},
           {"kind": "scd", "tile": "31TCH", "start": date(2023, 9, 1), "stop": date(2024, 8, 31)})


def warm_up() -> None:
    """Import what a request's key needs (the snow module: ~0.4 s) when the app is built, not on a request."""
    try:
        for fields in WARM_UP:
            derived_request(fields).key
    except LandsurfError as exc:  # e.g. the orchestration module missing: executions answer 503
        log.warning("on-demand processing unavailable", error=str(exc)[:200])


def submit(settings: CatalogSettings, req, requested_by: str):
    """Hand the request to the queue (never waits for the work); blocking: run it in a thread."""
    return _derive().request_product(settings, req, requested_by=requested_by)


def outcome_of(settings: CatalogSettings, queue_job_id: int):
    return _derive().request_status(settings, queue_job_id)


# --- storage ---------------------------------------------------------------------------------------------------

COLUMNS = ("id, process, request_key, inputs, requested_by, queue_job_id, status, item_id, collection, reason, "
           "created, started, updated, finished")


class Jobs:
    """The `landsurf.process_jobs` rows, through the app's pools, each statement with a timeout."""

    def __init__(self, settings: CatalogSettings, bounds: ProcessesSettings) -> None:
        self.settings = settings
        self.bounds = bounds
        self.acquire_s = settings.pool_timeout_s
        self.statement_s = settings.statement_timeout_ms / 1000

    async def caller(self, request: Request) -> Caller:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("jobs need a bearer token", TOKEN_HINT.replace("ROLE", "user"))
        owner = await token_owner(request.app.state, token, self.acquire_s, self.statement_s)
        if owner is None:
            raise Unauthorized("the bearer token is unknown or revoked", "ask an operator for a valid token")
        name, role = owner
        return Caller(name, role)

    async def get(self, request: Request, job_id: str, caller: Caller) -> dict[str, Any]:
        if not JOB_ID.match(job_id):
            raise NotFound(f"no job {job_id[:40]!r}", "GET /jobs lists yours")
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM landsurf.process_jobs WHERE id = $1", job_id,
                                      timeout=self.statement_s)
        if row is None or not (caller.sees_all or row["requested_by"] == caller.name):
            raise NotFound(f"no job {job_id!r} of yours", "GET /jobs lists yours")
        return (await self.refresh(request, [dict(row)]))[0]

    async def list(self, request: Request, caller: Caller, limit: int, offset: int,
                   process: str | None, status: str | None) -> list[dict[str, Any]]:
        """A page of jobs, filtered on states brought up to date first (the live ones, newest first)."""
        who = None if caller.sees_all else caller.name
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            live = await conn.fetch(
                f"SELECT {COLUMNS} FROM landsurf.process_jobs WHERE ($1::text IS NULL OR requested_by = $1) "
                "AND status IN ('accepted', 'running') ORDER BY created DESC LIMIT $2", who, self.bounds.max_refresh,
                timeout=self.statement_s)
        await self.refresh(request, [dict(r) for r in live])
        async with request.app.state.readpool.acquire(timeout=self.acquire_s) as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM landsurf.process_jobs WHERE ($1::text IS NULL OR requested_by = $1) "
                "AND ($2::text IS NULL OR process = $2) AND ($3::text IS NULL OR status = $3) "
                "ORDER BY created DESC, id LIMIT $4 OFFSET $5",
                who, process, status, limit, offset, timeout=self.statement_s)
        return [dict(r) for r in rows]

    async def refresh(self, request: Request, rows: list[dict[str, Any]], conn=None) -> list[dict[str, Any]]:
        """Ask the queue about the live jobs among `rows` (at most `max_refresh`) and store what changed."""
        live = [r for r in rows if r["status"] in LIVE and r["queue_job_id"] is not None][: self.bounds.max_refresh]
        for row in live:
            try:
                outcome = await run_in_threadpool(outcome_of, self.settings, row["queue_job_id"])
            except LandsurfError as exc:
                log.warning("job state unknown", job=row["id"], queue_job=row["queue_job_id"], error=str(exc)[:200])
                continue
            status = OUTCOME_STATUS.get(outcome.status, row["status"])
            if status == row["status"] and outcome.item_id == row["item_id"]:
                continue
            row.update(await self._store(request, row["id"], status, outcome, conn))
        return rows

    async def _store(self, request: Request, job_id: str, status: str, outcome, conn=None) -> dict[str, Any]:
        """The outcome, stored on every job of the same queue job (users asking for one product share it)."""
        sql = ("WITH one AS (SELECT queue_job_id FROM landsurf.process_jobs WHERE id = $1) "
               "UPDATE landsurf.process_jobs j SET status = $2, item_id = coalesce($3, item_id), "
               "collection = coalesce($4, collection), reason = $5, updated = now(), "
               "started = CASE WHEN $2 <> 'accepted' THEN coalesce(started, now()) END, "
               "finished = CASE WHEN $2 IN ('successful', 'failed', 'dismissed') THEN coalesce(finished, now()) END "
               "FROM one WHERE (j.id = $1 OR j.queue_job_id = one.queue_job_id) "
               "AND j.status IN ('accepted', 'running') "
               f"RETURNING {', '.join('j.' + c.strip() for c in COLUMNS.split(','))}")
        args = (job_id, status, outcome.item_id, outcome.collection, outcome.reason)
        if conn is not None:
            rows = await conn.fetch(sql, *args, timeout=self.statement_s)
        else:
            async with request.app.state.writepool.acquire(timeout=self.acquire_s) as own:
                rows = await own.fetch(sql, *args, timeout=self.statement_s)
        return next((dict(r) for r in rows if r["id"] == job_id), {})

    async def dismiss(self, request: Request, job_id: str, caller: Caller) -> dict[str, Any]:
        """The job marked dismissed (only its owner, or an admin). The queue job is left alone: it may be shared
        with other users or the planner, and what it publishes is the catalog's, not this job's."""
        row = await self.get(request, job_id, caller)
        if row["requested_by"] != caller.name and "admin" not in GRANTS.get(caller.role, ()):
            raise NotFound(f"no job {job_id!r} of yours", "GET /jobs lists yours")
        async with request.app.state.writepool.acquire(timeout=self.acquire_s) as conn:
            updated = await conn.fetchrow(
                "UPDATE landsurf.process_jobs SET status = 'dismissed', updated = now(), "
                "finished = coalesce(finished, now()) WHERE id = $1 "
                f"RETURNING {COLUMNS}", job_id, timeout=self.statement_s)
        return dict(updated) if updated is not None else row

    async def execute(self, request: Request, caller: Caller, process_id: str, req,
                      inputs: dict[str, Any]) -> dict[str, Any]:
        """Under a per-caller lock: refresh the caller's live jobs, enforce the cap, hand the request to the queue
        and record the job."""
        async with request.app.state.writepool.acquire(timeout=self.acquire_s) as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('landsurf-processes:' || $1, 0))",
                                   caller.name, timeout=self.statement_s)
                live = [dict(r) for r in await conn.fetch(
                    f"SELECT {COLUMNS} FROM landsurf.process_jobs WHERE requested_by = $1 "
                    "AND status IN ('accepted', 'running')", caller.name, timeout=self.statement_s)]
                live = [r for r in await self.refresh(request, live, conn) if r["status"] in LIVE]
                key, keys, cap = req.key, {r["request_key"] for r in live}, self.bounds.max_live_jobs
                if key not in keys and len(keys) >= cap:  # checked before anything is queued
                    raise TooManyJobs(f"{caller.name!r} already has {len(keys)} products on the way, the maximum "
                                      f"of {cap}", "wait for one to finish (GET /jobs)", self.bounds.retry_after_s)
                outcome = await run_in_threadpool(submit, self.settings, req, caller.name)
                status = OUTCOME_STATUS.get(outcome.status, "failed")
                row = await conn.fetchrow(
                    "INSERT INTO landsurf.process_jobs (id, process, request_key, inputs, requested_by, "
                    "queue_job_id, status, item_id, collection, reason, started, finished) VALUES ($1, $2, $3, $4::text::jsonb, "
                    "$5, $6, $7, $8, $9, $10, CASE WHEN $7 <> 'accepted' THEN now() END, "
                    "CASE WHEN $7 IN ('successful', 'failed') THEN now() END) "
                    f"RETURNING {COLUMNS}",
                    uuid.uuid4().hex, process_id, key, orjson.dumps(inputs).decode(), caller.name, outcome.job_id, status,
                    outcome.item_id, outcome.collection, outcome.reason, timeout=self.statement_s)
        return dict(row)


# --- documents -------------------------------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def item_url(base: str, collection: str, item_id: str) -> str:
    return render_href(f"/collections/{collection}/items/{item_id}", base)


def status_info(row: dict[str, Any], base: str) -> dict[str, Any]:
    job_url = f"{base}/jobs/{row['id']}"
    messages = {"accepted": "queued", "running": "being produced",
                "successful": f"published {row['item_id']}" if row["item_id"] else "published",
                "failed": row["reason"] or "failed", "dismissed": "dismissed"}
    links = [{"href": job_url, "rel": "self", "type": "application/json", "title": "this job's status"},
             {"href": f"{base}/processes/{row['process']}", "rel": "process", "type": "application/json",
              "title": "the process description"}]
    if row["status"] == "successful":
        links.append({"href": job_url + "/results", "rel": REL_RESULTS, "type": "application/json",
                      "title": "the job's results"})
        if row["item_id"] and row["collection"]:
            links.append({"href": item_url(base, row["collection"], row["item_id"]), "rel": "item",
                          "type": "application/geo+json", "title": "the published STAC item"})
    inputs = row["inputs"]
    info = {"processID": row["process"], "type": "process", "jobID": row["id"], "status": row["status"],
            "message": messages.get(row["status"], row["status"]), "created": _iso(row["created"]),
            "started": _iso(row["started"]), "finished": _iso(row["finished"]), "updated": _iso(row["updated"]),
            "inputs": orjson.loads(inputs) if isinstance(inputs, (str, bytes)) else inputs, "links": links}
    if row["status"] == "successful":
        info["progress"] = 100
    return {k: v for k, v in info.items() if v is not None}


def process_summary(process_id: str, base: str) -> dict[str, Any]:
    spec = PROCESSES[process_id]
    return {"id": process_id, "title": spec["title"], "description": spec["description"],
            "keywords": spec["keywords"], "version": __version__, "jobControlOptions": ["async-execute", "dismiss"],
            "outputTransmission": ["reference"],
            "links": [{"href": f"{base}/processes/{process_id}", "rel": "self", "type": "application/json",
                       "title": "process description"},
                      {"href": f"{base}/processes/{process_id}/execution",
                       "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute", "type": "application/json",
                       "title": "execute (POST, bearer token of role user)"}]}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


ERRORS = {400: {"description": "bad input, named"}, 401: {"description": "no or unknown bearer token"},
          404: {"description": "no such process or job (of yours)"}}


# --- the router ------------------------------------------------------------------------------------------------

def processes_router(settings: CatalogSettings, bounds: ProcessesSettings | None = None) -> APIRouter:
    """The OGC API – Processes routes; `conformance_classes` joins the app's /conformance."""
    bounds = bounds or ProcessesSettings()
    jobs = Jobs(settings, bounds)
    router = APIRouter(tags=["Processes"])
    router.conformance_classes = CONFORMANCE  # type: ignore[attr-defined]
    router.landing_links = (  # type: ignore[attr-defined]  # what OGC API – Processes Core asks of the landing page
        ("http://www.opengis.net/def/rel/ogc/1.0/processes", "application/json", "Processes (OGC API – Processes)",
         "/processes"),
        ("http://www.opengis.net/def/rel/ogc/1.0/job-list", "application/json", "Jobs (OGC API – Processes)",
         "/jobs"),
    )
    warm_up()

    @router.get("/processes", summary="The processes offered")
    async def list_processes(request: Request) -> JSONResponse:
        base = _base(request)
        return _json({"processes": [process_summary(p, base) for p in PROCESSES],
                      "links": [{"href": f"{base}/processes", "rel": "self", "type": "application/json",
                                 "title": "processes"}]})

    @router.get("/processes/{processId}", summary="A process: its inputs and outputs", responses=ERRORS)
    async def describe_process(processId: str, request: Request) -> JSONResponse:
        if processId not in PROCESSES:
            raise NotFound(f"no process {processId[:40]!r}", f"the processes are {', '.join(PROCESSES)}")
        spec = PROCESSES[processId]
        return _json(process_summary(processId, _base(request)) | {"inputs": spec["inputs"], "outputs": ITEM_OUTPUT})

    @router.post("/processes/{processId}/execution", status_code=201, summary="Ask for a product (async)",
                 responses=ERRORS | {201: {"description": "the job's statusInfo; Location: the job"},
                                     429: {"description": "too many live jobs; Retry-After"}},
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": EXECUTE_SCHEMA}}}})
    async def execute(processId: str, request: Request) -> JSONResponse:
        """Needs a bearer token of role user (or admin). A product already published: the job is created
        successful at once, with its results linked."""
        if processId not in PROCESSES:
            raise NotFound(f"no process {processId[:40]!r}", f"the processes are {', '.join(PROCESSES)}")
        caller = await jobs.caller(request)
        body = await request.body()
        if len(body) > bounds.max_body_bytes:
            raise PayloadTooLarge(f"the execute request has {len(body)} bytes, over {bounds.max_body_bytes}",
                                  "send only the inputs (LANDSURF_PROCESSES_MAX_BODY_BYTES)")
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the execute request is not JSON: {exc}"[:200], 'send {"inputs": {…}}') from exc
        fields, inputs = parse_inputs(processId, parsed)
        req = await run_in_threadpool(derived_request, fields)
        try:
            row = await jobs.execute(request, caller, processId, req, inputs)
        except TooManyJobs as exc:
            return _json({"code": "TooManyJobs", "description": str(exc)}, 429,
                         {"Retry-After": str(exc.retry_after_s)})
        base = _base(request)
        headers = {"Location": f"{base}/jobs/{row['id']}"}
        if "respond-async" in request.headers.get("prefer", ""):
            headers["Preference-Applied"] = "respond-async"
        if row["status"] == "successful":
            headers["Link"] = f'<{base}/jobs/{row["id"]}/results>; rel="{REL_RESULTS}"'
        log.info("process executed", process=processId, job=row["id"], by=caller.name, status=row["status"])
        return _json(status_info(row, base), 201, headers)

    @router.get("/jobs", summary="Your jobs (operators: everyone's)", responses=ERRORS)
    async def list_jobs(request: Request, limit: int = 20, offset: int = 0, processID: str | None = None,
                        status: str | None = None) -> JSONResponse:
        caller = await jobs.caller(request)
        limit = max(1, min(limit, 100))
        offset = max(0, min(offset, 1_000_000))
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status {status[:40]!r} is not a job status", f"use one of {', '.join(STATUSES)}")
        if processID is not None and processID not in PROCESSES:
            raise BadRequest(f"no process {processID[:40]!r}", f"the processes are {', '.join(PROCESSES)}")
        rows = await jobs.list(request, caller, limit + 1, offset, processID, status)
        base = _base(request)
        links = [{"href": str(request.url), "rel": "self", "type": "application/json", "title": "jobs"}]
        if len(rows) > limit:
            links.append({"href": str(request.url.include_query_params(offset=offset + limit, limit=limit)),
                          "rel": "next", "type": "application/json", "title": "next page"})
        return _json({"jobs": [status_info(r, base) for r in rows[:limit]], "links": links})

    @router.get("/jobs/{jobId}", summary="A job's status", responses=ERRORS)
    async def job_status(jobId: str, request: Request) -> JSONResponse:
        caller = await jobs.caller(request)
        return _json(status_info(await jobs.get(request, jobId, caller), _base(request)))

    @router.delete("/jobs/{jobId}", summary="Dismiss a job of yours", responses=ERRORS)
    async def dismiss_job(jobId: str, request: Request) -> JSONResponse:
        """Needs the job owner's token (role user) or an admin token. The job stops counting against your
        live jobs; the product, shared work, may still be made and published."""
        caller = await jobs.caller(request)
        row = await jobs.dismiss(request, jobId, caller)
        log.info("job dismissed", job=jobId, by=caller.name)
        return _json(status_info(row, _base(request)))

    @router.get("/jobs/{jobId}/results", summary="A finished job's results", responses=ERRORS)
    async def job_results(jobId: str, request: Request) -> JSONResponse:
        caller = await jobs.caller(request)
        row = await jobs.get(request, jobId, caller)
        if row["status"] == "failed":
            raise NotFound(f"job {jobId} failed: {row['reason'] or 'no reason recorded'}",
                           "see GET /jobs/{jobId}; ask again once the cause is fixed")
        if row["status"] == "dismissed":
            raise NotFound(f"job {jobId} was dismissed", "ask for the product again")
        if row["status"] != "successful" or not row["item_id"]:
            raise NotFound(f"job {jobId} has no results yet (status {row['status']})",
                           "poll GET /jobs/{jobId} until it is successful")
        base = _base(request)
        async with request.app.state.readpool.acquire(timeout=jobs.acquire_s) as conn:
            item = await conn.fetchval("SELECT pgstac.get_item($1, $2)", row["item_id"], row["collection"],
                                       timeout=jobs.statement_s)
        if item is None:
            raise NotFound(f"the item {row['item_id']} of job {jobId} is no longer in {row['collection']}",
                           "it was superseded by a newer version: search the collection")
        if isinstance(item, (str, bytes)):
            item = orjson.loads(item)
        results: dict[str, Any] = {"item": {"href": item_url(base, row["collection"], row["item_id"]),
                                            "rel": "item", "type": "application/geo+json",
                                            "title": f"STAC item {row['item_id']}"}}
        for key, asset in sorted((item.get("assets") or {}).items()):
            if isinstance(asset, dict) and isinstance(asset.get("href"), str) and key != "item":
                link = {"href": render_href(asset["href"], base), "rel": "enclosure"}
                link |= {k: asset[k] for k in ("type", "title") if isinstance(asset.get(k), str)}
                results[key] = link
        return _json(results)

    return router

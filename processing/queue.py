"""The job queue: procrastinate on the catalog's own PostgreSQL, the workers that drain it, and the sweep that
makes sure no delivery is ever stranded.

Two queues: `ingest` (task `ingest.delivery`, one job per receipt) and `derive` (task `processing.derive`, one job
per derived product: its request key is the job's queueing lock and lock, and its priority is below ingest's;
see processing/derive.py). A third, `webhooks`, gets the periodic delivery of subscriptions' webhooks
(processing/webhooks.py). Every worker drains all three; long-running workers also run the planning tick of derived
products in their sweep (processing/plan.py).

- Durable jobs survive restarts; a job is retried with exponential backoff on system faults
  (`TransientIngestError`); the job lock (the delivery's checksum) keeps two workers, on one machine or many,
  from processing the same bytes at once, and the pipeline's receipt check makes a second run of a finished
  delivery a no-op.
- Workers heartbeat (procrastinate's worker table, every `heartbeat_seconds`). A worker silent for
  `stalled_seconds` is dead (killed with -9, out of memory, machine lost): its job is a stalled job.
- The sweep, run by every worker every `sweep_seconds` (and at its start), by the inbox watcher, and by
  `landsurf ingest retry`, one sweeper at a time (an advisory lock):
  1. retries the stalled jobs with procrastinate's own `get_stalled_jobs` / `retry_job` (back to `todo` on the
     ingest queue; the retry cleans the dead attempt's leftovers before it starts);
  2. re-queues every open receipt (`received`, `processing`, `retrying`) that has had no live job (`todo` or
     `doing`) for `stalled_seconds` and that no live session is processing — a crash between a receipt and its
     job, a job lost with a database, a direct `process()` call that died — finishing first a taking cut short.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import procrastinate
import psycopg
import psycopg_pool
from procrastinate.exceptions import AlreadyEnqueued, ConnectorException
from psycopg import sql

from catalog.database import bounded_url, connect, resolve_urls, session
from catalog.errors import DatabaseError, DatabaseUnavailable
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from ingest import receipts
from ingest.errors import TransientIngestError
from ingest.model import Delivery
from ingest.settings import IngestSettings

log = get_logger(__name__)

INGEST_QUEUE = "ingest"
TASK_NAME = "ingest.delivery"
DERIVE_QUEUE = "derive"
DERIVE_TASK = "processing.derive"
MOSAIC_TASK = "processing.mosaic_overview"  # processing/mosaics.py
WEBHOOK_QUEUE = "webhooks"  # processing/webhooks.py
SWEEP_LOCK = "landsurf-sweep"
LIVE = ("todo", "doing")


class IngestQueue(procrastinate.App):
    """A procrastinate app that knows the settings its ingest task and its sweep run with."""

    catalog: CatalogSettings
    ingest: IngestSettings
    conninfo: str
    tick_derived: bool = False  # the sweep also runs the planning tick of derived products (long-running workers)


def create_queue(catalog: CatalogSettings | None = None, ingest: IngestSettings | None = None) -> IngestQueue:
    """A procrastinate app bound to the catalog database (ingest role), with the ingest task."""
    catalog = catalog or CatalogSettings()
    ingest = ingest or IngestSettings()
    conninfo = bounded_url(resolve_urls(catalog).ingest, catalog, max(catalog.statement_timeout_ms, 60_000))
    app = IngestQueue(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    app.catalog, app.ingest, app.conninfo = catalog, ingest, conninfo

    @app.task(
        name=TASK_NAME,
        queue=INGEST_QUEUE,
        # the pipeline decides when to stop (max_attempts, counted on the receipt, dead workers included)
        retry=procrastinate.RetryStrategy(wait=ingest.retry_wait_seconds, exponential_wait=ingest.retry_exponential,
                                          retry_exceptions={TransientIngestError}),
    )
    def ingest_delivery(receipt_id: int) -> str:
        from ingest.pipeline import process

        try:
            return process(catalog, ingest, receipt_id).status
        except DatabaseError as exc:  # e.g. the receipt lock could not even be asked for
            raise TransientIngestError(str(exc), "the job is retried with backoff") from exc

    from ingest.pipeline import on_published
    from processing.derive import TransientDeriveError
    from processing.plan import on_l2a_published
    from processing.settings import ProcessingSettings

    on_published(on_l2a_published)  # an L2A published by this process plans its derived products

    processing = ProcessingSettings()

    @app.task(
        name=DERIVE_TASK,
        queue=DERIVE_QUEUE,
        pass_context=True,
        # a fault of the system (database down, disk full) is retried with backoff; missing inputs are not
        retry=procrastinate.RetryStrategy(max_attempts=processing.derive_max_attempts,
                                          wait=ingest.retry_wait_seconds, exponential_wait=ingest.retry_exponential,
                                          retry_exceptions={TransientDeriveError}),
    )
    def derive(context, request: dict, cause: str = "request") -> str:
        from processing.derive import DerivedRequest, run_request

        return run_request(catalog, DerivedRequest.from_args(request), job_id=context.job.id).status

    from processing.mosaics import register as register_mosaics

    register_mosaics(app, catalog, MOSAIC_TASK, DERIVE_QUEUE)  # monthly mosaics' overview builds
    from processing.webhooks import register as register_webhooks

    register_webhooks(app, catalog)  # subscriptions' webhooks (made periodic by long-running workers, `_work`)
    return app


@contextmanager
def opened(catalog: CatalogSettings, ingest: IngestSettings) -> Iterator[IngestQueue]:
    """A queue opened for synchronous use whose opening is bounded: a database that is down fails within the
    connect timeout with `DatabaseUnavailable` (procrastinate's own pool would wait 30 s)."""
    app = create_queue(catalog, ingest)
    pool = psycopg_pool.ConnectionPool(app.conninfo, min_size=1, max_size=2, open=False, name="landsurf-queue",
                                       timeout=catalog.pool_timeout_s,
                                       check=psycopg_pool.ConnectionPool.check_connection)
    try:
        pool.open(wait=True, timeout=max(1.0, catalog.connect_timeout_s))
    except psycopg_pool.PoolTimeout as exc:
        pool.close()
        raise DatabaseUnavailable("cannot reach the job queue's database",
                                  "check LANDSURF_DATABASE_URL or run `landsurf db start`") from exc
    try:
        app.open(pool)
        yield app
    finally:
        app.close()
        pool.close()


def defer(app: procrastinate.App, delivery: Delivery) -> int:
    """Queue one delivery; the same receipt is never queued twice. -1 when it already was."""
    return defer_receipt(app, delivery.receipt_id, delivery.checksum)


def _configured(app: procrastinate.App, receipt_id: int, checksum: str):
    return app.tasks[TASK_NAME].configure(lock=f"delivery-{checksum}", queueing_lock=f"receipt-{receipt_id}")


def defer_receipt(app: procrastinate.App, receipt_id: int, checksum: str) -> int:
    try:
        return _configured(app, receipt_id, checksum).defer(receipt_id=receipt_id)
    except AlreadyEnqueued:
        return -1


async def defer_receipt_async(app: procrastinate.App, receipt_id: int, checksum: str) -> int:
    try:
        return await _configured(app, receipt_id, checksum).defer_async(receipt_id=receipt_id)
    except AlreadyEnqueued:
        return -1


def _configured_derive(app: procrastinate.App, key: str):
    # queueing lock: one waiting job per product; lock: one running job per product (a cascade queued while the
    # product runs waits for it, then finds the new inputs)
    # below ingest: near-real-time deliveries are never starved by a backlog of derived products
    return app.tasks[DERIVE_TASK].configure(lock=key, queueing_lock=key, priority=-1)


def defer_derive(catalog: CatalogSettings, req, *, cause: str = "request", requested_by: str | None = None,
                 app: procrastinate.App | None = None) -> int | None:
    """Queue the making of a derived product; None when a job for it is already waiting."""
    from processing.derive import record

    def run(queue: procrastinate.App) -> int | None:
        try:
            job_id = _configured_derive(queue, req.key).defer(request=req.as_args(), cause=cause)
        except AlreadyEnqueued:
            return None
        record(catalog, job_id, req, status="queued", requested_by=requested_by, cause=cause)
        return job_id

    if app is not None:
        return run(app)
    with opened(catalog, IngestSettings()) as queue:
        return run(queue)


DERIVED_TABLE = """
CREATE TABLE IF NOT EXISTS landsurf.derived_requests (
    job_id       bigint PRIMARY KEY,
    key          text NOT NULL,
    kind         text NOT NULL,
    request      jsonb NOT NULL,
    requested_by text,
    cause        text,
    status       text NOT NULL,
    item_id      text,
    collection   text,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS derived_requests_key_idx ON landsurf.derived_requests (key, job_id DESC);
CREATE INDEX IF NOT EXISTS derived_requests_by_idx ON landsurf.derived_requests (requested_by, status);
"""


def ensure_schema(catalog: CatalogSettings) -> bool:
    """Install procrastinate's tables once (as admin) and let the ingest role use them."""
    urls = resolve_urls(catalog)
    with connect(urls.admin, catalog) as conn:
        installed = conn.execute("SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL").fetchone()[0]
    if not installed:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=bounded_url(urls.admin, catalog, 600_000)))
        with app.open():
            app.schema_manager.apply_schema()
    with connect(urls.admin, catalog) as conn:
        user = conn.info.user
        ingest_user = urlsplit(urls.ingest).username
        if ingest_user and ingest_user != user:
            who = sql.Identifier(ingest_user)
            conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(who))
            conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(who))
            conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(who))
        api_user = urlsplit(urls.api).username
        if api_user and api_user != user:  # /health and /metrics count receipts left without a live job
            conn.execute(sql.SQL("GRANT SELECT ON public.procrastinate_jobs TO {}").format(sql.Identifier(api_user)))
        # where derived-product jobs stand, kept after procrastinate deletes their finished job rows
        conn.execute(DERIVED_TABLE)
        if ingest_user and ingest_user != user:
            conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON landsurf.derived_requests TO {}").format(
                sql.Identifier(ingest_user)))
        if api_user and api_user != user:
            conn.execute(sql.SQL("GRANT SELECT ON landsurf.derived_requests TO {}").format(sql.Identifier(api_user)))
    return not installed

# ------------------------------------------------------------------------------------------------ the sweep


@dataclass
class Sweep:
    ran: bool = False                                   # False: another sweeper held the lock
    stalled: list[int] = field(default_factory=list)    # job ids of dead workers, retried
    requeued: list[int] = field(default_factory=list)   # receipt ids that had no live job, queued again
    planned: list[int] = field(default_factory=list)    # derived-product jobs queued by the planning tick


def stranded(catalog: CatalogSettings, grace_s: float = 0.0) -> list[receipts.Receipt]:
    """Open receipts with no live job, unchanged for `grace_s` seconds (0: all of them)."""
    with session(catalog, "ingest") as conn:
        rows = conn.execute(
            f"SELECT {receipts.COLUMNS} FROM landsurf.deliveries d "
            "WHERE d.status IN ('received', 'processing', 'retrying') "
            "AND d.updated_at <= now() - make_interval(secs => %s) "
            "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.task_name = %s "
            "AND j.status IN ('todo', 'doing') AND j.args->>'receipt_id' = d.id::text) ORDER BY d.id",
            (grace_s, TASK_NAME)).fetchall()
    return [receipts.Receipt(*r) for r in rows]


def job_states(catalog: CatalogSettings, receipt_ids: list[int]) -> dict[int, str]:
    """The live job of each receipt (`todo` or `doing`), for `landsurf ingest status`."""
    if not receipt_ids:
        return {}
    with session(catalog, "ingest") as conn:
        rows = conn.execute(
            "SELECT (args->>'receipt_id')::bigint, status::text FROM procrastinate_jobs WHERE task_name = %s "
            "AND status IN ('todo', 'doing') AND args->>'receipt_id' = ANY(%s)",
            (TASK_NAME, [str(i) for i in receipt_ids])).fetchall()
    return {rid: status for rid, status in rows}


def _requeue_candidates(catalog: CatalogSettings, ingest: IngestSettings) -> list[tuple[int, str]]:
    """Stranded receipts that no live session processes, with their taking finished (sync: run in a thread)."""
    from ingest.inbox import resume_take

    out = []
    for rec in stranded(catalog, ingest.stalled_seconds):
        if receipts.is_claimed(catalog, rec.id):
            continue  # a live process (a direct `process()` call) is on it
        if rec.path != str(ingest.work_dir(catalog) / str(rec.id) / rec.name):
            rec = resume_take(catalog, ingest, rec)
            if rec.status not in receipts.OPEN:
                continue
        out.append((rec.id, rec.checksum))
    return out


async def sweep(app: IngestQueue) -> Sweep:
    """Retry the jobs of dead workers and re-queue receipts without a job (one sweeper at a time)."""
    catalog, ingest = app.catalog, app.ingest
    report = Sweep()
    conn = await psycopg.AsyncConnection.connect(resolve_urls(catalog).ingest, autocommit=True,
                                                 connect_timeout=max(1, int(catalog.connect_timeout_s)),
                                                 options=f"-c statement_timeout={catalog.statement_timeout_ms}")
    try:
        cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (SWEEP_LOCK,))
        if not (await cur.fetchone())[0]:
            return report
        report.ran = True
        stalled = [(job, INGEST_QUEUE) for job in await app.job_manager.get_stalled_jobs(
            task_name=TASK_NAME, seconds_since_heartbeat=ingest.stalled_seconds)]
        for task in (DERIVE_TASK, MOSAIC_TASK):
            stalled += [(job, DERIVE_QUEUE) for job in await app.job_manager.get_stalled_jobs(
                task_name=task, seconds_since_heartbeat=ingest.stalled_seconds)]
        for job, queue in stalled:
            try:
                await app.job_manager.retry_job(job, queue=queue)
                report.stalled.append(job.id)
                log.warning("job of a dead worker retried", job=job.id, receipt=job.task_kwargs.get("receipt_id"))
            except ConnectorException as exc:  # finished or retried meanwhile
                log.info("stalled job not retried", job=job.id, error=str(exc))
        for receipt_id, checksum in await asyncio.to_thread(_requeue_candidates, catalog, ingest):
            if await defer_receipt_async(app, receipt_id, checksum) != -1:
                report.requeued.append(receipt_id)
                log.warning("receipt without a job queued again", receipt=receipt_id)
        if app.tick_derived:  # derived products whose deadline passed, or that an L2A still lacks
            from processing.plan import tick

            report.planned = await asyncio.to_thread(tick, catalog)
    finally:
        await conn.close()  # releases the sweep lock
    return report


def sweep_now(catalog: CatalogSettings, ingest: IngestSettings) -> Sweep:
    """One sweep from synchronous code (the watcher, the CLI)."""

    async def run() -> Sweep:
        app = create_queue(catalog, ingest)
        async with app.open_async():
            return await sweep(app)

    return asyncio.run(run())


def retry(app: procrastinate.App, catalog: CatalogSettings, ingest: IngestSettings,
          receipt_ids: list[int]) -> list[tuple[int, str]]:
    """An operator's retry of receipts: each is reopened (fresh attempts) and queued. Returns what was done."""
    done = []
    live = job_states(catalog, receipt_ids)
    for rid in receipt_ids:
        try:
            rec = receipts.get(catalog, rid)
        except KeyError:
            done.append((rid, "no such receipt"))
            continue
        if rec.status in receipts.FINAL:
            done.append((rid, f"not retried: already {rec.status}"))
            continue
        if rid in live:
            done.append((rid, f"not retried: its job is already {live[rid]}"))
            continue
        rec = receipts.reopen(catalog, rid, f"retry requested (was {rec.status}: {rec.reason or 'no reason'})")
        defer_receipt(app, rid, rec.checksum)
        done.append((rid, "queued"))
    return done

# ------------------------------------------------------------------------------------------------ workers


def run_worker(app: IngestQueue, *, once: bool = False, concurrency: int = 1,
               queues: tuple[str, ...] = (INGEST_QUEUE, DERIVE_QUEUE, WEBHOOK_QUEUE)) -> None:
    """Process ingest and derived-product jobs; with `once`, stop when no job is due. Without it, run until
    SIGINT/SIGTERM, riding out database outages (the worker waits and reconnects)."""
    asyncio.run(_work(app, once, concurrency, tuple(queues)))


async def _work(app: IngestQueue, once: bool, concurrency: int,
                queues: tuple[str, ...] = (INGEST_QUEUE, DERIVE_QUEUE, WEBHOOK_QUEUE)) -> None:
    ingest = app.ingest
    app.tick_derived = not once
    if not once and WEBHOOK_QUEUE in queues:
        from processing.webhooks import schedule

        schedule(app, app.catalog)  # the periodic delivery of subscriptions' webhooks
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    current: list[asyncio.Task] = []
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: (stopping.set(), [t.cancel() for t in current]))
    backoff = 1.0
    while True:
        started = loop.time()
        try:
            async with app.open_async():
                await _sweep_logged(app)
                sweeper = None if once else asyncio.create_task(_sweep_every(app))
                worker = asyncio.create_task(app.run_worker_async(
                    queues=list(queues), wait=not once, concurrency=concurrency, install_signal_handlers=False,
                    delete_jobs="successful", update_heartbeat_interval=ingest.heartbeat_seconds,
                    stalled_worker_timeout=ingest.stalled_seconds,
                    fetch_job_polling_interval=min(ingest.poll_seconds, 5.0)))
                current[:] = [worker]
                try:
                    await worker
                except asyncio.CancelledError:
                    if not stopping.is_set():
                        raise
                finally:
                    if sweeper is not None:
                        sweeper.cancel()
            if once or stopping.is_set():
                return
            log.warning("worker stopped by itself (database lost?); starting again")
        except (ConnectorException, psycopg.Error, OSError, DatabaseError) as exc:
            if once or stopping.is_set():
                raise
            log.warning("worker lost the database; reconnecting", error=str(exc).strip()[:300], retry_in=backoff)
        if loop.time() - started > 60:
            backoff = 1.0  # a long run since the last fault: start the backoff over
        try:
            await asyncio.wait_for(stopping.wait(), backoff)
            return
        except asyncio.TimeoutError:
            backoff = min(backoff * 2, 30.0)


async def _sweep_logged(app: IngestQueue) -> None:
    try:
        await sweep(app)
    except (ConnectorException, psycopg.Error, OSError, DatabaseError) as exc:
        log.warning("sweep failed; it runs again later", error=str(exc).strip()[:300])
    except Exception as exc:  # noqa: BLE001 - the sweeper must outlive any single failure
        log.error("sweep failed; it runs again later", error=str(exc), exc_info=exc)


async def _sweep_every(app: IngestQueue) -> None:
    while True:
        await asyncio.sleep(app.ingest.sweep_seconds)
        await _sweep_logged(app)

"""The job queue: procrastinate on the catalog's own PostgreSQL, and the workers that drain it.

Durable jobs survive restarts; a job is retried with exponential backoff on system faults
(`TransientIngestError`); the job lock (the delivery's checksum) keeps two workers, on one machine
or many, from processing the same bytes at once, and the pipeline's receipt check makes a second
run of a finished delivery a no-op.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import procrastinate
from psycopg import sql

from catalog.database import bounded_url, connect, resolve_urls
from catalog.settings import CatalogSettings
from ingest.errors import TransientIngestError
from ingest.model import Delivery
from ingest.settings import IngestSettings

INGEST_QUEUE = "ingest"
TASK_NAME = "ingest.delivery"


def create_queue(catalog: CatalogSettings | None = None, ingest: IngestSettings | None = None) -> procrastinate.App:
    """A procrastinate app bound to the catalog database (ingest role), with the ingest task."""
    catalog = catalog or CatalogSettings()
    ingest = ingest or IngestSettings()
    conninfo = bounded_url(resolve_urls(catalog).ingest, catalog, max(catalog.statement_timeout_ms, 60_000))
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(
        name=TASK_NAME,
        queue=INGEST_QUEUE,
        retry=procrastinate.RetryStrategy(max_attempts=ingest.max_attempts, wait=1, exponential_wait=2,
                                          retry_exceptions={TransientIngestError}),
    )
    def ingest_delivery(receipt_id: int) -> str:
        from ingest.pipeline import process

        return process(catalog, ingest, receipt_id).status

    return app


def defer(app: procrastinate.App, delivery: Delivery) -> int:
    """Queue one delivery; the same receipt is never queued twice."""
    task = app.tasks[TASK_NAME].configure(
        lock=f"delivery-{delivery.checksum}", queueing_lock=f"receipt-{delivery.receipt_id}")
    try:
        return task.defer(receipt_id=delivery.receipt_id)
    except procrastinate.exceptions.AlreadyEnqueued:
        return -1


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
    return not installed


def run_worker(app: procrastinate.App, *, once: bool = False, concurrency: int = 1) -> None:
    """Process ingest jobs; with `once`, stop when the queue is empty."""
    app.run_worker(queues=[INGEST_QUEUE], wait=not once, concurrency=concurrency,
                   install_signal_handlers=not once, delete_jobs="successful")

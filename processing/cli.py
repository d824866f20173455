"""The `landsurf` command: a thin typer app composing catalog, ingest and processing.

It lives in `processing/` because it may import all three packages and nothing imports it.
Domain errors become one line on stderr (problem — fix) and a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from catalog.errors import LandsurfError
from catalog.settings import CatalogSettings

app = typer.Typer(help="landsurf: a land-surface satellite data center in a box.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="The catalog database (embedded PostgreSQL by default).", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
catalog_app = typer.Typer(help="The catalog's items as a whole.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
users_app = typer.Typer(help="Users who download, and their expiring tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
out = Console(soft_wrap=True)
err = Console(stderr=True)


def _settings() -> CatalogSettings:
    from catalog.logging import configure_logging

    settings = CatalogSettings()
    configure_logging(settings.log_level)
    return settings


def _embedded(settings: CatalogSettings):
    from catalog.embedded import EmbeddedCluster

    if not settings.embedded:
        err.print("LANDSURF_DATABASE_URL is set: nothing embedded to manage.", style="yellow")
        raise typer.Exit(0)
    return EmbeddedCluster(settings)


@db_app.command("start")
def db_start() -> None:
    """Create (first time) and start the embedded PostgreSQL, then migrate it."""
    settings = _settings()
    cluster = _embedded(settings)
    started = cluster.start()
    state = "started" if started else "already running"
    out.print(f"PostgreSQL {state} on 127.0.0.1:{cluster.port} (data {cluster.data_dir})")
    db_migrate()


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (fast shutdown)."""
    cluster = _embedded(_settings())
    out.print("stopped" if cluster.stop() else "not running")


@db_app.command("status")
def db_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Is the database up, where, and with which pgSTAC."""
    from catalog.database import pgstac_version, session

    settings = _settings()
    info: dict = {"embedded": settings.embedded}
    if settings.embedded:
        st = _embedded(settings).status()
        info |= {"running": st.running, "pid": st.pid, "port": st.port, "data_dir": str(st.data_dir)}
    try:
        with session(settings, "admin") as conn:
            info["pgstac_version"] = pgstac_version(conn)
            info["reachable"] = True
    except LandsurfError as exc:
        info["reachable"] = False
        info["error"] = exc.problem
    if as_json:
        out.print_json(json.dumps(info))
    else:
        for k, v in info.items():
            out.print(f"{k:>15}: {v}")
    if not info["reachable"]:
        raise typer.Exit(3)


@db_app.command("url")
def db_url(role: str = typer.Option("admin", help="admin | ingest | api")) -> None:
    """Print the connection URL of one database role."""
    from catalog.database import resolve_urls

    urls = resolve_urls(_settings())
    if role not in ("admin", "ingest", "api"):
        raise typer.BadParameter("role must be admin, ingest or api")
    print(getattr(urls, role))


@db_app.command("migrate")
def db_migrate() -> None:
    """Bring pgSTAC and landsurf's schema to this version and (re)declare the collections."""
    from processing.setup import prepare_database

    version, ids = prepare_database(_settings())
    out.print(f"pgSTAC {version}; collections: {', '.join(ids)}; job queue ready")


class _IngestGroup(TyperGroup):
    """`landsurf ingest PATH…` stays the shorthand of `landsurf ingest add PATH…`."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["add", *args]
        return super().parse_args(ctx, args)


ingest_app = typer.Typer(cls=_IngestGroup, no_args_is_help=True, help=(
    "MUSCATE L2A deliveries (zip or folder): receipt, validation, COGs, item, publication. "
    "`landsurf ingest PATH…` is `landsurf ingest add PATH…`."))
app.add_typer(ingest_app, name="ingest")
SETTLED = ("published", "duplicate", "quarantined", "returned", "failed", "retrying")


@ingest_app.command("add", help=(
    "Ingest deliveries now, through the job queue, in this process (other workers may help). Exit codes: 0 every "
    "delivery published (or a duplicate); 6 one was quarantined or returned to the inbox (see its reason); 7 one "
    "waits for a retry after a fault of the system (a `landsurf worker` retries it) or failed (`landsurf ingest "
    "status`, then `landsurf ingest retry`); 2 a path does not exist."))
def ingest_add(
    paths: list[str] = typer.Argument(..., metavar="PATH…", help="Zips or folders (copied; never consumed)."),
    queue: bool = typer.Option(False, "--queue", help="Only queue the deliveries for `landsurf worker`."),
) -> None:
    import time
    from pathlib import Path

    from ingest import receipts
    from ingest.inbox import take
    from ingest.settings import IngestSettings
    from processing.queue import INGEST_QUEUE, create_queue, defer, job_states, opened, run_worker

    settings, ingest_settings = _settings(), IngestSettings()
    missing = [a for a in paths if not Path(a).exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    taken = []
    with opened(settings, ingest_settings) as app_q:
        for a in paths:
            delivery = take(settings, ingest_settings, Path(a))
            taken.append(delivery)
            if delivery.status == "quarantined" or job_states(settings, [delivery.receipt_id]):
                continue  # refused outright, or joined a receipt whose job is already live
            defer(app_q, delivery)
            if queue:
                out.print(f"queued {delivery.name} (receipt {delivery.receipt_id})")
    if queue:
        return
    ids = [d.receipt_id for d in taken]
    while True:
        rows = {i: receipts.get(settings, i) for i in ids}
        if all(r.status in SETTLED for r in rows.values()):
            break
        # ours, and whatever else is due on the ingest queue (derived products are left to `landsurf worker`)
        run_worker(create_queue(settings, ingest_settings), once=True, queues=(INGEST_QUEUE,))
        if any(receipts.get(settings, i).status not in SETTLED for i in ids):
            time.sleep(0.5)  # another worker has it, or its job is not due yet
    code = 0
    for d in taken:
        r = rows[d.receipt_id]
        detail = f": {r.reason}" if r.reason else ""
        line = f"{d.name} (receipt {r.id}): {r.status} {r.product_id or ''}{detail}"
        if r.status in ("published", "duplicate"):
            out.print(line)
        elif r.status in ("quarantined", "returned"):
            err.print(line)
            code = max(code, 6)
        else:
            err.print(line + (" — a `landsurf worker` retries it" if r.status == "retrying" else ""))
            code = 7
    if code:
        raise typer.Exit(code)


@ingest_app.command("watch", help=(
    "Watch an inbox: take complete deliveries and queue them for `landsurf worker`. Runs until SIGINT/SIGTERM, "
    "through database outages and whatever lies in the inbox."))
def ingest_watch(directory: Optional[str] = typer.Argument(None, help="Inbox to watch [LANDSURF_INGEST_INBOX].")
                 ) -> None:
    import signal
    import threading
    from pathlib import Path

    from ingest.settings import IngestSettings
    from ingest.watch import Watcher
    from processing.queue import defer, opened, sweep_now

    settings, ingest_settings = _settings(), IngestSettings()
    if directory is not None:
        ingest_settings = ingest_settings.model_copy(update={"inbox": Path(directory)})

    def enqueue(deliveries) -> None:
        with opened(settings, ingest_settings) as app_q:
            for d in deliveries:
                defer(app_q, d)

    def report(d) -> None:
        what = f"refused: {_receipt_reason(settings, d.receipt_id)}" if d.status == "quarantined" else "queued"
        out.print(f"received {d.name} (receipt {d.receipt_id}), {what}")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watcher = Watcher(settings, ingest_settings, enqueue, sweep=lambda: sweep_now(settings, ingest_settings),
                      stop=stop, on_delivery=report)
    out.print(f"watching {watcher.inbox.inbox} (complete after {ingest_settings.stable_seconds:g} s unchanged, "
              f"or a `<folder>.done` marker); Ctrl-C to stop")
    watcher.run()


def _receipt_reason(settings, receipt_id: int) -> str:
    from ingest import receipts

    return receipts.get(settings, receipt_id).reason or ""


@ingest_app.command("status")
def ingest_status(
    limit: int = typer.Option(50, min=1, help="Rows shown (latest first)."),
    status: Optional[str] = typer.Option(None, help="Only receipts of this status."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (a list of receipts)."),
) -> None:
    """Receipts: status, live job, attempts, product, latency, reason; and any open receipt without a job."""
    from rich.table import Table

    from ingest import receipts
    from processing.queue import job_states, stranded

    settings = _settings()
    rows = receipts.recent(settings, limit, status)
    jobs = job_states(settings, [r.id for r in rows if r.status in receipts.OPEN])
    if as_json:
        out.print_json(json.dumps([r.as_dict() | {"job": jobs.get(r.id)} for r in rows]))
        return
    table = Table("id", "delivery", "status", "job", "attempts", "product", "latency (s)", "reason")
    for r in rows:
        table.add_row(str(r.id), r.name, r.status, jobs.get(r.id, ""), str(r.attempts), r.product_id or "",
                      f"{r.latency_s:.1f}" if r.latency_s is not None else "", (r.reason or "")[:100])
    out.print(table)
    lost = stranded(settings)
    if lost:
        err.print(f"{len(lost)} open receipt(s) without a job: {', '.join(str(r.id) for r in lost[:20])} — a running "
                  "worker queues them again, or `landsurf ingest retry ID…`")


@ingest_app.command("retry", help=(
    "Start receipts again with fresh attempts: after `failed`, or to retry a system fault now. The retry itself "
    "removes what earlier attempts left."))
def ingest_retry(
    receipt_ids: Optional[list[int]] = typer.Argument(None, metavar="RECEIPT…", help="Receipts to retry."),
    failed: bool = typer.Option(False, "--failed", help="Every `failed` receipt."),
) -> None:
    from ingest import receipts
    from ingest.settings import IngestSettings
    from processing.queue import opened, retry, sweep_now

    settings, ingest_settings = _settings(), IngestSettings()
    ids = list(receipt_ids or [])
    if failed:
        ids += [r.id for r in receipts.with_status(settings, ("failed",)) if r.id not in ids]
    if not ids and not failed:
        raise typer.BadParameter("name one or more receipts, or give --failed")
    report = sweep_now(settings, ingest_settings)
    for rid in report.requeued:
        out.print(f"receipt {rid}: had no job, queued again")
    with opened(settings, ingest_settings) as app_q:
        done = retry(app_q, settings, ingest_settings, ids)
    for rid, what in done:
        out.print(f"receipt {rid}: {what}")
    if not done:
        out.print("no failed receipt")
    if any(what == "no such receipt" for _, what in done):
        raise typer.Exit(4)


@app.command("worker", help=(
    "Run ingest and derived-product jobs from the queue (any number of workers, on any machine, may run at once); retries the jobs of "
    "dead workers and queues receipts left without a job."))
def worker(once: bool = typer.Option(False, "--once", help="Stop when no job is due."),
           concurrency: int = typer.Option(1, min=1, help="Jobs at once in this process.")) -> None:
    from ingest.settings import IngestSettings
    from processing.queue import create_queue, run_worker

    settings = _settings()
    out.print("worker started" + (" (until no job is due)" if once else ""))
    run_worker(create_queue(settings, IngestSettings()), once=once, concurrency=concurrency)


@app.command("sample")
def sample(count: int = typer.Option(6, min=1, max=50), size: int = typer.Option(512, min=64, max=4096)) -> None:
    """Generate a few small synthetic L2A deliveries of tile T31TCH and publish them through the pipeline."""
    from processing.demo import publish_series

    settings = _settings()
    for done in publish_series(settings, count=count, size=size, work=settings.home_dir / "sample-deliveries"):
        out.print(f"{done.product_id}: {done.status}" + (f" ({done.reason})" if done.reason else ""))
    out.print(f"store: {settings.store_dir}")


@app.command("serve")
def serve(host: Optional[str] = typer.Option(None, help="Address to listen on [LANDSURF_HOST]."),
          port: Optional[int] = typer.Option(None, help="Port to listen on [LANDSURF_PORT]."),
          workers: int = typer.Option(1, min=1, help="Worker processes (one per core serves files fastest).")) -> None:
    """Serve the API (STAC, tiles, downloads, /health, /metrics)."""
    import uvicorn

    settings = _settings()
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    if settings.public_url:
        out.print(f"public URL {settings.public_url} (LANDSURF_PUBLIC_URL)")
    else:
        out.print(f"public URL {settings.base_url} (derived from --host/--port; set LANDSURF_PUBLIC_URL "
                  "when the API is reached through another address, a proxy or a path prefix)")
    out.print(f"landsurf API on {settings.base_url}/  (OpenAPI docs: {settings.base_url}/api.html)")
    # forwarded headers are judged by the app (LANDSURF_TRUSTED_PROXIES), never by the server
    options = dict(host=settings.host, port=settings.port, log_level="warning", access_log=False,
                   proxy_headers=False, server_header=False, timeout_keep_alive=settings.keep_alive_s)
    if workers == 1:
        uvicorn.run(api_app(settings), **options)
    else:  # worker processes import the factory: they read the same settings from the environment
        os.environ["LANDSURF_HOST"], os.environ["LANDSURF_PORT"] = settings.host, str(settings.port)
        uvicorn.run("processing.cli:api_app", factory=True, workers=workers, **options)


def api_app(settings: CatalogSettings | None = None):
    """The served app: the catalog's, with the routers of `processing` (OGC API – Processes, time-lapses) and the
    products' colormaps (snow, snow-cover duration) added."""
    from catalog.app import create_app
    from processing.colormaps import tiler_colormaps
    from processing.processes_api import processes_router
    from processing.timelapse_api import timelapse_router

    settings = settings or CatalogSettings()
    return create_app(settings, routers=[processes_router(settings), timelapse_router(settings)],
                      colormaps=tiler_colormaps())


@app.command("demo")
def demo(port: Optional[int] = None,
         tiles: str = typer.Option("31TCH,31TDH,31TCJ", help="Tiles to generate (comma-separated MGRS ids)."),
         months: int = typer.Option(3, min=1, max=12, help="Monthly L3A syntheses per tile (the last ones due)."),
         every_days: int = typer.Option(10, min=1, max=30, help="Days between two acquisitions of a tile."),
         size: int = typer.Option(1098, min=128, max=10980, help="10 m pixels a side of each product (10980 is "
                                                                  "a full tile)."),
         serve_after: bool = typer.Option(True, "--serve/--no-serve", help="Serve the API when done.")) -> None:
    """The whole box on the embedded default: database, synthetic deliveries of a few mountain tiles through the
    ingest pipeline, their snow maps and monthly L3A syntheses made by the queue's own planning, the API; prints
    the viewer's URL."""
    import time
    from datetime import date

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from processing.demo import _counts, demo_plan, run_demo

    settings = _settings()
    if "LANDSURF_LOG_LEVEL" not in os.environ:  # the progress bars tell the story; warnings still show
        import logging

        from catalog.logging import configure_logging

        configure_logging("WARNING")
        logging.getLogger().setLevel(logging.WARNING)
    # the overview of a month's mosaic is built as soon as its L3As are in, within this run (production waits a
    # minute to fold a burst of publications into one build)
    os.environ.setdefault("LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S", "0")
    settings = settings.model_copy(update={"port": port or settings.port})
    names = tuple(t.strip().upper().removeprefix("T") for t in tiles.split(",") if t.strip())
    if not names:
        raise typer.BadParameter("give at least one tile, e.g. --tiles 31TCH")
    plan = demo_plan(date.today(), tiles=names, months=months, every_days=every_days, size=size)
    db_start()
    out.print(f"demo: {len(plan.tiles)} tile(s) {', '.join(plan.tiles)}, L3A months {', '.join(plan.months)}, "
              f"{plan.deliveries} deliveries from {plan.first} to {plan.last}", highlight=False)
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err) as bar:
        tasks: dict[str, int] = {}

        def on_stage(name: str, total: int | None) -> None:
            for t in tasks.values():
                bar.update(t, completed=bar.tasks[t].total or bar.tasks[t].completed)
            label = {"ingest": "L2A deliveries ingested", "dem": "DEMs registered",
                     "derive": "derived products (snow, L3A, SCD) made"}[name]
            if total is None:  # derived products: a snow map per L2A, an L3A per tile and month (and the SCDs
                total = plan.deliveries + len(plan.tiles) * plan.months_count  # of closed years: added as seen)
            tasks[name] = bar.add_task(label, total=total)

        def on_step(what: str) -> None:
            name = list(tasks)[-1]
            if name == "derive":
                counts = _counts(settings)
                done = sum(counts.get(c, 0) for c in ("sentinel2-snow", "sentinel2-l3a", "sentinel2-snow-duration"))
                bar.update(tasks[name], completed=done, total=max(done, bar.tasks[tasks[name]].total or 0))
            else:
                bar.advance(tasks[name])

        report = run_demo(settings, plan, on_stage=on_stage, on_step=on_step)
        on_step("done")
    again = sum(o.status == "duplicate" for o in report.ingested)
    if again:
        out.print(f"{again} deliveries were already published (an earlier demo in this home)", highlight=False)
    for o in report.ingested:
        if o.status not in ("published", "duplicate"):
            out.print(f"{o.product_id}: {o.status} ({o.reason})", highlight=False)
    out.print("published: " + ", ".join(f"{n} {c}" for c, n in sorted(report.counts.items())
                                         if not c.endswith("-history")) +
              f" in {time.monotonic() - started:.0f} s", highlight=False)
    out.print(f"monthly mosaics with their overview (zooms 0-7): {', '.join(report.overviews) or 'none'}",
              highlight=False)
    out.print(f"viewer: {settings.base_url}/viewer/?month=latest", highlight=False)
    if serve_after:
        serve(host=None, port=settings.port, workers=1)


@catalog_app.command("rebase")
def catalog_rebase(
    old_url: str = typer.Option(..., "--from", help="The public URL the items were published under."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would change; change nothing."),
) -> None:
    """Rewrite absolute hrefs of an earlier public URL into store paths (idempotent, safe to interrupt)."""
    from rich.progress import Progress

    from catalog.rebase import rebase

    settings = _settings()
    if "://" not in old_url:
        raise typer.BadParameter("--from takes the old public URL, e.g. http://127.0.0.1:8000")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("items examined", total=None)
        report = rebase(settings, old_url, dry_run=dry_run,
                        progress=lambda r: bar.update(task, completed=r.examined))
    verb = "would rewrite" if dry_run else "rewrote"
    out.print(f"{report.examined} items examined; {verb} {report.hrefs} hrefs in {report.items} items")


@token_app.command("create")
def token_create(name: str = typer.Option(..., help="Who or what uses it."),
                 role: str = typer.Option("admin", help="admin (writes + operator views) | operator (operator views) "
                                                        "| user (asks for derived products: /processes)")) -> None:
    """Create a bearer token (printed once; only its hash is stored)."""
    from catalog.auth import create_token
    from catalog.database import session

    with session(_settings(), "admin") as conn:
        try:
            print(create_token(conn, name, role))  # type: ignore[arg-type]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke every token of that name."""
    from catalog.auth import revoke_token
    from catalog.database import session

    with session(_settings(), "admin") as conn:
        out.print(f"{revoke_token(conn, name)} token(s) revoked")


@users_app.command("add")
def users_add(name: str = typer.Argument(..., help="The user's name (letters, digits, . _ @ + -).")) -> None:
    """Create a download user (then give them a token with `landsurf users token NAME`)."""
    from catalog.database import session
    from catalog.users import add_user

    with session(_settings(), "admin") as conn:
        add_user(conn, name)
    out.print(f"user {name} added; give them a token with `landsurf users token {name}`")


@users_app.command("token")
def users_token(name: str = typer.Argument(..., help="The user's name."),
                days: float = typer.Option(30.0, help="Lifetime; the holder may refresh it in its second half "
                                                      "(`POST /auth/refresh`, done by `landsurf download`).")) -> None:
    """Print a new token of the user, once (only its hash is stored)."""
    from catalog.database import session
    from catalog.users import issue_token

    with session(_settings(), "admin") as conn:
        token, expires = issue_token(conn, name, days)
    print(token)
    err.print(f"expires {expires:%Y-%m-%d %H:%M:%S %Z}; refreshable from half its life", highlight=False)


@users_app.command("revoke")
def users_revoke(name: str = typer.Argument(..., help="The user's name.")) -> None:
    """Revoke the user and every token it holds (each API process stops accepting them within
    LANDSURF_TOKEN_CACHE_S seconds)."""
    from catalog.database import session
    from catalog.users import revoke_user

    with session(_settings(), "admin") as conn:
        out.print(f"user {name} revoked ({revoke_user(conn, name)} live token(s))")


@users_app.command("list")
def users_list() -> None:
    """Users, whether revoked, their live tokens and the latest expiry."""
    from catalog.database import session
    from catalog.users import list_users

    with session(_settings(), "admin") as conn:
        for u in list_users(conn):
            state = f"revoked {u['revoked']:%Y-%m-%d}" if u["revoked"] else "active"
            last = f", last expiry {u['last_expiry']:%Y-%m-%d %H:%M}" if u["last_expiry"] else ""
            out.print(f"{u['name']}: {state}, {u['live_tokens']} live token(s){last}", highlight=False)


@app.command("download")
def download(
    out_dir: str = typer.Option(..., "--out", help="Where products go: OUT/<collection>/<item>/<files>."),
    api: str = typer.Option("http://127.0.0.1:8000", envvar="LANDSURF_API", help="The STAC API's root URL."),
    collection: list[str] = typer.Option([], "--collection", help="Collection id (repeatable)."),
    tile: list[str] = typer.Option([], "--tile", help="MGRS tile, e.g. 31TCH (repeatable; grid:code MGRS-…)."),
    bbox: Optional[str] = typer.Option(None, help="west,south,east,north in degrees."),
    datetime_: Optional[str] = typer.Option(None, "--datetime", help="An RFC 3339 instant or interval (a/b, ../b)."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", min=0, max=100, help="Largest eo:cloud_cover."),
    ids: list[str] = typer.Option([], "--id", help="Item id (repeatable)."),
    asset: list[str] = typer.Option([], "--asset", help="Only these asset keys (repeatable; default: all)."),
    token: Optional[str] = typer.Option(None, envvar="LANDSURF_TOKEN", help="Bearer token (sent to the API's host "
                                                                            "only)."),
    token_file: Optional[str] = typer.Option(None, help="A file holding the token; rewritten when it is refreshed."),
    token_command: Optional[str] = typer.Option(None, help="A command printing a fresh token, run again on a 401 "
                                                           "(for APIs with their own token service)."),
    parallel: int = typer.Option(4, min=1, max=64, help="Files downloaded at once."),
    retries: int = typer.Option(5, min=0, max=50, help="Attempts per file after the first, with backoff."),
    verify_existing: bool = typer.Option(False, "--verify-existing", help="Hash every complete file again, even "
                                                                          "those the manifest vouches for."),
    limit: Optional[int] = typer.Option(None, min=1, help="Stop after this many products (default: every match)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Download every product a search finds, resumably: parallel, Range-resumed `.part` files, `file:checksum`
    verified, complete files skipped, a manifest (OUT/manifest.jsonl). Exits 1 when anything failed."""
    from pathlib import Path

    from processing.download_client import DownloadOptions, Query, TokenSource, run

    query = Query(collections=collection, tiles=tile, bbox=bbox, datetime=datetime_, max_cloud=max_cloud, ids=ids,
                  limit=limit)
    options = DownloadOptions(parallel=parallel, retries=retries, assets=asset, verify_existing=verify_existing,
                              progress=not quiet)
    auth = TokenSource(token=token, token_file=Path(token_file) if token_file else None, command=token_command)
    report = run(api, query, Path(out_dir), options, auth, console=err)
    out.print(report.summary(), highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("timelapse")
def timelapse(
    bbox: str = typer.Option(..., help="The area: west,south,east,north in degrees."),
    datetime_: str = typer.Option(..., "--datetime", help="The period: start/end (dates or RFC 3339 instants)."),
    out_file: str = typer.Option(..., "--out", help="The file written (its suffix picks the format: .gif .webp "
                                                    ".mp4)."),
    collection: str = typer.Option("sentinel2-l2a", help="sentinel2-l2a, sentinel2-snow or sentinel2-l3a "
                                                         "(or l2a, snow, l3a)."),
    max_cloud: float = typer.Option(20, "--max-cloud", min=0, max=100, help="Largest eo:cloud_cover shown."),
    format_: Optional[str] = typer.Option(None, "--format", help="gif | webp | mp4 [the --out suffix, else gif]."),
    size: Optional[int] = typer.Option(None, help="Longest frame side in pixels [the API's default]."),
    fps: int = typer.Option(2, min=1, max=30, help="Frames per second."),
    api: str = typer.Option("http://127.0.0.1:8000", envvar="LANDSURF_API", help="The landsurf API's root URL."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """An animation of the clear-sky pictures of an area over a period, one dated frame per date, made by a
    landsurf API (GET /timelapse). Exit codes: 2 a bad request, 4 nothing clear to show."""
    from pathlib import Path

    from processing.timelapse_client import fetch, format_for

    out_path = Path(out_file)
    params = {"bbox": bbox, "datetime": datetime_, "collection": collection, "max_cloud": max_cloud,
              "format": format_for(out_path, format_), "size": size, "fps": fps}
    got = fetch(api, params, out_path, console=err, progress=not quiet)
    out.print(f"{got.path}: {got.frames} frames ({got.dates[0]} … {got.dates[-1]}), {got.bytes} bytes",
              highlight=False)


@app.command("generate")
def generate(
    out_dir: str = typer.Option(..., "--out", help="Directory receiving the products (created if missing)."),
    start: str = typer.Option(..., help="First acquisition date, YYYY-MM-DD."),
    end: Optional[str] = typer.Option(None, help="Last date, inclusive, YYYY-MM-DD [--start]."),
    tile: str = typer.Option("31TCH", help="Sentinel-2 tile (MGRS id), e.g. 31TCH."),
    every: int = typer.Option(5, min=1, help="Days between acquisitions (SENTINEL2A/B alternate)."),
    size: int = typer.Option(1098, min=64, max=10980, help="10 m pixels a side from the tile's corner (even)."),
    full: bool = typer.Option(False, "--full", help="The whole tile, 10980 px (overrides --size)."),
    seed: int = typer.Option(0, min=0, help="Same seed, same bytes."),
    folder: bool = typer.Option(False, "--folder", help="Write product folders instead of zips."),
    version: str = typer.Option("1-0", help="Product version, as in the name (1-0)."),
    truth_dir: Optional[str] = typer.Option(None, help="Where truth and DEM sidecars go [--out]."),
) -> None:
    """Write synthetic MUSCATE Sentinel-2 L2A products, with their ground truth, one line per product."""
    from datetime import date
    from pathlib import Path

    from ingest.generate import iter_series

    try:
        first = date.fromisoformat(start)
        last = date.fromisoformat(end) if end else first
        if last < first:
            raise ValueError("--end is before --start")
        for product in iter_series(Path(out_dir), tile, first, last, every, seed=seed,
                                   size=10980 if full else size, version=version, as_zip=not folder,
                                   truth_dir=Path(truth_dir) if truth_dir else None):
            print(f"{product.path}  cloud {product.cloud_percent}%  snow {product.snow_percent}%", flush=True)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


process_app = typer.Typer(no_args_is_help=True, help=(
    "Derived products made now in this process with a progress bar (or queued with --queue for `landsurf "
    "worker`): a snow map of an L2A, a monthly L3A, a snow-cover duration. Nothing is made when the current "
    "product already comes from the same inputs and parameters. Exit codes: 0 published; 2 a bad request; 6 "
    "its inputs are not published; 7 a fault of the system (retry)."))
app.add_typer(process_app, name="process")
dem_app = typer.Typer(help="The DEM of each tile (the snow maps' snowline).", no_args_is_help=True)
app.add_typer(dem_app, name="dem")


def _process(req, queue: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from processing.derive import request_product, run_request

    settings = _settings()
    req = req.validate()
    if queue:
        outcome = request_product(settings, req, requested_by="cli")
        what = f"job {outcome.job_id}" if outcome.job_id is not None else outcome.item_id
        out.print(f"{req.describe()}: {outcome.status} ({what})", highlight=False)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(req.describe(), total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=f"{req.describe()}: {stage}", completed=done, total=total)

        outcome = run_request(settings, req, progress=progress, waiting=lambda: bar.update(
            task, description=f"{req.describe()}: waiting for another run of it (a worker?)"))
    detail = f" ({outcome.reason})" if outcome.reason else ""
    out.print(f"{req.describe()}: {outcome.status} {outcome.item_id} in {outcome.collection}{detail}",
              highlight=False)


@process_app.command("snow")
def process_snow(l2a_id: str = typer.Argument(..., help="The L2A's id (its current version is used)."),
                 queue: bool = typer.Option(False, "--queue", help="Only queue it for `landsurf worker`.")) -> None:
    """The snow map of an L2A (with the tile's DEM when one is registered: `landsurf dem add`)."""
    from processing.derive import DerivedRequest

    _process(DerivedRequest("snow", l2a_id=l2a_id), queue)


@process_app.command("l3a")
def process_l3a(tile: str = typer.Option(..., "--tile", help="MGRS tile, e.g. 31TCH."),
                month: str = typer.Option(..., "--month", help="YYYY-MM: the synthesis of the 15th, ±23 days."),
                queue: bool = typer.Option(False, "--queue", help="Only queue it for `landsurf worker`.")) -> None:
    """The monthly L3A synthesis of a tile from the L2As published in its ±23-day window."""
    from processing.derive import DerivedRequest

    _process(DerivedRequest("l3a", tile=tile, month=month), queue)


@process_app.command("scd")
def process_scd(tile: str = typer.Option(..., "--tile", help="MGRS tile, e.g. 31TCH."),
                year: Optional[int] = typer.Option(None, "--year", help="Hydrological year N: 1 Sep N – 31 Aug N+1."),
                start: Optional[str] = typer.Option(None, help="Or a period: first day, YYYY-MM-DD."),
                stop: Optional[str] = typer.Option(None, help="Last day, YYYY-MM-DD."),
                queue: bool = typer.Option(False, "--queue", help="Only queue it for `landsurf worker`.")) -> None:
    """The snow-cover duration of a tile over a hydrological year (or a period) from its published snow maps."""
    from processing.derive import DerivedRequest
    from processing.scd import hydrological_year

    if year is not None:
        if start or stop:
            raise typer.BadParameter("give --year or --start/--stop, not both")
        first, last = hydrological_year(year)
    elif start and stop:
        first, last = start, stop
    else:
        raise typer.BadParameter("give --year N, or --start and --stop")
    _process(DerivedRequest("scd", tile=tile, start=first, stop=last), queue)


@dem_app.command("add")
def dem_add(tile: str = typer.Argument(..., help="MGRS tile, e.g. 31TCH."),
            file: str = typer.Argument(..., help="A GDAL-readable DEM (kept when on the tile's 20 m grid, else "
                                                  "resampled onto it).")) -> None:
    """Register the DEM of a tile (a new file becomes the current version; the snow maps made with the previous
    one are queued again)."""
    from pathlib import Path

    from processing.dem import register_dem
    from processing.plan import on_dem_published

    if not Path(file).is_file():
        raise typer.BadParameter(f"no such file: {file}")
    settings = _settings()
    published = register_dem(settings, tile, Path(file))
    out.print(f"{published.outcome} {published.item_id}", highlight=False)
    jobs = on_dem_published(settings, tile, published.superseded)
    if jobs:
        out.print(f"{len(jobs)} snow map(s) made with the previous DEM queued again", highlight=False)


mosaics_app = typer.Typer(help="Monthly mosaics and their overviews (the tiles of zooms <= 7).", no_args_is_help=True)
app.add_typer(mosaics_app, name="mosaics")


@mosaics_app.command("build")
def mosaics_build(collection: str = typer.Option("sentinel2-l3a", help="The collection of monthly syntheses."),
                  month: Optional[str] = typer.Option(None, help="YYYY-MM; every month with items when omitted."),
                  force: bool = typer.Option(False, "--force", help="Rebuild even when the inputs are unchanged."),
                  queue: bool = typer.Option(False, "--queue", help="Only queue the builds for `landsurf worker`.")
                  ) -> None:
    """Register each month's mosaic search and build its overview COG (skipped when made from the same items)."""
    from processing.mosaics import build_overview, months_of, queue_overview

    settings = _settings()
    months = [month] if month else months_of(settings, collection)
    if not months:
        out.print(f"no items in {collection}: nothing to build", highlight=False)
    for m in months:
        if queue:
            job = queue_overview(settings, collection, m, "cli", delay_s=0)
            out.print(f"{collection} {m}: " + (f"queued (job {job})" if job is not None else "already queued"),
                      highlight=False)
            continue
        done = build_overview(settings, collection, m, force=force)
        out.print(f"{collection} {m}: {done.status}, search {done.search_id}, {done.items} item(s)"
                  + (f", {done.path} in {done.seconds:.1f} s" if done.status == "built" else ""), highlight=False)


def main() -> None:
    try:
        app()
    except LandsurfError as exc:
        err.print(f"error: {exc}", style="bold red", soft_wrap=True, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

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

from catalog.errors import LandsurfError
from catalog.settings import CatalogSettings

app = typer.Typer(help="landsurf: a land-surface satellite data center in a box.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="The catalog database (embedded PostgreSQL by default).", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
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


@app.command("ingest", context_settings={"allow_extra_args": False})
def ingest(
    args: list[str] = typer.Argument(..., metavar="PATH… | watch [DIR] | status",
                                     help="Deliveries to ingest now; `watch [DIR]` to watch an inbox; `status`."),
    queue: bool = typer.Option(False, "--queue", help="Only queue the deliveries for `landsurf worker`."),
    limit: int = typer.Option(50, help="Rows shown by `status`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable `status`."),
) -> None:
    """Ingest MUSCATE L2A deliveries (zip or folder): receipt, validation, COGs, item, publication."""
    from pathlib import Path

    from ingest.settings import IngestSettings

    settings, ingest_settings = _settings(), IngestSettings()
    if args[0] == "status":
        return _ingest_status(settings, limit, as_json)
    if args[0] == "watch":
        return _ingest_watch(settings, ingest_settings, Path(args[1]) if len(args) > 1 else None)
    from ingest.inbox import take
    from ingest.pipeline import process

    missing = [a for a in args if not Path(a).exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    if queue:
        from processing.queue import create_queue, defer

        app_q = create_queue(settings, ingest_settings)
        with app_q.open():
            for a in args:
                delivery = take(settings, ingest_settings, Path(a))
                defer(app_q, delivery)
                out.print(f"queued {delivery.name} (receipt {delivery.receipt_id})")
        return
    failed = 0
    for a in args:
        delivery = take(settings, ingest_settings, Path(a))
        try:
            outcome = process(settings, ingest_settings, delivery.receipt_id)
        except LandsurfError as exc:
            failed += 1
            err.print(f"{delivery.name}: failed — {exc}")
            continue
        detail = f": {outcome.reason}" if outcome.reason else ""
        out.print(f"{delivery.name}: {outcome.status} {outcome.product_id or ''}{detail}")
        failed += outcome.status == "quarantined"
    if failed:
        raise typer.Exit(6)


def _ingest_watch(settings, ingest_settings, directory) -> None:
    import time

    from ingest.inbox import Inbox
    from processing.queue import create_queue, defer

    if directory is not None:
        ingest_settings = ingest_settings.model_copy(update={"inbox": directory})
    inbox = Inbox(settings, ingest_settings)
    app_q = create_queue(settings, ingest_settings)
    out.print(f"watching {inbox.inbox} (complete after {ingest_settings.stable_seconds:g} s unchanged, "
              f"or a `<folder>.done` marker); Ctrl-C to stop")
    with app_q.open():
        while True:
            for delivery in inbox.scan():
                defer(app_q, delivery)
                out.print(f"received {delivery.name} (receipt {delivery.receipt_id}), queued")
            time.sleep(ingest_settings.poll_seconds)


def _ingest_status(settings, limit: int, as_json: bool) -> None:
    from rich.table import Table

    from ingest import receipts

    rows = receipts.recent(settings, limit)
    if as_json:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table("id", "delivery", "status", "product", "latency (s)", "reason")
    for r in rows:
        table.add_row(str(r.id), r.name, r.status, r.product_id or "",
                      f"{r.latency_s:.1f}" if r.latency_s is not None else "", (r.reason or "")[:80])
    out.print(table)


@app.command("worker")
def worker(once: bool = typer.Option(False, "--once", help="Stop when the queue is empty."),
           concurrency: int = typer.Option(1, min=1, help="Jobs at once in this process.")) -> None:
    """Run ingest jobs from the queue (any number of workers, on any machine, may run at once)."""
    from processing.queue import create_queue, run_worker

    settings = _settings()
    out.print("worker started" + (" (until the queue is empty)" if once else ""))
    run_worker(create_queue(settings), once=once, concurrency=concurrency)


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
                   proxy_headers=False, server_header=False)
    if workers == 1:
        from catalog.app import create_app

        uvicorn.run(create_app(settings), **options)
    else:  # worker processes import the factory: they read the same settings from the environment
        os.environ["LANDSURF_HOST"], os.environ["LANDSURF_PORT"] = settings.host, str(settings.port)
        uvicorn.run("catalog.app:create_app", factory=True, workers=workers, **options)


@app.command("demo")
def demo(port: Optional[int] = None,
         products: int = typer.Option(6, min=0, max=50, help="Synthetic deliveries to generate and ingest.")) -> None:
    """The whole box on the embedded default: database, synthetic deliveries through the ingest pipeline,
    the API; prints the URL."""
    from processing.demo import publish_series

    settings = _settings()
    db_start()
    for done in publish_series(settings, count=products, size=1098):
        out.print(f"{done.product_id}: {done.status}" + (f" ({done.reason})" if done.reason else ""))
    serve(host=None, port=port, workers=1)


@token_app.command("create")
def token_create(name: str = typer.Option(..., help="Who or what uses it."),
                 role: str = typer.Option("admin", help="admin (writes + operator views) | operator (operator views)")) -> None:
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

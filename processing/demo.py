"""Synthetic products through the one product path: the generator writes MUSCATE deliveries, the real
ingest pipeline publishes them. Used by `landsurf sample` and `landsurf demo`; nothing here writes an
item by hand, so what a newcomer browses is exactly what production would publish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from catalog.settings import CatalogSettings
from ingest.generate import iter_series
from ingest.inbox import take
from ingest.pipeline import process
from ingest.settings import IngestSettings


@dataclass(frozen=True)
class SeriesOutcome:
    product_id: str
    status: str
    reason: str | None


def publish_series(settings: CatalogSettings, *, tile: str = "31TCH", start: date = date(2024, 3, 1),
                   count: int = 6, every_days: int = 5, size: int = 1098, seed: int = 0,
                   work: Path | None = None, on_product: Callable[[SeriesOutcome], None] | None = None,
                   ) -> Iterator[SeriesOutcome]:
    """Generate `count` deliveries of `tile` and ingest each through the pipeline, one at a time."""
    ingest_settings = IngestSettings()
    out = work or settings.home_dir / "demo-deliveries"
    end = start + timedelta(days=every_days * max(count - 1, 0))
    if count <= 0:
        return
    for made in iter_series(out, tile, start, end, every_days, size=size, seed=seed, truth_dir=out / "truth"):
        outcome = process(settings, ingest_settings, take(settings, ingest_settings, Path(made.path)).receipt_id)
        result = SeriesOutcome(made.product_id, outcome.status, outcome.reason)
        if on_product:
            on_product(result)
        yield result


# ------------------------------------------------------------------------------------------ the full demo

DEMO_TILES = ("31TCH", "31TDH", "31TCJ")  # three neighbours on the Pyrenees' UTM grid; the generator's relief
# (200-3500 m massifs) makes each of them mountainous, so snow maps have a snowline to find


@dataclass(frozen=True)
class DemoPlan:
    """What `landsurf demo` makes: tiles, the L3A months, and the acquisition days that feed them."""

    tiles: tuple[str, ...]
    months: tuple[str, ...]  # "YYYY-MM", oldest first
    first: date
    last: date
    every_days: int
    size: int

    @property
    def months_count(self) -> int:
        return len(self.months)

    @property
    def deliveries(self) -> int:
        return len(self.tiles) * ((self.last - self.first).days // self.every_days + 1)


def demo_plan(today: date, *, tiles: tuple[str, ...] = DEMO_TILES, months: int = 3, every_days: int = 10,
              size: int = 1098) -> DemoPlan:
    """The last `months` months whose L3A is due by `today` (window ended plus the deadline), and the days
    from the first window's start to the last window's end.

    Dated from today, not fixed: the worker's planning tick looks back a bounded number of days
    (`LANDSURF_PROCESSING_DERIVE_LOOKBACK_DAYS`), and a demo must exercise the planning production uses.
    """
    from processing.l3a import L3AParams, synthesis_date, window
    from processing.settings import ProcessingSettings

    params, deadline = L3AParams.load(), timedelta(days=ProcessingSettings().l3a_deadline_days)
    year, month = today.year, today.month
    chosen: list[tuple[int, int]] = []
    while len(chosen) < months:
        if window(synthesis_date(year, month), params)[1] + deadline < today:
            chosen.append((year, month))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    chosen.reverse()
    first = window(synthesis_date(*chosen[0]), params)[0]
    last = window(synthesis_date(*chosen[-1]), params)[1]
    return DemoPlan(tuple(tiles), tuple(f"{y:04d}-{m:02d}" for y, m in chosen), first, last, every_days, size)


@dataclass
class DemoReport:
    ingested: list[SeriesOutcome]
    dems: list[str]
    jobs_planned: int
    counts: dict[str, int]  # current items per collection
    overviews: list[str]  # "collection YYYY-MM" of each monthly mosaic with its overview built


def run_demo(settings: CatalogSettings, plan: DemoPlan, *, work: Path | None = None,
             on_stage: Callable[[str, int | None], None] | None = None,
             on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Deliveries through ingest, the tiles' DEMs registered, then the derived products made by the queue's own
    planning (the hook of each published L2A and the worker's tick) and the monthly mosaics' overviews (the job
    each L3A publication plans), with no request typed: what production does, run here until nothing is left to
    do. The caller sets `LANDSURF_PROCESSING_MOSAIC_DEBOUNCE_S=0` to have the overviews built in this run: a
    debounced job waits past the moment the queue is empty."""
    from processing.dem import register_dem
    from processing.plan import on_dem_published, tick
    from processing.queue import create_queue, run_worker

    stage = on_stage or (lambda _name, _total: None)
    step = on_step or (lambda _what: None)
    ingest_settings = IngestSettings()
    out = work or settings.home_dir / "demo-deliveries"
    create_queue(settings, ingest_settings)  # registers the planning hook: a published L2A queues its products
    stage("ingest", plan.deliveries)
    ingested: list[SeriesOutcome] = []
    for n, tile in enumerate(plan.tiles):
        for made in iter_series(out / tile, tile, plan.first, plan.last, plan.every_days, size=plan.size, seed=n,
                                truth_dir=out / tile / "truth"):
            outcome = process(settings, ingest_settings, take(settings, ingest_settings, Path(made.path)).receipt_id)
            ingested.append(SeriesOutcome(made.product_id, outcome.status, outcome.reason))
            step(f"{made.product_id}: {outcome.status}")
    stage("dem", len(plan.tiles))
    dems, planned = [], 0
    for tile in plan.tiles:
        from ingest.synthetic.grid import tile_grid

        published = register_dem(settings, tile, out / tile / "truth" / f"T{tile_grid(tile).tile}_ALT_R2.tif")
        planned += len(on_dem_published(settings, tile, published.superseded))
        dems.append(published.item_id)
        step(f"DEM of {tile}: {published.outcome}")
    stage("derive", None)
    today = date.today()
    done = threading.Event()

    def heartbeat() -> None:  # the worker blocks until the queue is empty: report progress meanwhile
        while not done.wait(2.0):
            step("working")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        for _ in range(10):  # each round: the queue drained, then the tick plans what is due (late L3As)
            run_worker(create_queue(settings, ingest_settings), once=True, concurrency=1)
            new = tick(settings, today)
            planned += len(new)
            step(f"planning tick: {len(new)} job(s) queued")
            if not new:
                break
    finally:
        done.set()
        beat.join()
    return DemoReport(ingested, dems, planned, _counts(settings), _overviews(settings))


def _overviews(settings: CatalogSettings) -> list[str]:
    """The months whose mosaic overview is built (the job planned after each L3A publication of the month)."""
    from catalog.database import session

    with session(settings) as conn:
        rows = conn.execute("SELECT collection || ' ' || month FROM landsurf.mosaic_overviews ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _counts(settings: CatalogSettings) -> dict[str, int]:
    from catalog.database import session

    with session(settings) as conn:
        rows = conn.execute("SELECT collection, count(*) FROM pgstac.items GROUP BY collection").fetchall()
    return {c: n for c, n in rows}

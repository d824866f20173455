"""Synthetic products through the one product path: the generator writes MUSCATE deliveries, the real
ingest pipeline publishes them. Used by `landsurf sample` and `landsurf demo`; nothing here writes an
item by hand, so what a newcomer browses is exactly what production would publish.
"""

from __future__ import annotations

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

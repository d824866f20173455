"""Publication: the only code that writes items into the catalog.

Items go through pypgstac's loader in upsert mode, so publishing the same item twice changes
nothing and a changed item replaces the old row in one statement.
"""

from __future__ import annotations

from typing import Iterable

from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods

from catalog.database import bounded_url, resolve_urls
from catalog.settings import CatalogSettings


def upsert_items(settings: CatalogSettings, items: Iterable[dict], chunksize: int = 10_000) -> None:
    """Upsert item dicts (links are dropped: the API builds its own)."""
    urls = resolve_urls(settings)
    # one chunk of 10,000 items is one statement: bounded, by a longer timeout than requests
    db = PgstacDB(dsn=bounded_url(urls.ingest, settings, max(settings.statement_timeout_ms, 600_000)))
    try:
        Loader(db=db).load_items(
            ({**item, "links": []} for item in items), insert_mode=Methods.upsert, chunksize=chunksize
        )
    finally:
        db.close()

"""Migrating a catalog whose items still hold absolute hrefs of an earlier public URL.

Before store-relative hrefs, an item was written with the URL the API had on the day it was published
(`http://old:8000/download/<path>`, `http://old:8000/collections/c/items/i`). `rebase` rewrites those
into the stored forms (`<path>`, `/collections/c/items/i`) that every response renders against the
public URL in force. Items are rewritten in small committed batches: an interrupted run leaves each
item either old or new (both are served), and running it again finishes the work and then changes
nothing. Hrefs of any other host pass through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from catalog.database import session
from catalog.settings import CatalogSettings
from catalog.store import DOWNLOAD_PREFIX

BATCH = 500


@dataclass
class RebaseReport:
    examined: int = 0
    items: int = 0
    hrefs: int = 0


def stored_asset(href: str, old: str) -> str | None:
    """`{old}/download/<path>` → `<path>` (the file's place in the store); None for anything else."""
    prefix = f"{old}{DOWNLOAD_PREFIX}/"
    if not href.startswith(prefix):
        return None
    return unquote(href[len(prefix):].split("?", 1)[0].split("#", 1)[0])


def stored_link(href: str, old: str) -> str | None:
    """`{old}/collections/…` → `/collections/…` (a path of the API); None for anything else."""
    if not href.startswith(old + "/") or href.startswith(f"{old}{DOWNLOAD_PREFIX}/"):
        return None
    return href[len(old):]


def rebase_item(content: dict, old: str) -> int:
    """Rewrite one item's hrefs in place; returns how many changed."""
    changed = 0
    for asset in (content.get("assets") or {}).values():
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            if (new := stored_asset(asset["href"], old)) is not None:
                asset["href"], changed = new, changed + 1
    for link in content.get("links") or []:
        if isinstance(link, dict) and isinstance(link.get("href"), str):
            if (new := stored_link(link["href"], old)) is not None:
                link["href"], changed = new, changed + 1
    return changed


def rebase(settings: CatalogSettings, old_url: str, *, dry_run: bool = False,
           progress: Callable[[RebaseReport], None] | None = None) -> RebaseReport:
    """Rewrite every item holding hrefs under `old_url`; with `dry_run`, only count them."""
    old = old_url.rstrip("/")
    report = RebaseReport()
    needle = old + "/"
    after = ("", "")
    with session(settings, "admin") as conn:
        while True:
            rows = conn.execute(
                "SELECT collection, id, content FROM pgstac.items WHERE (collection, id) > (%s, %s) "
                "ORDER BY collection, id LIMIT %s", (*after, BATCH)).fetchall()
            if not rows:
                break
            after = (rows[-1][0], rows[-1][1])
            report.examined += len(rows)
            updates = []
            for collection, item_id, content in rows:
                if needle not in json.dumps(content):
                    continue
                n = rebase_item(content, old)
                if n:
                    report.items += 1
                    report.hrefs += n
                    updates.append((json.dumps(content), collection, item_id))
            if updates and not dry_run:
                with conn.transaction():
                    for content, collection, item_id in updates:
                        conn.execute("UPDATE pgstac.items SET content = %s::jsonb WHERE collection = %s AND id = %s",
                                     (content, collection, item_id))
            if progress:
                progress(report)
    return report

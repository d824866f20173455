"""Publication: the only code that writes items into the catalog.

A product is either fully published (files in their final place and item committed) or not
visible at all: files are staged on the store's filesystem, renamed into their sharded directory,
and the item is written in one database transaction; if the transaction fails, the directory is
renamed back. No live file is ever removed before the transaction that replaces it commits: a
directory found in the way (left by an attempt killed between rename and commit — an item of that id
would have made this publication a duplicate or a conflict) is moved aside and deleted only after
the commit, or moved back if the commit fails.

Versions: one current item per product (collection, tile, acquisition time); a newer version moves
the previous one to the `-history` collection, linked both ways. An id is looked up in both
collections: a re-delivered history version is a duplicate (same files) or a conflict (other files),
never a silent overwrite. Version links are stored root-relative (`/collections/c/items/i`) and
rendered against the public URL by the API, like every link (catalog/store.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal

import psycopg
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods

from catalog.collections import HISTORY_SUFFIX
from catalog.database import bounded_url, connect, resolve_urls
from catalog.errors import DatabaseUnavailable, LandsurfError
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, api_path

Outcome = Literal["published", "duplicate", "history"]
NAVIGATION_RELS = ("self", "root", "parent", "collection", "items")


class PublishConflict(LandsurfError):
    """The same product id and version is already published with different content."""

    exit_code = 6


def upsert_items(settings: CatalogSettings, items: Iterable[dict], chunksize: int = 10_000) -> None:
    """Bulk upsert of item dicts (links are dropped: the API builds its own)."""
    urls = resolve_urls(settings)
    # one chunk of 10,000 items is one statement: bounded, by a longer timeout than requests
    db = PgstacDB(dsn=bounded_url(urls.ingest, settings, max(settings.statement_timeout_ms, 600_000)))
    try:
        Loader(db=db).load_items(
            ({**item, "links": []} for item in items), insert_mode=Methods.upsert, chunksize=chunksize
        )
    finally:
        db.close()


@dataclass(frozen=True)
class Published:
    outcome: Outcome
    item_id: str
    collection: str
    directory: Path
    superseded: str | None = None
    reason: str | None = None  # why a duplicate is one


def _version_key(item: dict) -> tuple:
    props = item["properties"]
    version = tuple(int(p) if p.isdigit() else p for p in str(props.get("version", "0")).replace("-", ".").split("."))
    return version, props.get("processing:datetime") or props.get("created") or ""


def _checksums(item: dict) -> dict[str, str]:
    return {k: a.get("file:checksum", "") for k, a in item.get("assets", {}).items()}


def _version_link(rel: str, collection: str, item_id: str) -> dict:
    return {"rel": rel, "href": api_path("collections", collection, "items", item_id),
            "type": "application/geo+json"}


def _set_link(item: dict, link: dict) -> None:
    item["links"] = [ln for ln in item.get("links", []) if ln.get("rel") != link["rel"]] + [link]


def _versions(conn: psycopg.Connection, item: dict, collection: str) -> list[dict]:
    """Items of the same product in `collection`: same tile and acquisition time."""
    rows = conn.execute(
        "SELECT id FROM pgstac.items WHERE collection = %s AND datetime = %s::timestamptz "
        "AND content->'properties'->>'grid:code' = %s",
        (collection, item["properties"]["datetime"], item["properties"].get("grid:code")),
    ).fetchall()
    out = []
    for (item_id,) in rows:
        full = conn.execute("SELECT pgstac.get_item(%s, %s)", (item_id, collection)).fetchone()[0]
        out.append(full)
    return out


def aside_dir(staging: Path) -> Path:
    """Where a directory in the way of `staging`'s rename waits for the commit (same filesystem)."""
    return staging.with_name(staging.name + ".replaced")


def publish_product(settings: CatalogSettings, item: dict, staging: Path, relative_dir: PurePosixPath) -> Published:
    """Move `staging` to `relative_dir` in the store and commit `item`, atomically and idempotently."""
    store = AssetStore.from_settings(settings)
    final = store.path(relative_dir)
    aside = aside_dir(staging)
    collection = item["collection"]
    history = collection + HISTORY_SUFFIX
    urls = resolve_urls(settings)
    conn = connect(urls.ingest, settings, autocommit=False)
    moved = set_aside = committed = False
    try:
        with conn.transaction():
            # one publisher at a time per product, across workers and machines
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         (f"{collection}|{item['properties'].get('grid:code')}|{item['properties']['datetime']}",))
            _lock_partitions(conn, collection, history)
            for where in (collection, history):
                existing = conn.execute("SELECT pgstac.get_item(%s, %s)", (item["id"], where)).fetchone()[0]
                if existing is None:
                    continue
                place = "as history (an older version than the current one)" if where == history else "as current"
                if _checksums(existing) == _checksums(item):
                    shutil.rmtree(staging, ignore_errors=True)
                    return Published("duplicate", item["id"], where, final, reason=(
                        f"{item['id']} version {item['properties'].get('version')} is already published {place} "
                        "in " + where + " with the same files"))
                raise PublishConflict(
                    f"{item['id']} is already published {place} in {where} with different content",
                    "a reprocessed product must carry a new version (V1-1, V2-0 …) or a later production date",
                )
            # the API builds self/parent/root/collection links itself; keep only the links it cannot know
            item["links"] = [ln for ln in item.get("links", []) if ln.get("rel") not in NAVIGATION_RELS]
            target, superseded = _settle_versions(conn, item)
            item["collection"] = target
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # no item has this id: files left by an attempt killed before its commit
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(final, aside)
                set_aside = True
            os.rename(staging, final)
            moved = True
            conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", (json.dumps(item),))
        committed = True
        if set_aside:
            shutil.rmtree(aside, ignore_errors=True)
        return Published("history" if target != collection else "published", item["id"], target, final, superseded)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the catalog database failed during publication: {exc}".strip(),
                                  "the job is retried; nothing of this product was published") from exc
    finally:
        conn.close()
        if moved and not committed and _committed(settings, item) is False:
            os.rename(final, staging)  # nothing half-published: the files leave with the failed item
            if set_aside:
                os.rename(aside, final)


def _lock_partitions(conn: psycopg.Connection, *collections: str) -> None:
    """Serialise writers of the same collections until commit, because pgSTAC cannot create a partition twice at once.

    `pgstac.check_partition` swallows the error of a concurrent `CREATE TABLE IF NOT EXISTS` and then uses a
    partition its snapshot cannot see ("relation _items_1_2022 does not exist"): two workers publishing the first
    products of a year raced into it. Held to the commit, this lock makes the second writer start after the
    first one's partition is visible. Taken after the product lock and in one order, so no two writers deadlock.
    """
    for key in partition_lock_keys(*collections):
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def partition_lock_keys(*collections: str) -> list[str]:
    """The advisory-lock keys of `_lock_partitions`, in the one order every writer takes them (the API's item
    writes take the same ones: `catalog.app`)."""
    return [f"pgstac-partitions|{name}" for name in sorted(set(collections))]


def _settle_versions(conn: psycopg.Connection, item: dict) -> tuple[str, str | None]:
    """Keep one current version: demote an older current item to history, or file a late older one there."""
    collection = item["collection"]
    history = collection + HISTORY_SUFFIX
    target, superseded = collection, None
    for current in _versions(conn, item, collection):
        if _version_key(current) > _version_key(item):
            target = history
            item["properties"]["deprecated"] = True
            _set_link(item, _version_link("latest-version", collection, current["id"]))
            continue
        current["collection"] = history
        current["properties"]["deprecated"] = True
        _set_link(current, _version_link("latest-version", collection, item["id"]))
        conn.execute("SELECT pgstac.delete_item(%s, %s)", (current["id"], collection))
        conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", (json.dumps(current),))
        _set_link(item, _version_link("predecessor-version", history, current["id"]))
        superseded = current["id"]
        _repoint_history(conn, item, history, current["id"])
    return target, superseded


def _repoint_history(conn: psycopg.Connection, item: dict, history: str, demoted: str) -> None:
    """Older history versions whose latest version was the one just demoted now point at the new current one."""
    old = api_path("collections", item["collection"], "items", demoted)
    for version in _versions(conn, item, history):
        if version["id"] != demoted and any(ln.get("rel") == "latest-version" and ln.get("href") == old
                                            for ln in version.get("links", [])):
            _set_link(version, _version_link("latest-version", item["collection"], item["id"]))
            conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", (json.dumps(version),))


def _committed(settings: CatalogSettings, item: dict) -> bool | None:
    """Whether the item is in the catalog, asked on a fresh connection; None when that cannot be known.

    Unknown (the database is gone) leaves the files where they are: files without an item are
    invisible, whereas an item without its files would be half-published.
    """
    try:
        with connect(resolve_urls(settings).ingest, settings) as conn:
            row = conn.execute("SELECT 1 FROM pgstac.items WHERE id = %s AND collection = %s",
                               (item["id"], item["collection"])).fetchone()
            return row is not None
    except DatabaseUnavailable:
        return None

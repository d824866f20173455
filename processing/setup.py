"""Everything a catalog database needs before use, in one idempotent call."""

from __future__ import annotations

from catalog.collections import ensure_collections
from catalog.database import migrate, session
from catalog.settings import CatalogSettings
from processing.queue import ensure_schema


def prepare_database(settings: CatalogSettings) -> tuple[str, list[str]]:
    """pgSTAC and landsurf's own schema, the collections and their queryables, the plain mosaic of each
    collection (the tiler's pool is read-only: it draws only registered mosaics), the job queue.

    Returns the pgSTAC version and the collection ids. Safe to run on every start.
    """
    version = migrate(settings)
    with session(settings, "admin") as conn:
        ids = ensure_collections(conn)
        from catalog.tiles import register_collection_mosaics

        register_collection_mosaics(conn, ids)
    ensure_schema(settings)
    return version, ids

"""Receipts: one row per delivery in `landsurf.deliveries`, written at once and updated by each stage.

No delivery is ever silently lost: from the moment a delivery is taken from the inbox its row
says where it is (received, processing, published, quarantined, duplicate, failed) and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from catalog.database import session
from catalog.settings import CatalogSettings
from ingest.model import Delivery

STATUSES = ("received", "processing", "published", "quarantined", "duplicate", "failed")


@dataclass(frozen=True)
class Receipt:
    id: int
    name: str
    path: str
    checksum: str
    status: str
    reason: str | None
    product_id: str | None
    collection: str | None
    attempts: int
    received_at: datetime
    finished_at: datetime | None

    @property
    def latency_s(self) -> float | None:
        """Delivery → searchable (published) or → decided (other final states), in seconds."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.received_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "checksum": self.checksum, "status": self.status,
            "reason": self.reason, "product_id": self.product_id, "collection": self.collection,
            "attempts": self.attempts, "received_at": self.received_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "latency_s": self.latency_s,
        }


COLUMNS = "id, name, path, checksum, status, reason, product_id, collection, attempts, received_at, finished_at"


def record(settings: CatalogSettings, delivery: Delivery) -> int:
    """Write the receipt of a delivery just taken from the inbox; returns its id."""
    with session(settings, "ingest") as conn:
        return conn.execute(
            "INSERT INTO landsurf.deliveries (name, path, checksum, size) VALUES (%s, %s, %s, %s) RETURNING id",
            (delivery.name, str(delivery.path), delivery.checksum, delivery.size),
        ).fetchone()[0]


def pending_for(settings: CatalogSettings, delivery: Delivery) -> int | None:
    """A receipt written for these bytes at this path whose delivery never left it (a crash in between)."""
    with session(settings, "ingest") as conn:
        row = conn.execute(
            "SELECT id FROM landsurf.deliveries WHERE checksum = %s AND path = %s AND status = 'received' "
            "ORDER BY id LIMIT 1", (delivery.checksum, str(delivery.path))).fetchone()
    return row[0] if row else None


def start(settings: CatalogSettings, receipt_id: int) -> None:
    with session(settings, "ingest") as conn:
        conn.execute(
            "UPDATE landsurf.deliveries SET status = 'processing', attempts = attempts + 1, "
            "started_at = coalesce(started_at, now()) WHERE id = %s", (receipt_id,))


def finish(settings: CatalogSettings, receipt_id: int, status: str, *, reason: str | None = None,
           product_id: str | None = None, collection: str | None = None, path: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown delivery status {status!r}")
    final = status in ("published", "quarantined", "duplicate")
    with session(settings, "ingest") as conn:
        conn.execute(
            "UPDATE landsurf.deliveries SET status = %s, reason = %s, "
            "product_id = coalesce(%s, product_id), collection = coalesce(%s, collection), "
            "path = coalesce(%s, path), finished_at = CASE WHEN %s THEN now() ELSE finished_at END WHERE id = %s",
            (status, reason, product_id, collection, path, final, receipt_id),
        )


def get(settings: CatalogSettings, receipt_id: int) -> Receipt:
    with session(settings, "ingest") as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE id = %s", (receipt_id,)).fetchone()
    if row is None:
        raise KeyError(receipt_id)
    return Receipt(*row)


def published_with_checksum(settings: CatalogSettings, checksum: str, exclude: int) -> Receipt | None:
    """An earlier delivery with the same bytes that was published (so this one is a duplicate)."""
    with session(settings, "ingest") as conn:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE checksum = %s AND id <> %s "
            "AND status IN ('published', 'duplicate') ORDER BY id LIMIT 1", (checksum, exclude)).fetchone()
    return Receipt(*row) if row else None


def recent(settings: CatalogSettings, limit: int = 100, status: str | None = None) -> list[Receipt]:
    with session(settings, "api") as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE (%s::text IS NULL OR status = %s) "
            "ORDER BY id DESC LIMIT %s", (status, status, limit)).fetchall()
    return [Receipt(*r) for r in rows]

"""Receipts: one row per delivery in `landsurf.deliveries`, written at once and updated by each stage.

No delivery is ever silently lost: from the moment a delivery is taken from the inbox its row says where it
is and why. Open statuses — `received` (waiting for a worker), `processing`, `retrying` (a system fault; the
queue retries it after a backoff) — always have a live job (processing/queue.py re-queues any that has none);
`failed` waits for an operator (`landsurf ingest retry`); `published`, `duplicate`, `quarantined` and
`returned` (taken while still being written, given back to the inbox) are final.

Two advisory locks keep processes apart: the delivery lock (its checksum) while a delivery is being taken, so
that two processes seeing one delivery write one receipt; the receipt lock while a receipt is processed, held by
a live database session, so that a receipt is never worked on twice at once (a killed worker's session ends
with it, which frees the receipt for the retry).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import psycopg

from catalog.database import connect, resolve_urls, session
from catalog.errors import DatabaseUnavailable
from catalog.settings import CatalogSettings
from ingest.errors import ReceiptBusy, TransientIngestError
from ingest.model import Delivery

STATUSES = ("received", "processing", "retrying", "published", "quarantined", "duplicate", "failed", "returned")
OPEN = ("received", "processing", "retrying")
FINAL = ("published", "quarantined", "duplicate", "returned")


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
    source: str | None = None
    signature: str | None = None
    updated_at: datetime | None = None

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
            "latency_s": self.latency_s, "path": self.path, "source": self.source,
        }


COLUMNS = ("id, name, path, checksum, status, reason, product_id, collection, attempts, received_at, finished_at, "
           "source, signature, updated_at")


def record(settings: CatalogSettings, delivery: Delivery, *, source: str | None = None,
           signature: str | None = None) -> int:
    """Write the receipt of a delivery being taken; returns its id."""
    with session(settings, "ingest") as conn:
        return conn.execute(
            "INSERT INTO landsurf.deliveries (name, path, checksum, size, source, signature) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (delivery.name, str(delivery.path), delivery.checksum, delivery.size, source or str(delivery.path),
             signature),
        ).fetchone()[0]


def pending_for(settings: CatalogSettings, checksum: str, path: str) -> int | None:
    """A receipt written for these bytes at this path whose delivery never left it (a crash in between)."""
    with session(settings, "ingest") as conn:
        row = conn.execute(
            "SELECT id FROM landsurf.deliveries WHERE checksum = %s AND path = %s AND status = 'received' "
            "ORDER BY id LIMIT 1", (checksum, path)).fetchone()
    return row[0] if row else None


def in_flight(settings: CatalogSettings, checksum: str) -> Receipt | None:
    """An open receipt of the same bytes: a second one-shot ingest of a delivery joins it."""
    with session(settings, "ingest") as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE checksum = %s AND status IN "
                           "('received', 'processing', 'retrying') ORDER BY id LIMIT 1", (checksum,)).fetchone()
    return Receipt(*row) if row else None


def moved(settings: CatalogSettings, receipt_id: int, path: str) -> None:
    """The delivery now lies at `path` (in work/)."""
    with session(settings, "ingest") as conn:
        conn.execute("UPDATE landsurf.deliveries SET path = %s WHERE id = %s", (path, receipt_id))


def start(settings: CatalogSettings, receipt_id: int) -> None:
    with session(settings, "ingest") as conn:
        conn.execute(
            "UPDATE landsurf.deliveries SET status = 'processing', attempts = attempts + 1, "
            "started_at = coalesce(started_at, now()) WHERE id = %s", (receipt_id,))


def finish(settings: CatalogSettings, receipt_id: int, status: str, *, reason: str | None = None,
           product_id: str | None = None, collection: str | None = None, path: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown delivery status {status!r}")
    final = status in FINAL
    with session(settings, "ingest") as conn:
        conn.execute(
            "UPDATE landsurf.deliveries SET status = %s, reason = %s, "
            "product_id = coalesce(%s, product_id), collection = coalesce(%s, collection), "
            "path = coalesce(%s, path), finished_at = CASE WHEN %s THEN now() ELSE NULL END WHERE id = %s",
            (status, reason, product_id, collection, path, final, receipt_id),
        )


def reopen(settings: CatalogSettings, receipt_id: int, note: str) -> Receipt:
    """An operator's retry: the receipt is `received` again with a fresh count of attempts."""
    with session(settings, "ingest") as conn:
        row = conn.execute(
            f"UPDATE landsurf.deliveries SET status = 'received', attempts = 0, finished_at = NULL, reason = %s "
            f"WHERE id = %s RETURNING {COLUMNS}", (note, receipt_id)).fetchone()
    if row is None:
        raise KeyError(receipt_id)
    return Receipt(*row)


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


def publisher_of(settings: CatalogSettings, product_id: str, exclude: int) -> Receipt | None:
    """Another receipt that published `product_id` (else an item found at publication is this receipt's own,
    committed by an attempt killed before it could record it)."""
    with session(settings, "ingest") as conn:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE product_id = %s AND id <> %s "
            "AND status = 'published' ORDER BY id LIMIT 1", (product_id, exclude)).fetchone()
    return Receipt(*row) if row else None


def recent(settings: CatalogSettings, limit: int = 100, status: str | None = None) -> list[Receipt]:
    with session(settings, "ingest") as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE (%s::text IS NULL OR status = %s) "
            "ORDER BY id DESC LIMIT %s", (status, status, limit)).fetchall()
    return [Receipt(*r) for r in rows]


def with_status(settings: CatalogSettings, statuses: tuple[str, ...]) -> list[Receipt]:
    with session(settings, "ingest") as conn:
        rows = conn.execute(f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE status = ANY(%s) ORDER BY id",
                            (list(statuses),)).fetchall()
    return [Receipt(*r) for r in rows]

# ------------------------------------------------------------------------------------------------- locks


def _key(kind: str, value: object) -> str:
    return f"landsurf-{kind}-{value}"


class Claim:
    """The receipt lock, held by one live session for as long as the receipt is processed."""

    def __init__(self, conn: psycopg.Connection, receipt_id: int) -> None:
        self.conn, self.receipt_id = conn, receipt_id

    def check(self) -> None:
        """Still ours? Called before anything irreversible (publication, quarantine)."""
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise ReceiptBusy(f"receipt {self.receipt_id}: the session holding it was lost ({exc})".strip(),
                              "this attempt stops; the receipt is retried") from exc


@contextmanager
def claim(settings: CatalogSettings, receipt_id: int) -> Iterator[Claim]:
    """Hold the receipt lock, or raise `ReceiptBusy` at once when another live session holds it."""
    conn = connect(resolve_urls(settings).ingest, settings)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                           (_key("receipt", receipt_id),)).fetchone()[0]
        if not got:
            raise ReceiptBusy(f"receipt {receipt_id} is being processed by another live worker",
                              "this attempt backs off and is retried")
        yield Claim(conn, receipt_id)
    finally:
        conn.close()  # closing the session releases its advisory locks


def _held(settings: CatalogSettings, key: str) -> bool:
    with session(settings, "ingest") as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]
        if got:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
    return not got


def is_claimed(settings: CatalogSettings, receipt_id: int) -> bool:
    """Whether a live session processes this receipt now (tried and released at once)."""
    return _held(settings, _key("receipt", receipt_id))


@contextmanager
def taking(settings: CatalogSettings, name: str) -> Iterator[None]:
    """Held while a delivery is being taken into its claim folder `work/<name>` (see `taking_in_progress`)."""
    conn = connect(resolve_urls(settings).ingest, settings)
    try:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (_key("taking", name),))
        yield
    finally:
        conn.close()


def taking_in_progress(settings: CatalogSettings, name: str) -> bool:
    """Whether a live process is still taking the delivery of claim folder `name`."""
    return _held(settings, _key("taking", name))


def with_path_under(settings: CatalogSettings, folder: str) -> Receipt | None:
    """The receipt whose delivery lies in `folder`, if any."""
    with session(settings, "ingest") as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM landsurf.deliveries WHERE starts_with(path, %s) "
                           "ORDER BY id DESC LIMIT 1", (folder.rstrip("/") + "/",)).fetchone()
    return Receipt(*row) if row else None


@contextmanager
def delivery_lock(settings: CatalogSettings, checksum: str, wait_s: float = 600.0) -> Iterator[None]:
    """One process at a time takes a given delivery (by its bytes); waits up to `wait_s` for the other."""
    conn = connect(resolve_urls(settings).ingest, settings)
    try:
        deadline = time.monotonic() + wait_s
        while not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               (_key("delivery", checksum),)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise TransientIngestError(f"another process has been taking a delivery with checksum {checksum} "
                                           f"for more than {wait_s:.0f} s", "it is tried again at the next scan")
            time.sleep(0.2)
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the catalog database failed while a delivery was taken: {exc}".strip(),
                                  "the delivery stays where it is and is taken again later") from exc
    finally:
        conn.close()

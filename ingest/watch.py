"""The inbox watcher: scan, take, queue — and never stop.

A fault of one inbox entry is the scan's business (ingest/inbox.py: skipped, reported, the scan goes on). A fault
of the system — the database down, the inbox unreadable — stops one pass, not the watcher: it waits (doubling up
to 30 s), reconnects and takes up where it was; deliveries already taken but not yet queued are queued as soon as
the database answers (and if the watcher dies meanwhile, the queue's sweep queues them).

Its liveness and what it sees are written at every pass to `landsurf.inbox_watchers` (heartbeat, entries not
taken yet and since when, counts, last error), which `/health` and `/metrics` read (catalog/operations.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from catalog.database import session
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from ingest.inbox import Inbox, recover_claims
from ingest.model import Delivery
from ingest.settings import IngestSettings

log = get_logger(__name__)
MAX_BACKOFF_S = 30.0
FORGET_AFTER_DAYS = 7


class Watcher:
    """`run()` loops until `stop` is set; `step()` is one pass (scan, take, queue, heartbeat, maybe sweep)."""

    def __init__(self, catalog: CatalogSettings, settings: IngestSettings,
                 enqueue: Callable[[Sequence[Delivery]], None], sweep: Callable[[], object] | None = None,
                 *, stop: threading.Event | None = None,
                 on_delivery: Callable[[Delivery], None] | None = None) -> None:
        self.catalog, self.settings = catalog, settings
        self.inbox = Inbox(catalog, settings)
        self.enqueue, self.sweep, self.on_delivery = enqueue, sweep, on_delivery
        self.stop = stop or threading.Event()
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.pending: list[Delivery] = []  # taken, not queued yet
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self._last_sweep = 0.0
        self._registered = False

    def run(self) -> None:
        backoff = self.settings.poll_seconds
        while not self.stop.is_set():
            try:
                self.step()
                backoff = self.settings.poll_seconds
            except Exception as exc:  # noqa: BLE001 - the watcher outlives every fault; each is logged and shown
                self._error(exc)
                backoff = min(max(backoff, self.settings.poll_seconds) * 2, MAX_BACKOFF_S)
                log.warning("inbox watcher pass failed; waiting", error=self.last_error, retry_in=backoff)
            self.stop.wait(backoff)
        self._stopped()

    def step(self) -> list[Delivery]:
        if not self._registered:
            self._register()
        self._flush()
        self._heartbeat()  # before and after a scan that may hash large deliveries
        recover_claims(self.catalog, self.settings, self.settings.stalled_seconds)
        found = self.inbox.scan()
        for delivery in found:
            if delivery.status == "received":
                self.pending.append(delivery)
            if self.on_delivery:
                self.on_delivery(delivery)
        self._flush()
        self._heartbeat()
        if self.sweep and time.monotonic() - self._last_sweep >= self.settings.sweep_seconds:
            self._last_sweep = time.monotonic()
            self.sweep()
        return found

    def _flush(self) -> None:
        if self.pending:
            self.enqueue(list(self.pending))
            self.pending.clear()

    def _error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".strip()[:500]
        self.last_error_at = datetime.now(timezone.utc)
        self._registered = False  # re-register after an outage (the row may be gone with a restored database)

    def _register(self) -> None:
        with session(self.catalog, "ingest") as conn:
            conn.execute("DELETE FROM landsurf.inbox_watchers WHERE heartbeat_at < now() - make_interval(days => %s)",
                         (FORGET_AFTER_DAYS,))
            conn.execute(
                "INSERT INTO landsurf.inbox_watchers (id, inbox, host, pid) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET inbox = EXCLUDED.inbox, stopped_at = NULL, heartbeat_at = now()",
                (self.id, str(self.inbox.inbox), socket.gethostname(), os.getpid()))
        self._registered = True

    def _heartbeat(self) -> None:
        untaken, since = self.inbox.untaken()
        with session(self.catalog, "ingest") as conn:
            conn.execute(
                "UPDATE landsurf.inbox_watchers SET heartbeat_at = now(), untaken = %s, oldest_untaken_since = %s, "
                "taken = %s, refused = %s, last_error = %s, last_error_at = %s WHERE id = %s",
                (untaken, since, self.inbox.taken, self.inbox.refused, self.last_error, self.last_error_at, self.id))

    def _stopped(self) -> None:
        try:
            with session(self.catalog, "ingest") as conn:
                conn.execute("UPDATE landsurf.inbox_watchers SET stopped_at = now() WHERE id = %s", (self.id,))
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("could not record the watcher's stop", error=str(exc))

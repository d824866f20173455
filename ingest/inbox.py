"""The inbox: when is a delivery complete, and taking it without losing it.

Completeness rule (docs/operations.md):
- a zip is complete when its size and modification time have not changed for `stable_seconds`;
- a folder is complete when a marker file `<folder>.done` sits beside it, or when its whole tree
  (names, sizes, modification times) has not changed for `stable_seconds`;
- names starting with `.` or ending in `.part`, `.tmp`, `.done` are never deliveries (uploads in
  progress and markers);
- any other file is a delivery too, and will be quarantined as "not a zip".

Taking a delivery: its checksum is computed in place, a receipt row is written, then it is renamed
into `work/` (same filesystem, atomic); a crash between the two leaves a receipt pointing at the
inbox, which the next scan resumes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from catalog.settings import CatalogSettings
from ingest import receipts
from ingest.model import Delivery
from ingest.settings import IngestSettings

IGNORED_SUFFIXES = (".part", ".tmp", ".done", ".reason.json")


def _is_candidate(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(IGNORED_SUFFIXES)


def _signature(path: Path) -> tuple:
    """What must stay unchanged for a delivery to be complete."""
    if path.is_dir():
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
        return tuple(entries)
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


def checksum(path: Path) -> tuple[str, int]:
    """Multihash sha2-256 of a file, or of a folder's sorted (relative path, file sha256) list; and the size."""
    if path.is_dir():
        outer, size = hashlib.sha256(), 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = Path(root, name)
                outer.update(str(full.relative_to(path)).encode() + b"\0" + _file_sha256(full).encode())
                size += full.stat().st_size
        return "1220" + outer.hexdigest(), size
    return "1220" + _file_sha256(path), path.stat().st_size


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Inbox:
    """Watches one directory; `scan()` returns the deliveries that became complete since the last scan."""

    catalog: CatalogSettings
    settings: IngestSettings
    _seen: dict[Path, tuple[tuple, float]] = field(default_factory=dict)

    @property
    def inbox(self) -> Path:
        return self.settings.inbox_dir(self.catalog)

    @property
    def work(self) -> Path:
        return self.settings.work_dir(self.catalog)

    def complete(self, path: Path, now: float | None = None) -> bool:
        if path.is_dir() and path.with_name(path.name + ".done").exists():
            return True
        now = time.monotonic() if now is None else now
        sig = _signature(path)
        previous = self._seen.get(path)
        if previous is None or previous[0] != sig:
            self._seen[path] = (sig, now)
            return False
        return now - previous[1] >= self.settings.stable_seconds

    def scan(self) -> list[Delivery]:
        self.inbox.mkdir(parents=True, exist_ok=True)
        taken = []
        for path in sorted(self.inbox.iterdir()):
            if _is_candidate(path) and self.complete(path):
                taken.append(take(self.catalog, self.settings, path))
                self._seen.pop(path, None)
        return taken


def take(catalog: CatalogSettings, settings: IngestSettings, path: Path) -> Delivery:
    """Checksum, receipt, then move into the work area. The returned delivery carries its receipt id."""
    path = path.resolve()
    digest, size = checksum(path)
    delivery = Delivery(path=path, name=path.name, checksum=digest, size=size)
    receipt_id = receipts.pending_for(catalog, delivery) or receipts.record(catalog, delivery)
    work = settings.work_dir(catalog)
    work.mkdir(parents=True, exist_ok=True)
    # one directory per receipt keeps the delivery's own name (a folder's name is its product id)
    target = work / str(receipt_id) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.parent == settings.inbox_dir(catalog):
        os.rename(path, target)  # the inbox and work/ share a filesystem: atomic
        path.with_name(path.name + ".done").unlink(missing_ok=True)
    elif path.is_dir():
        shutil.copytree(path, target)  # a one-shot ingest never consumes the caller's files
    else:
        shutil.copy2(path, target)
    receipts.finish(catalog, receipt_id, "received", path=str(target))
    return Delivery(path=target, name=path.name, checksum=digest, size=size, receipt_id=receipt_id)

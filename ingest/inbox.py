"""The inbox: when is a delivery complete, and taking it without losing it — whatever lies in the inbox.

Completeness rule (docs/operations.md):
- names starting with `.` or ending in `.part`, `.tmp`, `.done` are never deliveries (uploads in progress and
  markers): these conventions take precedence over everything below;
- a folder is complete when a marker file `<folder>.done` sits beside it, or when its whole tree (names, sizes,
  modification times) has not changed for `stable_seconds`;
- a zip (any regular file) is complete when its size and modification time have not changed for `stable_seconds`;
- symbolic links (dangling or not), FIFOs, sockets and devices are refused at once, without being opened or
  followed: a receipt says so and the entry is moved to quarantine, so it is seen once.

Entries that vanish between listing and taking are forgotten; an entry that cannot be read is skipped and
reported (the watcher's state), and the scan goes on: one bad entry never blocks the inbox.

Taking a delivery: it is first renamed into a private claim folder `work/.claim-<uuid>/` (same filesystem,
atomic): of two processes seeing one entry, one rename succeeds and the other finds nothing, so one delivery
gets one receipt. Its checksum is computed there, the receipt written, and the claim folder renamed to
`work/<receipt>/`. A failure before the receipt puts the entry back in the inbox; a process killed meanwhile
leaves a claim that the watcher gives back to the inbox (or finishes, when its receipt exists). A one-shot
`landsurf ingest PATH` copies instead of renaming, so the caller's files are never consumed; a second one-shot
of the same bytes while the first is still open joins its receipt (the delivery lock, on the checksum).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from catalog.errors import DatabaseError
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from ingest import receipts
from ingest.checksum import PREFIX, kind_of, multihash
from ingest.errors import TransientIngestError
from ingest.model import Delivery
from ingest.settings import IngestSettings
from ingest.tree import Tree, scan_tree
from ingest.unzip import human_bytes

log = get_logger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp", ".done", ".reason.json")
CLAIM_PREFIX = ".claim-"


def is_candidate(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


def checksum(path: Path) -> tuple[str, int]:
    """Multihash sha2-256 of a file, or of a folder's sorted (relative path, file sha256) list; and the size."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        tree = scan_tree(path)
        return tree.content_checksum(), tree.size
    return multihash(path), os.lstat(path).st_size


def signature(path: Path, st: os.stat_result | None = None, max_entries: int | None = None) -> str:
    """What must stay unchanged for a delivery to be complete (and is compared again before a quarantine)."""
    st = st or os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        tree = scan_tree(path, max_entries)
        return f"tree:{tree.signature()}{':truncated' if tree.truncated else ''}"
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def refusal(path: Path, st: os.stat_result, settings: IngestSettings) -> tuple[str | None, Tree | None]:
    """Why a delivery is refused without reading a byte of it (or None), and the tree of a folder."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (f"the delivery is a symbolic link (to {target}): links are not followed; deliver the file or "
                "folder itself"), None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"the delivery is a {kind_of(mode)}, neither a zip file nor a folder: it was not opened", None
    if stat.S_ISREG(mode):
        return None, None
    tree = scan_tree(path, settings.max_entries)
    if tree.truncated:
        return (f"entry count more than {settings.max_entries} exceeds the limit LANDSURF_INGEST_MAX_ENTRIES="
                f"{settings.max_entries}"), tree
    if tree.special:
        first = tree.special[0]
        more = f" (and {len(tree.special) - 1} more)" if len(tree.special) > 1 else ""
        return (f"the delivery holds a {first.kind}: {first.rel}{more}; only regular files and folders are read"), tree
    if tree.size > settings.max_unpacked_bytes:
        return (f"size {human_bytes(tree.size)} exceeds the limit LANDSURF_INGEST_MAX_UNPACKED_BYTES="
                f"{human_bytes(settings.max_unpacked_bytes)}"), tree
    return None, tree


def _identity(path: Path, st: os.stat_result, tree: Tree | None) -> str:
    """A checksum for a refused entry, computed without reading it."""
    if tree is not None:
        return tree.listing_checksum()
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    text = f"{kind_of(st.st_mode)}\0{path.name}\0{target}\0{st.st_ino}\0{st.st_mtime_ns}"
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Inbox:
    """Watches one directory; `scan()` returns the deliveries taken (or refused) since the last scan."""

    catalog: CatalogSettings
    settings: IngestSettings
    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # name → (signature, since, monotonic)
    first_seen: dict[str, float] = field(default_factory=dict)        # name → wall time it was first listed
    problems: dict[str, str] = field(default_factory=dict)            # name → why it could not be considered
    taken: int = 0
    refused: int = 0

    @property
    def inbox(self) -> Path:
        return self.settings.inbox_dir(self.catalog)

    @property
    def work(self) -> Path:
        return self.settings.work_dir(self.catalog)

    def complete(self, path: Path, now: float | None = None, st: os.stat_result | None = None) -> bool:
        st = st or os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and os.path.lexists(path.with_name(path.name + ".done")):
            return True
        now = time.monotonic() if now is None else now
        sig = signature(path, st, self.settings.max_entries)
        previous = self._seen.get(path.name)
        if previous is None or previous[0] != sig:
            self._seen[path.name] = (sig, now)
            return False
        return now - previous[1] >= self.settings.stable_seconds

    def scan(self) -> list[Delivery]:
        """One pass over the inbox. Database faults propagate (the watcher waits and scans again); any fault of
        one entry is recorded in `problems` and the pass goes on."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        names = sorted(n for n in os.listdir(self.inbox) if is_candidate(n))
        now_wall = time.time()
        for gone in set(self.first_seen) - set(names):
            self._forget(gone)
        taken: list[Delivery] = []
        for name in names:
            self.first_seen.setdefault(name, now_wall)
            path = self.inbox / name
            try:
                delivery = self._consider(path)
            except FileNotFoundError:
                self._forget(name)  # vanished between listing and taking: nothing to do
                continue
            except (DatabaseError, TransientIngestError):
                raise
            except OSError as exc:
                if self.problems.get(name) != str(exc):
                    log.warning("inbox entry skipped", entry=name, error=str(exc))
                self.problems[name] = str(exc)
                continue
            if delivery is not None:
                taken.append(delivery)
                if delivery.status == "quarantined":
                    self.refused += 1
                else:
                    self.taken += 1
            if delivery is not None or not os.path.lexists(path):
                self._forget(name)
        return taken

    def _forget(self, name: str) -> None:
        self._seen.pop(name, None)
        self.first_seen.pop(name, None)
        self.problems.pop(name, None)

    def _consider(self, path: Path) -> Delivery | None:
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return take_from_inbox(self.catalog, self.settings, path)  # refused at once, never opened
        if self.complete(path, st=st):
            return take_from_inbox(self.catalog, self.settings, path)
        return None

    def untaken(self) -> tuple[int, datetime | None]:
        """Entries still in the inbox (waiting to be complete, or unreadable) and when the oldest was first seen."""
        if not self.first_seen:
            return 0, None
        oldest = min(self.first_seen.values())
        return len(self.first_seen), datetime.fromtimestamp(oldest, timezone.utc)


def take_from_inbox(catalog: CatalogSettings, settings: IngestSettings, path: Path) -> Delivery | None:
    """Claim (rename into a private folder of work/), checksum, receipt, then rename the claim folder into
    `work/<receipt>/` — or refuse (receipt + quarantine) what may not be read.

    The first rename decides between processes that see the same entry; the others get None (as for an entry
    that vanished). If the database fails before the receipt is written, the entry is put back in the inbox; a
    claim left by a process killed meanwhile is put back by `recover_claims`.
    """
    st = os.lstat(path)
    sig = signature(path, st, settings.max_entries) if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None
    claim_name = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    claim = settings.work_dir(catalog) / claim_name
    with receipts.taking(catalog, claim_name):
        claim.mkdir(parents=True)
        try:
            os.rename(path, claim / path.name)  # the inbox and work/ share a filesystem: atomic
        except FileNotFoundError:
            claim.rmdir()
            return None  # another watcher took it, or it vanished
        held = claim / path.name
        try:
            st = os.lstat(held)  # ours now: whatever it holds cannot change under us any more (but by its writer)
            reason, tree = refusal(held, st, settings)
            if reason is not None:
                return _refuse(catalog, settings, held, path, st, tree, reason)
            digest, size = (tree.content_checksum(), tree.size) if tree is not None else (multihash(held), st.st_size)
            delivery = Delivery(path=held, name=path.name, checksum=digest, size=size)
            receipt_id = receipts.pending_for(catalog, digest, str(path)) or receipts.record(
                catalog, delivery, source=str(path), signature=sig)
        except BaseException:
            if os.path.lexists(held) and not os.path.lexists(path):
                os.rename(held, path)  # nothing recorded: the delivery goes back where it was
                shutil.rmtree(claim, ignore_errors=True)
            raise
        target_dir = settings.work_dir(catalog) / str(receipt_id)
        os.rename(claim, target_dir)
        receipts.moved(catalog, receipt_id, str(target_dir / path.name))
    path.with_name(path.name + ".done").unlink(missing_ok=True)
    log.info("delivery received", receipt=receipt_id, delivery=path.name, size=size)
    return Delivery(path=target_dir / path.name, name=path.name, checksum=digest, size=size, receipt_id=receipt_id)


def recover_claims(catalog: CatalogSettings, settings: IngestSettings, older_than_s: float) -> list[str]:
    """Claim folders left by a process killed while taking a delivery: with a receipt, the taking is finished
    (`resume_take`); without one, the delivery goes back to the inbox. Returns what was done."""
    work = settings.work_dir(catalog)
    done = []
    if not work.is_dir():
        return done
    now = time.time()
    for claim in sorted(work.glob(f"{CLAIM_PREFIX}*")):
        try:
            if now - os.lstat(claim).st_mtime < older_than_s or receipts.taking_in_progress(catalog, claim.name):
                continue
            rec = receipts.with_path_under(catalog, str(claim))
            if rec is not None:
                resume_take(catalog, settings, rec)
                done.append(f"{claim.name}: receipt {rec.id} taken")
                continue
            for entry in os.listdir(claim):
                back = settings.inbox_dir(catalog) / entry
                if not os.path.lexists(back):
                    os.rename(claim / entry, back)
                    done.append(f"{claim.name}: {entry} back in the inbox")
            if not os.listdir(claim):
                claim.rmdir()
        except FileNotFoundError:
            continue
    for line in done:
        log.warning("claim of a dead taking recovered", what=line)
    return done


def take(catalog: CatalogSettings, settings: IngestSettings, path: Path) -> Delivery:
    """Take one delivery given by path: from the inbox it is moved, from anywhere else copied into work/.

    The returned delivery carries its receipt id; `status` is `quarantined` when it was refused outright (its
    files are left where they are), or the status of the open receipt of the same bytes that it joined.
    """
    path = Path(path).absolute()
    inbox = settings.inbox_dir(catalog)
    if path.parent == inbox:
        taken = take_from_inbox(catalog, settings, path)
        if taken is None:
            raise FileNotFoundError(f"{path} was taken by another process meanwhile")
        return taken
    st = os.stat(path)  # the caller's own link to a delivery is followed; links inside a folder are not
    reason, tree = refusal(path, st, settings)
    if reason is not None:
        return _refuse(catalog, settings, path, path, st, tree, reason, move=False)
    digest, size = (tree.content_checksum(), tree.size) if tree is not None else (multihash(path), st.st_size)
    with receipts.delivery_lock(catalog, digest):
        joined = receipts.in_flight(catalog, digest)
        if joined is not None:
            log.info("delivery already being ingested: joined its receipt", receipt=joined.id, delivery=path.name)
            return Delivery(Path(joined.path), joined.name, digest, size, joined.id, status=joined.status)
        delivery = Delivery(path=path, name=path.name, checksum=digest, size=size)
        receipt_id = receipts.record(catalog, delivery, source=str(path))
        target = _copy_into_work(settings.work_dir(catalog) / str(receipt_id), path)
        receipts.moved(catalog, receipt_id, str(target))
    return Delivery(path=target, name=path.name, checksum=digest, size=size, receipt_id=receipt_id)


def _copy_into_work(folder: Path, source: Path) -> Path:
    """Copy under a temporary name, then rename: `work/<receipt>/<name>` exists only complete."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    partial = folder / f".{source.name}.copying"
    if partial.is_dir():
        shutil.rmtree(partial)
    partial.unlink(missing_ok=True)
    if source.is_dir():
        shutil.copytree(source, partial, symlinks=True)
    else:
        shutil.copy2(source, partial)
    os.rename(partial, target)
    return target


def _refuse(catalog: CatalogSettings, settings: IngestSettings, held: Path, source: Path, st: os.stat_result,
            tree: Tree | None, reason: str, *, move: bool = True) -> Delivery:
    """A receipt `quarantined` with the reason; the entry itself (never a link's target), claimed from the
    inbox, is moved to quarantine, so it is seen once. Nothing is opened. A one-shot's files stay (`move=False`)."""
    from ingest.pipeline import write_reason

    digest = _identity(held, st, tree)
    size = tree.size if tree is not None else (st.st_size if stat.S_ISREG(st.st_mode) else 0)
    delivery = Delivery(path=held, name=source.name, checksum=digest, size=size)
    receipt_id = receipts.record(catalog, delivery, source=str(source))
    where = None
    if move:
        qdir = settings.quarantine_dir(catalog)
        qdir.mkdir(parents=True, exist_ok=True)
        target = qdir / f"{receipt_id}-{source.name}"
        write_reason(qdir, target.name, receipt_id, reason)
        try:
            os.rename(held, target)
        except OSError:  # quarantine on another filesystem
            if stat.S_ISDIR(st.st_mode):
                shutil.move(str(held), target)
            else:
                os.unlink(held)  # a link, FIFO, socket or device carries no data
                target = None
        if held.parent.name.startswith(CLAIM_PREFIX):
            shutil.rmtree(held.parent, ignore_errors=True)
        where = str(target) if target else None
    receipts.finish(catalog, receipt_id, "quarantined", reason=reason, path=where)
    log.warning("delivery refused", receipt=receipt_id, delivery=source.name, reason=reason)
    return Delivery(path=Path(where) if where else source, name=source.name, checksum=digest, size=size,
                    receipt_id=receipt_id, status="quarantined")


def resume_take(catalog: CatalogSettings, settings: IngestSettings, rec: receipts.Receipt) -> receipts.Receipt:
    """Finish the taking of a receipt whose delivery is not (yet) in `work/<receipt>/` — a crash between the
    receipt and the rename or copy. A delivery that is nowhere any more ends `failed`, saying so."""
    target = settings.work_dir(catalog) / str(rec.id) / rec.name
    if Path(rec.path) == target and os.path.lexists(target):
        return rec
    if os.path.lexists(target):  # renamed or copied, the path not yet recorded
        receipts.moved(catalog, rec.id, str(target))
        return receipts.get(catalog, rec.id)
    quarantined = settings.quarantine_dir(catalog) / f"{rec.id}-{rec.name}"
    if os.path.lexists(quarantined):  # moved to quarantine, the receipt not updated (database lost meanwhile)
        try:
            reason = json.loads(quarantined.with_name(quarantined.name + ".reason.json").read_text())["reason"]
        except (OSError, ValueError, KeyError):
            reason = "quarantined (its reason could not be read back)"
        receipts.finish(catalog, rec.id, "quarantined", reason=reason, path=str(quarantined))
        return receipts.get(catalog, rec.id)
    src = Path(rec.path)
    if os.path.lexists(src) and src.parent.name.startswith(CLAIM_PREFIX):  # killed after its receipt
        if not os.path.lexists(target.parent):
            os.rename(src.parent, target.parent)
            receipts.moved(catalog, rec.id, str(target))
        return receipts.get(catalog, rec.id)
    if os.path.lexists(src) and src.parent == settings.inbox_dir(catalog):  # killed before its rename
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, target)
            receipts.moved(catalog, rec.id, str(target))
        except FileNotFoundError:
            pass  # a watcher claimed it meanwhile: it finds this receipt (`pending_for`)
        return receipts.get(catalog, rec.id)
    if os.path.exists(src) and src != target:
        copied = _copy_into_work(target.parent, src)
        if checksum(copied)[0] == rec.checksum:
            receipts.moved(catalog, rec.id, str(copied))
            return receipts.get(catalog, rec.id)
        shutil.rmtree(target.parent, ignore_errors=True)
        receipts.finish(catalog, rec.id, "failed", reason=f"the delivery at {src} changed since it was received: "
                        "ingest it again")
        return receipts.get(catalog, rec.id)
    receipts.finish(catalog, rec.id, "failed", reason=f"the delivery's files are gone (neither {src} nor {target} "
                    "exists): deliver it again")
    return receipts.get(catalog, rec.id)

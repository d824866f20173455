"""What a delivery folder holds, found with `lstat` alone: nothing is opened, no link is followed.

A folder delivery may only hold regular files and folders. Symbolic links (which could point out of the
delivery, or at `/dev/zero`), FIFOs (which block whoever opens them), sockets and devices are listed as such,
so that the delivery is refused by name before any byte of it is read. The walk stops after `max_entries`,
so a folder of a million files costs no more than the limit.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ingest.checksum import PREFIX, file_sha256, kind_of


@dataclass(frozen=True)
class Entry:
    rel: str          # path relative to the delivery, '/'-separated
    kind: str         # file | folder | symbolic link | FIFO | socket | device | special file
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Tree:
    """The entries of a folder in a fixed order (each folder's files sorted, then its sub-folders sorted)."""

    root: Path
    entries: tuple[Entry, ...]
    truncated: bool   # the walk stopped at the entry limit

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "file"]

    @property
    def special(self) -> list[Entry]:
        """Entries a delivery may not hold: anything but regular files and folders."""
        return [e for e in self.entries if e.kind not in ("file", "folder")]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files)

    def signature(self) -> str:
        """Changes whenever a name, kind, size or modification time inside the folder changes."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(f"{e.rel}\0{e.kind}\0{e.size}\0{e.mtime_ns}\n".encode())
        return digest.hexdigest()

    def listing_checksum(self) -> str:
        """An identity for a folder that will not be read (refused): its listing, not its bytes."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(f"{e.rel}\0{e.kind}\0{e.size}\n".encode())
        return PREFIX + digest.hexdigest()

    def content_checksum(self) -> str:
        """Multihash of the sorted (relative path, file SHA-256) list: the folder's identity in its receipt."""
        outer = hashlib.sha256()
        for e in self.files:
            outer.update(e.rel.encode() + b"\0" + file_sha256(self.root / e.rel).encode())
        return PREFIX + outer.hexdigest()


def scan_tree(root: Path, max_entries: int | None = None) -> Tree:
    """Every entry under `root` (not following links), stopping after `max_entries`."""
    entries: list[Entry] = []
    limit = max_entries if max_entries is not None else 1 << 62

    def walk(folder: Path, prefix: str) -> bool:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda d: d.name)
        subdirs = []
        for item in items:
            st = item.stat(follow_symlinks=False)
            kind = kind_of(st.st_mode)
            if kind == "folder":
                subdirs.append(item)
                continue
            entries.append(Entry(prefix + item.name, kind, st.st_size if stat.S_ISREG(st.st_mode) else 0,
                                 st.st_mtime_ns))
            if len(entries) > limit:
                return False
        for item in subdirs:
            st = item.stat(follow_symlinks=False)
            entries.append(Entry(prefix + item.name, "folder", 0, st.st_mtime_ns))
            if len(entries) > limit or not walk(Path(item.path), prefix + item.name + "/"):
                return False
        return True

    complete = walk(root, "")
    return Tree(root, tuple(entries), truncated=not complete)

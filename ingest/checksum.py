"""The one multihash of landsurf: sha2-256, written `1220<hex>` (multihash code 0x12, length 0x20).

Used for `file:checksum` of every published file, for a delivery's identity in its receipt, and by the tests
that verify published bytes. Files are opened without following links and refused unless regular, so hashing
never blocks on a FIFO nor wanders out of a delivery through a symbolic link.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

PREFIX = "1220"
CHUNK = 8 << 20


def multihash_hex(digest: "hashlib._Hash") -> str:
    return PREFIX + digest.hexdigest()


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of a regular file: links are not followed, FIFOs and devices are not opened
    for real (O_NONBLOCK) and refused. Raises `NotARegularFile`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is not a regular file ({kind_of(mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NotARegularFile(OSError):
    """A file that must be regular is a FIFO, socket, device or directory."""


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a regular file."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def multihash(path: Path | str) -> str:
    """`file:checksum` of a regular file on disk."""
    return PREFIX + file_sha256(path)


def kind_of(mode: int) -> str:
    """What an `lstat` mode is, in words used by reasons and logs."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"

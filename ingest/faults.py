"""Whose fault is an exception: the delivery's, the system's, or neither (a bug, an unforeseen case).

The pipeline asks this once, around all its stages, so that every exception ends in exactly one of three
outcomes: quarantine, retry with backoff, or `failed` with the error recorded (docs/architecture.md).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import psycopg

from catalog.errors import DatabaseError, StoreError
from ingest.checksum import open_regular
from ingest.errors import InvalidDelivery, TransientIngestError

SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ENOMEM, errno.EROFS, errno.EAGAIN,
                 errno.EMFILE, errno.ENFILE, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY, errno.ENXIO,
                 errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.EXDEV}


def is_delivery_fault(exc: BaseException) -> bool:
    return isinstance(exc, InvalidDelivery)


def is_system_fault(exc: BaseException) -> bool:
    """Disk, memory, I/O, database: retrying later can succeed without anyone touching the delivery."""
    return isinstance(exc, (TransientIngestError, DatabaseError, StoreError, MemoryError, psycopg.OperationalError,
                            psycopg.errors.QueryCanceled)) or (
        isinstance(exc, OSError) and (exc.errno in SYSTEM_ERRNOS or exc.errno is None))


def raster_fault(root: Path, path: Path, reason: str, fix: str) -> InvalidDelivery | TransientIngestError:
    """GDAL could not read a raster: the system's fault when the OS cannot read its bytes either (EIO of a failing
    disk, a vanished mount), else the file's. Reading the file through costs nothing on the normal path."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    try:
        with os.fdopen(open_regular(path), "rb") as fh:
            while fh.read(8 << 20):
                pass
    except OSError as exc:
        return TransientIngestError(f"I/O error reading {rel}: {exc.strerror or exc}",
                                    "check the disk holding the work directory; the job is retried")
    return InvalidDelivery(root, reason, fix)

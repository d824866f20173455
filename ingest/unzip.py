"""Unpacking a zip delivery without trusting it: every entry is checked before the first byte is written.

Refused outright: entries that would land outside the target (`..`, absolute paths, drive letters), symbolic
links, duplicates, and archives larger than the free space. Corrupt archives (cut short, bad CRC, undecodable
members) are reported as such; whatever was unpacked before the fault is removed.
"""

from __future__ import annotations

import errno
import re
import shutil
import zipfile
import zlib
from pathlib import Path

from ingest.errors import InvalidDelivery, TransientIngestError
from ingest.tiff import describe_bytes

REDELIVER = "ask the producer to deliver the product again"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def unzip(path: Path, work_dir: Path) -> Path:
    """Unpack `path` into `work_dir` and return the archive's single top folder (or `work_dir/<zip stem>`).

    `work_dir` belongs to this call: it is removed again when unpacking fails.
    """
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] not in ZIP_MAGIC:
        raise InvalidDelivery(path, f"not a zip archive: {describe_bytes(head, path.stat().st_size)}",
                              "deliver the product as <ID>.zip or as a folder")
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            _check_members(path, members)
            base = work_dir if _single_top_folder(members) else work_dir / path.name.removesuffix(".zip")
            _check_space(path, work_dir, sum(m.file_size for m in members))
            try:
                _unpack(zf, members, base)
            except BaseException:
                shutil.rmtree(work_dir, ignore_errors=True)
                raise
    except zipfile.BadZipFile as exc:
        raise InvalidDelivery(path, f"corrupt zip: {exc}", REDELIVER) from exc
    except (zlib.error, EOFError) as exc:
        raise InvalidDelivery(path, f"corrupt zip: a member cannot be decompressed ({exc})", REDELIVER) from exc
    except NotImplementedError as exc:
        raise InvalidDelivery(path, f"zip uses an unsupported compression method ({exc})",
                              "zip the product with deflate (zip -r) and deliver it again") from exc
    except RuntimeError as exc:  # encrypted members
        raise InvalidDelivery(path, f"zip cannot be read: {exc}", "deliver an unencrypted zip") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise TransientIngestError(f"no space left while unpacking {path.name} into {work_dir}",
                                       "free space in the work directory; the job is retried") from exc
        raise
    return work_dir / _parts(members[0].filename)[0] if base == work_dir else base


def _check_members(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse the whole archive if any entry could land outside the extraction folder."""
    if not members:
        raise InvalidDelivery(path, "empty zip archive (no entries)", REDELIVER)
    for m in members:
        name = m.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise InvalidDelivery(path, f"zip-slip entry refused: {name!r} is an absolute path", REDELIVER)
        if ".." in parts or "\x00" in name or not _parts(name):
            raise InvalidDelivery(path, f"zip-slip entry refused: {name!r} points outside the product folder",
                                  REDELIVER)
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise InvalidDelivery(path, f"zip-slip entry refused: {name!r} is a symbolic link", REDELIVER)
    names = ["/".join(_parts(m.filename)) for m in members]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidDelivery(path, f"zip has duplicate entries: {', '.join(twice[:3])}", REDELIVER)


def _check_space(path: Path, work_dir: Path, needed: int) -> None:
    existing = next(p for p in (work_dir, *work_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise TransientIngestError(f"no space left to unpack {path.name}: it needs {needed} bytes, {free} are "
                                   f"free in {existing}", "free space in the work directory; the job is retried")


def _parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; producers on Windows write backslashes."""
    return tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))


def _single_top_folder(members: list[zipfile.ZipInfo]) -> bool:
    tops = {_parts(m.filename)[0] for m in members}
    return len(tops) == 1 and any(len(_parts(m.filename)) > 1 or m.is_dir() for m in members)


def _unpack(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], base: Path) -> None:
    for m in members:
        target = base.joinpath(*_parts(m.filename))
        if m.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(m) as src, target.open("xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # the CRC-32 is checked when the member is fully read

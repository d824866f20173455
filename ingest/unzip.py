"""Unpacking a zip delivery without trusting it: every entry is checked before the first byte is written.

Refused outright (quarantine): entries that would land outside the target (`..`, absolute paths, drive
letters), symbolic links, duplicates, overlapping entries (the non-recursive zip bomb), and archives beyond the
limits of `IngestSettings` — entry count, unpacked size, compression ratio of one entry and of the whole — each
reason naming its setting. An archive within the limits that does not fit in the free space (minus the headroom
kept for the store and the database) is a fault of the system: retried, never quarantined. Corrupt archives
(cut short, bad CRC, undecodable members) are reported as such; whatever was unpacked before the fault is
removed. While unpacking, bytes are counted: no entry writes more than its header declared.
"""

from __future__ import annotations

import errno
import re
import shutil
import zipfile
import zlib
from pathlib import Path

from ingest.checksum import open_regular
from ingest.errors import InvalidDelivery, LimitExceeded, TransientIngestError
from ingest.settings import IngestSettings
from ingest.tiff import describe_bytes

REDELIVER = "ask the producer to deliver the product again"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
RATIO_FLOOR = 1 << 20  # ratios of smaller sizes say nothing (a 10 kB mask may compress 500:1)


def unzip(path: Path, work_dir: Path, settings: IngestSettings | None = None) -> Path:
    """Unpack `path` into `work_dir` and return the archive's single top folder (or `work_dir/<zip stem>`).

    `work_dir` belongs to this call: it is removed again when unpacking fails.
    """
    settings = settings or IngestSettings()
    with open(open_regular(path), "rb") as f:
        head = f.read(8)
    if head[:4] not in ZIP_MAGIC:
        raise InvalidDelivery(path, f"not a zip archive: {describe_bytes(head, path.stat().st_size)}",
                              "deliver the product as <ID>.zip or as a folder")
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            check_limits(path, members, path.stat().st_size, settings)
            _check_members(path, members)
            base = work_dir if _single_top_folder(members) else work_dir / path.name.removesuffix(".zip")
            check_space(path.name, work_dir, sum(m.file_size for m in members), settings)
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


def check_limits(path: Path, members: list[zipfile.ZipInfo], zip_size: int, settings: IngestSettings) -> None:
    """Entry count, unpacked size and compression ratios against the settings, from the central directory."""
    if len(members) > settings.max_entries:
        raise LimitExceeded(path, "entry count", str(len(members)), "LANDSURF_INGEST_MAX_ENTRIES",
                            str(settings.max_entries))
    for m in members:
        if m.file_size > RATIO_FLOOR and m.file_size / max(m.compress_size, 1) > settings.max_entry_ratio:
            raise LimitExceeded(path, f"compression ratio of entry {m.filename!r}",
                                f"{m.file_size / max(m.compress_size, 1):.0f}:1 ({human_bytes(m.file_size)} from "
                                f"{human_bytes(m.compress_size)})", "LANDSURF_INGEST_MAX_ENTRY_RATIO",
                                f"{settings.max_entry_ratio:g}")
    total = sum(m.file_size for m in members)
    if total > settings.max_unpacked_bytes:
        raise LimitExceeded(path, "unpacked size", human_bytes(total), "LANDSURF_INGEST_MAX_UNPACKED_BYTES",
                            human_bytes(settings.max_unpacked_bytes))
    if total > RATIO_FLOOR and total / max(zip_size, 1) > settings.max_total_ratio:
        raise LimitExceeded(path, "compression ratio of the zip", f"{total / max(zip_size, 1):.0f}:1 "
                            f"({human_bytes(total)} unpacked from {human_bytes(zip_size)})",
                            "LANDSURF_INGEST_MAX_TOTAL_RATIO", f"{settings.max_total_ratio:g}")
    spans = sorted((m.header_offset, m.header_offset + 30 + len(m.orig_filename.encode("utf-8", "replace"))
                    + m.compress_size, m.filename) for m in members)
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if start < end:
            raise InvalidDelivery(path, f"overlapping zip entries {name!r} and {other!r} share their compressed "
                                  "data (a zip bomb)", REDELIVER)


def check_space(name: str, target: Path, needed: int, settings: IngestSettings) -> None:
    """Free space for `needed` bytes in `target`'s filesystem, keeping `min_free_bytes` for everyone else."""
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed + settings.min_free_bytes > free:
        raise TransientIngestError(
            f"not enough free space for {name}: it needs {human_bytes(needed)} and "
            f"LANDSURF_INGEST_MIN_FREE_BYTES={human_bytes(settings.min_free_bytes)} are kept free, but only "
            f"{human_bytes(free)} are free in {existing}", "free space there; the job is retried with backoff")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


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
        written = 0
        with zf.open(m) as src, target.open("xb") as dst:
            while chunk := src.read(1 << 20):  # the CRC-32 is checked when the member is fully read
                written += len(chunk)
                if written > m.file_size:
                    raise InvalidDelivery(zf.filename or "", f"entry {m.filename!r} holds more bytes than the "
                                          f"{m.file_size} its header declares", REDELIVER)
                dst.write(chunk)

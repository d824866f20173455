"""Bounded deliveries: zip bombs, ratios, entry counts, sizes, free space, and folders holding anything but files.

Each archive is built here, for real; each refusal names the setting that bounds it, and nothing is unpacked.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import threading
import zipfile
from pathlib import Path

import pytest

from ingest import receipts
from ingest.errors import InvalidDelivery, LimitExceeded, TransientIngestError
from ingest.inbox import take
from ingest.model import Delivery
from ingest.muscate import extract
from ingest.pipeline import process
from ingest.settings import IngestSettings

NAME = "SENTINEL2A_20240310-104021-123_L2A_T31TCH_C_V1-0"
ZEROS = bytes(20 << 20)  # 20 MB


def refusal(path: Path, settings: IngestSettings | None = None, work: Path | None = None) -> InvalidDelivery:
    work = work or path.parent / "work"
    with pytest.raises(InvalidDelivery) as info:
        extract(Delivery(path, path.name, "", 0), work, settings or IngestSettings())
    assert not work.exists() or not any(work.iterdir()), "nothing may be unpacked"
    return info.value


def test_too_many_entries(tmp_path):
    bomb = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(bomb, "w") as zf:
        for i in range(5001):
            zf.writestr(f"{NAME}/f{i}", b"")
    exc = refusal(bomb)
    assert isinstance(exc, LimitExceeded)
    assert exc.reason == "entry count 5001 exceeds the limit LANDSURF_INGEST_MAX_ENTRIES=5000"


def test_one_entry_compressed_beyond_what_deflate_can(tmp_path):
    bomb = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr(f"{NAME}/padding.bin", ZEROS)
    exc = refusal(bomb)
    assert isinstance(exc, LimitExceeded) and exc.setting == "LANDSURF_INGEST_MAX_ENTRY_RATIO"
    assert exc.reason.startswith(f"compression ratio of entry '{NAME}/padding.bin' ")
    assert exc.reason.endswith("exceeds the limit LANDSURF_INGEST_MAX_ENTRY_RATIO=1100")


def test_a_deflate_bomb_is_caught_by_the_overall_ratio(tmp_path):
    bomb = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):  # each entry ~1000:1, under the per-entry limit
            zf.writestr(f"{NAME}/pad{i}.bin", ZEROS)
    exc = refusal(bomb)
    assert exc.setting == "LANDSURF_INGEST_MAX_TOTAL_RATIO"
    assert "compression ratio of the zip" in exc.reason and "62.9 MB unpacked from" in exc.reason


def test_unpacked_size_limit(l2a_zip, tmp_path):
    exc = refusal(l2a_zip.path, IngestSettings(max_unpacked_bytes=1_000_000), tmp_path / "work")
    assert exc.setting == "LANDSURF_INGEST_MAX_UNPACKED_BYTES"
    assert exc.reason.endswith("exceeds the limit LANDSURF_INGEST_MAX_UNPACKED_BYTES=1.0 MB")
    assert exc.reason.startswith("unpacked size ")


def test_overlapping_entries_the_non_recursive_bomb(tmp_path):
    """Two central-directory records pointing at the same compressed data (Fifield's construction)."""
    plain = tmp_path / "one.zip"
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{NAME}/a", b"x" * 1000)
    data = plain.read_bytes()
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12:eocd + 20])
    record = data[cd_offset:cd_offset + cd_size]
    twin = record.replace(f"{NAME}/a".encode(), f"{NAME}/b".encode())
    tail = bytearray(data[eocd:])
    struct.pack_into("<HHI", tail, 8, 2, 2, cd_size * 2)
    bomb = tmp_path / f"{NAME}.zip"
    bomb.write_bytes(data[:cd_offset] + record + twin + bytes(tail))
    exc = refusal(bomb)
    assert "overlapping zip entries" in exc.reason and "zip bomb" in exc.reason


def test_no_room_is_a_fault_of_the_system_not_of_the_delivery(l2a_zip, tmp_path):
    with pytest.raises(TransientIngestError) as info:
        extract(Delivery(l2a_zip.path, l2a_zip.path.name, "", 0), tmp_path / "work",
                IngestSettings(min_free_bytes=10**18))
    assert "not enough free space" in str(info.value) and "LANDSURF_INGEST_MIN_FREE_BYTES" in str(info.value)
    assert not (tmp_path / "work").exists()

# ------------------------------------------------------------------------------------------------ folders


@pytest.fixture
def folder(product_copy) -> Path:
    return product_copy


def test_a_link_out_of_a_folder_delivery_is_refused(folder):
    (folder / "MASKS" / "secrets.txt").symlink_to("/etc/passwd")
    exc = refusal(folder)
    assert exc.reason == ("the delivery holds a symbolic link: MASKS/secrets.txt; only regular files and folders "
                          "are read")


def test_a_band_replaced_by_a_link_to_dev_zero_is_refused(folder):
    band = next(folder.glob("*_FRE_B4.tif"))
    band.unlink()
    band.symlink_to("/dev/zero")
    assert refusal(folder).reason.startswith(f"the delivery holds a symbolic link: {band.name}")


def _refused_without_blocking(path: Path) -> InvalidDelivery:
    """A FIFO opened for reading would block for ever: the refusal must come back at once."""
    result: dict = {}

    def run() -> None:
        try:
            extract(Delivery(path, path.name, "", 0), path.parent / "work", IngestSettings())
        except InvalidDelivery as exc:
            result["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "extract blocked on a special file"
    return result["exc"]


def test_a_fifo_in_a_folder_is_refused_without_being_opened(folder):
    os.mkfifo(folder / "MASKS" / "pipe")
    assert _refused_without_blocking(folder).reason.startswith("the delivery holds a FIFO: MASKS/pipe")


def test_a_socket_in_a_folder_is_refused(folder, monkeypatch):
    monkeypatch.chdir(folder)  # socket paths are limited to 108 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        assert _refused_without_blocking(folder).reason.startswith("the delivery holds a socket: sock")


def test_a_device_in_a_folder_is_refused(folder):
    try:
        os.mknod(folder / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (CI runs as root)")
    assert _refused_without_blocking(folder).reason.startswith("the delivery holds a device: zero")


def test_a_folder_with_too_many_entries_is_refused_without_walking_it_all(folder):
    many = folder / "many"
    many.mkdir()
    for i in range(60):
        (many / f"f{i}").write_bytes(b"")
    exc = refusal(folder, IngestSettings(max_entries=50))
    assert exc.reason == "entry count more than 50 exceeds the limit LANDSURF_INGEST_MAX_ENTRIES=50"

# ------------------------------------------------------------------------------------------------ pipeline


def test_a_bomb_is_quarantined_with_the_limit_named_and_never_retried(catalog_settings, tmp_path):
    settings = IngestSettings()
    bomb = tmp_path / "SENTINEL2A_20240311-104021-123_L2A_T31TCH_C_V1-0.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"{bomb.stem}/pad{i}.bin", ZEROS)
    outcome = process(catalog_settings, settings, take(catalog_settings, settings, bomb).receipt_id)
    assert outcome.status == "quarantined" and "LANDSURF_INGEST_MAX_TOTAL_RATIO" in outcome.reason
    rec = receipts.get(catalog_settings, outcome.receipt_id)
    assert rec.status == "quarantined" and rec.attempts == 1
    assert (settings.quarantine_dir(catalog_settings) / f"{rec.id}-{bomb.name}").exists()
    assert not (settings.work_dir(catalog_settings) / f"{rec.id}.extract").exists()
    assert bomb.exists()  # a one-shot ingest never consumes the caller's file


def test_a_folder_with_a_link_is_refused_when_taken_and_the_callers_files_stay(catalog_settings, folder):
    (folder / "escape").symlink_to("/etc")
    settings = IngestSettings()
    taken = take(catalog_settings, settings, folder)
    assert taken.status == "quarantined"
    rec = receipts.get(catalog_settings, taken.receipt_id)
    assert rec.status == "quarantined" and rec.reason.startswith("the delivery holds a symbolic link: escape")
    assert process(catalog_settings, settings, taken.receipt_id).status == "quarantined"
    assert (folder / "escape").is_symlink() and os.readlink(folder / "escape") == "/etc"
    assert not (settings.work_dir(catalog_settings) / str(taken.receipt_id)).exists()


def test_no_room_retries_and_then_publishes(catalog_settings, factory_256):
    product = factory_256(seed=61)
    tight = IngestSettings(min_free_bytes=10**18)
    delivery = take(catalog_settings, tight, product.path)
    with pytest.raises(TransientIngestError):
        process(catalog_settings, tight, delivery.receipt_id)
    rec = receipts.get(catalog_settings, delivery.receipt_id)
    assert rec.status == "retrying" and "not enough free space" in rec.reason and "retried automatically" in rec.reason
    assert Path(rec.path).exists()  # the delivery waits in work/ for the retry
    assert process(catalog_settings, IngestSettings(), delivery.receipt_id).status == "published"
    shutil.rmtree(product.path, ignore_errors=True)

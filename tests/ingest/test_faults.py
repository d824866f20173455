"""Whose fault: every exception is the delivery's, the system's, or neither — decided the same way everywhere."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from catalog.errors import DatabaseUnavailable
from ingest.errors import InvalidDelivery, LimitExceeded, TransientIngestError
from ingest.faults import is_delivery_fault, is_system_fault, raster_fault


@pytest.mark.parametrize("exc,system", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (MemoryError(), True),
    (DatabaseUnavailable("down"), True),
    (TransientIngestError("x"), True),
    (InvalidDelivery("a.zip", "bad"), False),
    (LimitExceeded("a.zip", "entry count", "9", "LANDSURF_INGEST_MAX_ENTRIES", "5"), False),
    (ValueError("a bug"), False),
    (KeyError("a bug"), False),
])
def test_classification(exc, system):
    assert is_system_fault(exc) is system
    assert is_delivery_fault(exc) is isinstance(exc, InvalidDelivery)


def test_a_raster_the_os_cannot_read_is_the_systems_fault():
    """/proc/self/mem is a regular file whose first page is unmapped: reading it is a real EIO from the kernel,
    as from a failing disk. GDAL's failure to read such a file must not quarantine the delivery."""
    fault = raster_fault(Path("/proc/self"), Path("/proc/self/mem"), "cannot read mem", "redeliver")
    assert isinstance(fault, TransientIngestError)
    assert str(fault).startswith("I/O error reading mem: Input/output error")


def test_a_raster_the_os_reads_but_gdal_cannot_is_the_deliverys_fault(tmp_path):
    bad = tmp_path / "band.tif"
    bad.write_bytes(b"II*\x00" + bytes(100))
    fault = raster_fault(tmp_path, bad, "cannot read band.tif as a GeoTIFF", "redeliver")
    assert isinstance(fault, InvalidDelivery) and fault.reason == "cannot read band.tif as a GeoTIFF"

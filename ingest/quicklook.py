"""Quicklooks: the MTD names the file and the producer writes its bytes, so neither is trusted.

A quicklook is accepted only if its content is a JPEG or PNG image (magic bytes, then a decode by GDAL's own
JPEG/PNG driver, nothing else), of bounded size; it is then decoded and re-encoded as a JPEG written under a
fixed name. Whatever else the file held — an HTML or SVG page, a polyglot, a GeoTIFF named in place of the
quicklook — never reaches the store, and its name never decides where anything is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from ingest.checksum import open_regular
from ingest.errors import InvalidDelivery
from ingest.tiff import describe_bytes

FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
MAX_PIXELS = 200_000_000      # a declared size beyond this is a decompression bomb, not a quicklook
MAX_SIDE_OUT = 2048           # re-encoded quicklooks are at most this wide and high
QUALITY = 85
FIX = "deliver a JPEG or PNG quicklook (QUICKLOOK in the MTD), or none"


def quicklook_format(root: Path, path: Path) -> str:
    """`JPEG` or `PNG` from the file's content, after a full decode check of its header; else `InvalidDelivery`."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    with open(open_regular(path), "rb") as fh:
        head = fh.read(16)
    kind = next((name for magic, name in FORMATS.items() if head.startswith(magic)), None)
    if kind is None:
        raise InvalidDelivery(root, f"quicklook {rel} is not a JPEG or PNG image: "
                              f"{describe_bytes(head, path.stat().st_size)}", FIX)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, driver=kind) as ds:
                width, height, count, dtype = ds.width, ds.height, ds.count, ds.dtypes[0]
    except RasterioError as exc:
        raise InvalidDelivery(root, f"quicklook {rel} cannot be decoded as {kind}: {exc}", FIX) from exc
    if width * height > MAX_PIXELS:
        raise InvalidDelivery(root, f"quicklook {rel} declares {width}×{height} pixels (more than {MAX_PIXELS})",
                              FIX)
    if count not in (1, 2, 3, 4) or dtype != "uint8":
        raise InvalidDelivery(root, f"quicklook {rel} has {count} band(s) of {dtype}; expected 8-bit grey or RGB",
                              FIX)
    return kind


def encode_quicklook(root: Path, path: Path) -> bytes:
    """The quicklook decoded (reduced to at most MAX_SIDE_OUT) and re-encoded as an RGB JPEG."""
    kind = quicklook_format(root, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, driver=kind) as ds:
                scale = max(ds.width, ds.height) / MAX_SIDE_OUT
                width, height = ((max(1, round(ds.width / scale)), max(1, round(ds.height / scale))) if scale > 1
                                 else (ds.width, ds.height))
                bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]  # grey (and alpha) → RGB; alpha dropped
                data = ds.read(bands, out_shape=(3, height, width), resampling=Resampling.average)
            with MemoryFile() as mem:
                with mem.open(driver="JPEG", width=width, height=height, count=3, dtype="uint8",
                              QUALITY=str(QUALITY)) as out:
                    out.write(np.ascontiguousarray(data))
                return mem.read()
    except RasterioError as exc:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        raise InvalidDelivery(root, f"quicklook {rel} cannot be decoded as {kind}: {exc}", FIX) from exc

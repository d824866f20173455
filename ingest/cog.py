"""Cloud-Optimized GeoTIFFs of one product, written with GDAL's own COG driver, checksummed and validated.

Why the driver and not `rio_cogeo.cog_translate`: measured in the ingest issue, cog_translate's temporary file
and serial overview step take ~2× the driver's time. Each COG is written into GDAL's memory filesystem, validated
there, then streamed to the staging directory by Python while its SHA-256 is computed: the bytes are hashed once
without reading the file back, the next COG is encoded while the previous one is flushed, and a full disk is a
plain `OSError` from `write()` (GDAL writing to disk itself may report ENOSPC/EFBIG only from a worker thread and
still return a truncated file — seen with RLIMIT_FSIZE).

Staged names are fixed by landsurf (`<ID>_<KEY>.tif`, `<ID>_QKL_ALL.jpg`, `<ID>_MTD_ALL.xml`), never taken from
the delivery, and every staged file is created with `O_EXCL`: no file is ever written twice, so the bytes that
were hashed are the bytes that are published. The quicklook is re-encoded (`ingest/quicklook.py`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.shutil import copy as gdal_copy
from rio_cogeo.cogeo import cog_validate

from catalog.collections import COG
from ingest.checksum import PREFIX, open_regular
from ingest.errors import DeliveryError, IngestFailed, TransientIngestError
from ingest.faults import raster_fault
from ingest.model import CogFile, CogSet, L2AProduct, RasterFile
from ingest.quicklook import encode_quicklook
from ingest.settings import IngestSettings
from ingest.unzip import check_space

Compression = Literal["deflate", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("deflate", "zstd")
BLOCKSIZE = 512
CHUNK = 8 << 20
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_SPACE_WORDS = ("no space left", "file too large", "disk quota", "free disk space")
_MEMORY_WORDS = ("out of memory", "cannot allocate", "not enough memory")


def is_continuous(key: str) -> bool:
    """Reflectances and atmosphere (ATB) are averaged in overviews and predicted; bit masks are not."""
    return key[:3] in ("FRE", "SRE", "ATB")


def cog_options(key: str, compress: Compression = "deflate", threads: str = "ALL_CPUS") -> dict[str, str]:
    """Creation options of the COG driver for one asset (also the benchmark's floor)."""
    continuous = is_continuous(key)
    return {
        "COMPRESS": compress.upper(),
        "PREDICTOR": "YES" if continuous else "NO",  # horizontal differencing suits fields, not bit masks
        "BLOCKSIZE": str(BLOCKSIZE),
        "OVERVIEWS": "AUTO",
        "RESAMPLING": "AVERAGE" if continuous else "NEAREST",  # a mean of bit fields would invent classes
        "NUM_THREADS": threads,
        "BIGTIFF": "IF_SAFER",
    }


def source_path(raster: RasterFile) -> str:
    """The raster as GDAL should read it: with the MTD's nodata when the file itself carries none.

    MUSCATE files may omit the GeoTIFF nodata tag; without it the AVERAGE overviews would mix −10000 into
    edge pixels, and clients could not mask the no-data area.
    """
    with rasterio.open(raster.path) as ds:
        own = ds.nodata
    if raster.nodata is None or own == raster.nodata or "?" in str(raster.path):
        return str(raster.path)
    return f"vrt://{raster.path}?a_nodata={raster.nodata:g}"


def staged_name(product: L2AProduct, key: str) -> str:
    """The name a published file gets: from the product id (checked against the MTD) and the asset key only."""
    if key == "thumbnail":
        return f"{product.product_id}_QKL_ALL.jpg"
    if key == "metadata":
        return f"{product.product_id}_MTD_ALL.xml"
    return f"{product.product_id}_{key}.tif"


def write_cogs(product: L2AProduct, staging: Path, *, compress: Compression = "deflate",
               threads: str = "ALL_CPUS", settings: IngestSettings | None = None) -> CogSet:
    """One COG per band and mask of `product`, plus the quicklook and the MTD, in `staging` (flat).

    On any failure the staging directory is removed; a full disk raises `TransientIngestError` (with `settings`,
    before anything is written when the rasters would eat into the space kept free).
    """
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {COMPRESSIONS}, not {compress!r}")
    files: dict[str, CogFile] = {}
    names = [staged_name(product, key) for key in [*product.rasters, "thumbnail", "metadata"]]
    if len(set(names)) != len(names):
        raise IngestFailed(f"two assets of {product.product_id} would share a file name", "report this as a bug")
    if settings is not None:
        check_space(f"the COGs of {product.product_id}", staging, _source_bytes(product.rasters.values()), settings)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(1, thread_name_prefix="cog-flush") as flusher:
            pending: Future[CogFile] | None = None
            for key, raster in product.rasters.items():
                mem = _encode(product, raster, compress, threads, staging)
                try:
                    if pending is not None:
                        _collect(files, pending)  # at most one COG waits in memory while the next is encoded
                except BaseException:
                    mem.close()
                    raise
                pending = flusher.submit(_flush, key, mem, staging / staged_name(product, key))
            if product.quicklook is not None:
                files["thumbnail"] = _write_bytes("thumbnail", encode_quicklook(product.root, product.quicklook),
                                                  staging / staged_name(product, "thumbnail"), "image/jpeg")
            files["metadata"] = _copy_hashed("metadata", product.metadata_file,
                                             staging / staged_name(product, "metadata"), "application/xml")
            if pending is not None:
                _collect(files, pending)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in _SPACE_ERRNOS:
            raise _disk_full(staging) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CogSet(staging=staging, files=files)


def _source_bytes(rasters: Iterable[RasterFile]) -> int:
    """What the COGs may take at most: their sources' size (compression only makes them smaller)."""
    return sum(r.path.stat().st_size for r in rasters)


def _disk_full(staging: Path) -> TransientIngestError:
    return TransientIngestError(f"no space left while writing COGs to {staging}",
                                "free space in the store (or raise its quota); the job is retried")


def _collect(files: dict[str, CogFile], pending: Future[CogFile]) -> None:
    cog = pending.result()
    files[cog.key] = cog


def _encode(product: L2AProduct, raster: RasterFile, compress: Compression, threads: str,
            staging: Path) -> MemoryFile:
    """The COG of one raster, in GDAL's memory filesystem, checked for COG layout."""
    mem = MemoryFile(filename=raster.path.name)
    try:
        gdal_copy(source_path(raster), mem.name, driver="COG", **cog_options(raster.key, compress, threads))
        valid, errors, _ = cog_validate(mem.name, quiet=True)
    except RasterioError as exc:
        mem.close()
        text = str(exc).lower()
        if any(w in text for w in _SPACE_WORDS):
            raise _disk_full(staging) from exc  # GDAL's temporary files, if its memory filesystem spills
        if any(w in text for w in _MEMORY_WORDS):
            raise TransientIngestError(f"out of memory while writing the COG of {raster.key} ({exc})",
                                       "lower the number of workers on this machine; the job is retried") from exc
        rel = raster.path.relative_to(product.root).as_posix()
        raise raster_fault(product.root, raster.path, f"cannot read {rel}: {exc}",
                           "ask the producer to deliver the product again") from exc
    except BaseException:
        mem.close()
        raise
    if not valid:
        mem.close()
        raise DeliveryError(f"the COG written for {raster.key} is not a valid COG: {'; '.join(errors)}",
                            "report this as a landsurf bug with the GDAL version")
    return mem


def _flush(key: str, mem: MemoryFile, dst: Path) -> CogFile:
    """Stream the in-memory COG to disk and hash the same bytes (no second read)."""
    digest = hashlib.sha256()
    try:
        buf = mem.getbuffer()
        size = len(buf)
        with dst.open("xb") as out:  # never a second write to a staged file
            for start in range(0, size, CHUNK):
                digest.update(buf[start:start + CHUNK])
                out.write(buf[start:start + CHUNK])
            out.flush()
            os.fsync(out.fileno())  # a deferred ENOSPC (NFS, quotas) surfaces here, not after publication
        del buf
    finally:
        mem.close()
    return CogFile(key=key, path=dst, size=size, checksum=PREFIX + digest.hexdigest(), media_type=COG)


def _copy_hashed(key: str, src: Path, dst: Path, media_type: str) -> CogFile:
    digest = hashlib.sha256()
    size = 0
    with open(open_regular(src), "rb") as fin, dst.open("xb") as out:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return CogFile(key=key, path=dst, size=size, checksum=PREFIX + digest.hexdigest(), media_type=media_type)


def _write_bytes(key: str, data: bytes, dst: Path, media_type: str) -> CogFile:
    with dst.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return CogFile(key=key, path=dst, size=len(data), checksum=PREFIX + hashlib.sha256(data).hexdigest(),
                   media_type=media_type)

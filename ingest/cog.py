"""Cloud-Optimized GeoTIFFs of one product, written with GDAL's own COG driver, checksummed and validated.

Why the driver and not `rio_cogeo.cog_translate`: measured in the ingest issue, cog_translate's temporary file
and serial overview step take ~2× the driver's time. Each COG is written into GDAL's memory filesystem, validated
there, then streamed to the staging directory by Python while its SHA-256 is computed: the bytes are hashed once
without reading the file back, the next COG is encoded while the previous one is flushed, and a full disk is a
plain `OSError` from `write()` (GDAL writing to disk itself may report ENOSPC/EFBIG only from a worker thread and
still return a truncated file — seen with RLIMIT_FSIZE).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.shutil import copy as gdal_copy
from rio_cogeo.cogeo import cog_validate

from catalog.collections import COG
from ingest.errors import DeliveryError, InvalidDelivery, TransientIngestError
from ingest.model import CogFile, CogSet, L2AProduct, RasterFile

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


def write_cogs(product: L2AProduct, staging: Path, *, compress: Compression = "deflate",
               threads: str = "ALL_CPUS") -> CogSet:
    """One COG per band and mask of `product`, plus the quicklook and the MTD, in `staging` (flat).

    On any failure the staging directory is removed; a full disk raises `TransientIngestError`.
    """
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {COMPRESSIONS}, not {compress!r}")
    files: dict[str, CogFile] = {}
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
                pending = flusher.submit(_flush, key, mem, staging / raster.path.name)
            for key, src, media in (("thumbnail", product.quicklook, "image/jpeg"),
                                    ("metadata", product.metadata_file, "application/xml")):
                if src is not None:
                    files[key] = _copy_hashed(key, src, staging / src.name, media)
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
        raise InvalidDelivery(product.root, f"cannot read {rel}: {exc}",
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
        with dst.open("wb") as out:
            for start in range(0, size, CHUNK):
                digest.update(buf[start:start + CHUNK])
                out.write(buf[start:start + CHUNK])
            out.flush()
            os.fsync(out.fileno())  # a deferred ENOSPC (NFS, quotas) surfaces here, not after publication
        del buf
    finally:
        mem.close()
    return CogFile(key=key, path=dst, size=size, checksum="1220" + digest.hexdigest(), media_type=COG)


def _copy_hashed(key: str, src: Path, dst: Path, media_type: str) -> CogFile:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as out:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return CogFile(key=key, path=dst, size=size, checksum="1220" + digest.hexdigest(), media_type=media_type)


def multihash(path: Path) -> str:
    """`file:checksum` of a file on disk (sha2-256 multihash), for checks and tests."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return "1220" + digest.hexdigest()

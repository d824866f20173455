"""Typed values passed between the ingest stages: receive → read → write COGs → build item → publish."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Delivery:
    """A complete delivery taken from the inbox, with its checksum and receipt id."""

    path: Path                # the zip or folder, as it lies in the inbox (or in the work area)
    name: str                 # file or folder name
    checksum: str             # multihash sha2-256 of the zip bytes, or of the folder's sorted (path, bytes)
    size: int                 # bytes
    receipt_id: int | None = None
    status: str = "received"  # or "quarantined" (refused when taken), or the status of a receipt it joined


@dataclass(frozen=True)
class RasterFile:
    """One raster of a product, as read from its file (never from constants)."""

    key: str                  # asset key: FRE_B4, SRE_B11, CLM_R1, ATB_R2, …
    path: Path
    group: str                # R1 (10 m) or R2 (20 m)
    width: int
    height: int
    dtype: str
    count: int
    nodata: float | None
    transform: tuple[float, float, float, float, float, float] | None = None  # affine a, b, c, d, e, f of the file


@dataclass(frozen=True)
class L2AProduct:
    """A parsed and validated MUSCATE L2A product (MTD_ALL.xml + rasters)."""

    product_id: str           # SENTINEL2B_20171008-105012-463_L2A_T31TCH_C_V1-0
    root: Path                # the product's top folder (extracted)
    platform: str             # SENTINEL2A | SENTINEL2B
    level: str                # L2A
    tile: str                 # 31TCH (no leading T)
    acquired: datetime        # UTC, from MTD ACQUISITION_DATE
    produced: datetime        # UTC, from MTD PRODUCTION_DATE
    version: str              # "1.0" (MTD PRODUCT_VERSION)
    epsg: int
    geoposition: dict[str, tuple[float, float, float, float, int, int]]  # group -> (ulx, uly, xdim, ydim, nrows, ncols)
    rasters: dict[str, RasterFile]
    quicklook: Path | None
    metadata_file: Path
    cloud_percent: float | None = None
    snow_percent: float | None = None
    orbit: int | None = None
    sun_zenith: float | None = None
    sun_azimuth: float | None = None
    view_angles: dict[str, tuple[float, float]] = field(default_factory=dict)  # band -> (zenith, azimuth)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CogFile:
    key: str
    path: Path                # in the staging area
    size: int
    checksum: str             # multihash sha2-256 ("1220…")
    media_type: str


@dataclass(frozen=True)
class CogSet:
    """Everything a product publishes, written in a staging directory of the store's filesystem."""

    staging: Path
    files: dict[str, CogFile]

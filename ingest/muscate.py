"""MUSCATE L2A deliveries: unpack them safely, then read and check `<ID>_MTD_ALL.xml` against the files.

Every fault of a delivery raises `InvalidDelivery` with a reason that names the fault and the file, so the
quarantine receipt says what the producer must fix. Sizes and geometry come from the MTD and the rasters,
never from constants: sub-tile regions of interest are products like any other.
"""

from __future__ import annotations

import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from catalog.collections import COLLECTIONS, S2_BANDS, S2_L2A
from ingest.checksum import kind_of
from ingest.errors import InvalidDelivery, LimitExceeded
from ingest.faults import raster_fault
from ingest.model import Delivery, L2AProduct, RasterFile
from ingest.quicklook import quicklook_format
from ingest.settings import IngestSettings
from ingest.synthetic.grid import TILE_EXTENT_M, tile_grid
from ingest.tiff import tiff_extent
from ingest.tree import scan_tree
from ingest.unzip import REDELIVER, human_bytes, unzip

PLATFORMS = ("SENTINEL2A", "SENTINEL2B", "SENTINEL2C")
LAUNCHES = {"SENTINEL2A": datetime(2015, 6, 23, tzinfo=timezone.utc),
            "SENTINEL2B": datetime(2017, 3, 7, tzinfo=timezone.utc),
            "SENTINEL2C": datetime(2024, 9, 5, tzinfo=timezone.utc)}
FUTURE_TOLERANCE = timedelta(days=1)  # clocks of producers and of this machine may disagree, not by more
TILE_TOLERANCE_M = 10_000  # beyond the 9.8 km overlap of neighbouring tiles, short of the next tile
LEVELS = ("L2A",)
NAME_PATTERN = "PLATFORM_YYYYMMDD-HHMMSS-mmm_L2A_T<tile>_C|D_V<major>-<minor>"
_NAME = re.compile(r"^(?P<platform>[A-Z0-9]+)_(?P<when>\d{8}-\d{6}-\d{3})_(?P<level>[A-Z0-9]+)_T(?P<tile>\w{5})"
                   r"_(?P<letter>[A-Z])_V(?P<version>\d+-\d+)$")
_KEY = re.compile(r"_((?:FRE|SRE)_B\d+A?|(?:ATB|CLM|MG2|SAT|EDG|IAB)_R[12])\.tif$", re.IGNORECASE)
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"
RASTER_KEYS = [k for k in COLLECTIONS[S2_L2A].item_assets if k not in ("thumbnail", "metadata")]
REQUIRED_KEYS = [k for k in RASTER_KEYS if not k.startswith("SRE_")]  # SRE is optional (spec §6)
BAND_GROUP = {b[0]: b[5] for b in S2_BANDS}
REFLECTANCE_NODATA = -10000

# ---------------------------------------------------------------------------------------------- extraction


def extract(delivery: Delivery, work_dir: Path, settings: IngestSettings | None = None) -> Path:
    """The product's top folder: a folder delivery is used in place, a zip is unpacked into `work_dir`.

    Every member name is checked before anything is written (zip-slip: `..`, absolute paths, links), and the
    limits of `settings`; a folder may hold only regular files and folders, within the same limits.
    `work_dir` belongs to this call and is removed again when unpacking fails.
    """
    settings = settings or IngestSettings()
    path = delivery.path
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        check_folder(path, settings)
        return _product_folder(path)
    if not stat.S_ISREG(mode):
        raise InvalidDelivery(path, f"the delivery is a {kind_of(mode)}, neither a zip file nor a folder",
                              REDELIVER)
    return _product_folder(unzip(path, work_dir, settings))


def check_folder(path: Path, settings: IngestSettings) -> None:
    """Only regular files and folders, within the entry and size limits — found without opening anything."""
    tree = scan_tree(path, settings.max_entries)
    if tree.truncated:
        raise LimitExceeded(path, "entry count", f"more than {settings.max_entries}", "LANDSURF_INGEST_MAX_ENTRIES",
                            str(settings.max_entries))
    if tree.special:
        first = tree.special[0]
        more = f" (and {len(tree.special) - 1} more)" if len(tree.special) > 1 else ""
        raise InvalidDelivery(path, f"the delivery holds a {first.kind}: {first.rel}{more}; only regular files "
                              "and folders are read", "deliver the product's files themselves, not links to them")
    if tree.size > settings.max_unpacked_bytes:
        raise LimitExceeded(path, "size", human_bytes(tree.size), "LANDSURF_INGEST_MAX_UNPACKED_BYTES",
                            human_bytes(settings.max_unpacked_bytes))


def _product_folder(folder: Path) -> Path:
    """A folder that only wraps one sub-folder stands for that sub-folder."""
    children = [c for c in folder.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder

# ------------------------------------------------------------------------------------------------ reading


def read_l2a(root: Path, *, now: datetime | None = None) -> L2AProduct:
    """Parse `<ID>_MTD_ALL.xml` (spec §1.4) and check every raster it names against it and the tile.

    Dates must be plausible: acquired after the platform's launch and not after `now` (plus a day), produced
    after acquired."""
    if not root.is_dir():
        raise InvalidDelivery(root, "the product is not a folder", REDELIVER)
    if not any(p.is_file() for p in root.rglob("*")):
        raise InvalidDelivery(root, "empty folder: the delivery contains no files", REDELIVER)
    name = _parse_name(root)
    mtd_path = _find_mtd(root)
    doc = _parse_xml(root, mtd_path)
    mtd = _Mtd(root, mtd_path, doc)
    product_id = mtd.text("Product_Characteristics/PRODUCT_ID")
    tile = mtd.text("Dataset_Identification/GEOGRAPHICAL_ZONE").upper().removeprefix("T")
    acquired = mtd.date("Product_Characteristics/ACQUISITION_DATE")
    version = mtd.text("Product_Characteristics/PRODUCT_VERSION")
    facts = {"product id": (_without_letter(root.name), _without_letter(product_id), "PRODUCT_ID"),
             "platform": (name.platform, mtd.text("Product_Characteristics/PLATFORM"), "PLATFORM"),
             "level": (name.level, mtd.text("Product_Characteristics/PRODUCT_LEVEL"), "PRODUCT_LEVEL"),
             "tile": (name.tile, tile, "GEOGRAPHICAL_ZONE"),
             "version": (name.version.replace("-", "."), version, "PRODUCT_VERSION")}
    wrong = [f"{what} {a} in the name, {b} in MTD {field}" for what, (a, b, field) in facts.items() if a != b]
    if abs((acquired - name.acquired).total_seconds()) >= 1:
        wrong.append(f"date {_iso_ms(name.acquired)} in the name, {_iso_ms(acquired)} in MTD ACQUISITION_DATE")
    if wrong:
        raise InvalidDelivery(root, "name and metadata disagree: " + "; ".join(wrong), REDELIVER)
    produced = mtd.date("Product_Characteristics/PRODUCTION_DATE")
    _check_dates(root, name.platform, acquired, produced, now or datetime.now(timezone.utc))
    epsg = tile_epsg(tile)
    mtd_epsg = int(mtd.number("Geoposition_Informations//HORIZONTAL_CS_CODE"))
    if mtd_epsg != epsg:
        raise InvalidDelivery(root, f"CRS EPSG:{mtd_epsg} in MTD HORIZONTAL_CS_CODE contradicts tile {tile} "
                              f"({_zone_text(tile)} is EPSG:{epsg})", REDELIVER)
    rasters = _rasters(root, mtd, epsg, tile)
    _check_not_all_nodata(root, [r for k, r in rasters.items() if k.startswith("FRE_")])
    named = mtd.find("Product_Organisation//QUICKLOOK")
    qkl = root / (named or f"{root.name}_QKL_ALL.jpg")
    if named and not _inside(root, qkl):
        raise InvalidDelivery(root, f"MTD names a quicklook outside the product: {named}", REDELIVER)
    quicklook = qkl if qkl.is_file() else None
    if quicklook is not None:
        quicklook_format(root, quicklook)  # JPEG or PNG by content, or the delivery is refused
    view = {e.get("band_id", "?"): (_float(e.findtext("ZENITH_ANGLE")), _float(e.findtext("AZIMUTH_ANGLE")))
            for e in doc.iterfind(".//Mean_Viewing_Incidence_Angle")}
    orbit = _float(mtd.find("Product_Characteristics/ORBIT_NUMBER"))
    return L2AProduct(
        product_id=product_id, root=root, platform=name.platform, level=name.level, tile=tile,
        acquired=acquired, produced=produced, version=version,
        epsg=epsg, geoposition=mtd.geoposition, rasters=rasters,
        quicklook=quicklook, metadata_file=mtd_path,
        cloud_percent=mtd.quality("CloudPercent"), snow_percent=mtd.quality("SnowPercent"),
        orbit=int(orbit) if math.isfinite(orbit) else None,
        sun_zenith=mtd.maybe_number("Geometric_Informations//Sun_Angles/ZENITH_ANGLE"),
        sun_azimuth=mtd.maybe_number("Geometric_Informations//Sun_Angles/AZIMUTH_ANGLE"),
        view_angles=view, extra={"letter": name.letter, "folder": root.name},
    )


def _check_dates(root: Path, platform: str, acquired: datetime, produced: datetime, now: datetime) -> None:
    launch = LAUNCHES.get(platform)
    if launch is not None and acquired < launch:
        raise InvalidDelivery(root, f"acquisition date {_iso_ms(acquired)} (MTD ACQUISITION_DATE) is before "
                              f"{platform}'s launch on {launch:%Y-%m-%d}", REDELIVER)
    if acquired > now + FUTURE_TOLERANCE:
        raise InvalidDelivery(root, f"acquisition date {_iso_ms(acquired)} (MTD ACQUISITION_DATE) is in the future "
                              f"(now {_iso_ms(now)})", REDELIVER)
    if produced < acquired - timedelta(seconds=1):
        raise InvalidDelivery(root, f"production date {_iso_ms(produced)} (MTD PRODUCTION_DATE) is before the "
                              f"acquisition date {_iso_ms(acquired)}", REDELIVER)


def check_delivery_name(name: str, product: L2AProduct) -> None:
    """A delivery named like a product identifier must name this product: platform, date, level, tile, version.

    Names that are no identifier (`upload.zip`, a wrapping folder) are not compared. Theia's `_D_` zips hold
    `_C_` folders: the letter is not compared.
    """
    stem = re.sub(r"\.zip$", "", name, flags=re.IGNORECASE)
    m = _NAME.match(stem)
    if not m:
        return
    g = m.groupdict()
    try:
        when = datetime.strptime(g["when"], "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidDelivery(name, f"invalid date-time {g['when']!r} in the delivery name", REDELIVER) from None
    facts = [("platform", g["platform"], product.platform, "PLATFORM"),
             ("level", g["level"], product.level, "PRODUCT_LEVEL"),
             ("tile", g["tile"].upper(), product.tile, "GEOGRAPHICAL_ZONE"),
             ("version", g["version"].replace("-", "."), product.version, "PRODUCT_VERSION")]
    wrong = [f"{what} {a} in the delivery name, {b} in the product (MTD {field})"
             for what, a, b, field in facts if a != b]
    if abs((when - product.acquired).total_seconds()) >= 1:
        wrong.append(f"date {_iso_ms(when)} in the delivery name, {_iso_ms(product.acquired)} in the product "
                     "(MTD ACQUISITION_DATE)")
    if wrong:
        raise InvalidDelivery(name, "delivery name and product disagree: " + "; ".join(wrong), REDELIVER)


def tile_epsg(tile: str) -> int:
    """UTM/WGS84 EPSG code of an MGRS tile: zone from the first two digits, north for latitude bands N..X."""
    return (32600 if tile[2] >= "N" else 32700) + int(tile[:2])


def _zone_text(tile: str) -> str:
    return f"UTM zone {int(tile[:2])} {'north' if tile[2] >= 'N' else 'south'}"


class _Name(NamedTuple):
    platform: str
    acquired: datetime
    level: str
    tile: str
    letter: str
    version: str


def _parse_name(root: Path) -> _Name:
    m = _NAME.match(root.name)
    if not m:
        raise InvalidDelivery(root, f"folder name {root.name!r} is not a MUSCATE product identifier "
                              f"({NAME_PATTERN})", REDELIVER)
    g = m.groupdict()
    if g["platform"] not in PLATFORMS:
        raise InvalidDelivery(root, f"unknown platform {g['platform']!r} in the product name "
                              f"(expected one of {', '.join(PLATFORMS)})", "this collection takes Sentinel-2 only")
    if g["level"] not in LEVELS:
        raise InvalidDelivery(root, f"unknown level {g['level']!r} in the product name (expected L2A)",
                              "this collection takes MUSCATE L2A products only")
    if g["letter"] not in "CD":
        raise InvalidDelivery(root, f"unknown letter {g['letter']!r} in the product name (expected C or D)",
                              REDELIVER)
    tile = g["tile"].upper()
    if not (tile[:2].isdigit() and 1 <= int(tile[:2]) <= 60 and tile[2] in _LAT_BANDS and tile[3:].isalpha()):
        raise InvalidDelivery(root, f"invalid MGRS tile {tile!r} in the product name", REDELIVER)
    try:
        when = datetime.strptime(g["when"], "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidDelivery(root, f"invalid date-time {g['when']!r} in the product name", REDELIVER) from None
    return _Name(g["platform"], when, g["level"], tile, g["letter"], g["version"])


def _iso_ms(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _without_letter(product_id: str) -> str:
    return re.sub(r"_[CD]_V", "_?_V", product_id)  # Theia's _D_ zips hold _C_ folders (spec §1.1)


def _find_mtd(root: Path) -> Path:
    expected = root / f"{root.name}_MTD_ALL.xml"
    if expected.is_file():
        return expected
    found = sorted(root.glob("*_MTD_ALL.xml"))
    if len(found) == 1:
        return found[0]  # named after another id: the PRODUCT_ID check reports it precisely
    if not found:
        raise InvalidDelivery(root, f"missing {expected.name} (the product's metadata)", REDELIVER)
    raise InvalidDelivery(root, f"several MTD_ALL.xml files: {', '.join(p.name for p in found)}", REDELIVER)


def _parse_xml(root: Path, path: Path) -> ET.Element:
    try:
        doc = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        what = str(exc).split(": line")[0]
        raise InvalidDelivery(root, f"malformed XML in {path.name}: {what} at line {line}, column {column + 1}",
                              REDELIVER) from exc
    for el in doc.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    if doc.tag != "Muscate_Metadata_Document":
        raise InvalidDelivery(root, f"{path.name} is not a Muscate_Metadata_Document (root element <{doc.tag}>)",
                              REDELIVER)
    return doc


class _Mtd:
    """Typed look-ups in the MTD, each failing with the XPath that is missing or wrong."""

    def __init__(self, root: Path, path: Path, doc: ET.Element) -> None:
        self.root, self.path, self.doc = root, path, doc
        self.geoposition: dict[str, tuple[float, float, float, float, int, int]] = {}

    def fail(self, xpath: str, problem: str) -> InvalidDelivery:
        return InvalidDelivery(self.root, f"{self.path.name}: {xpath} {problem}", REDELIVER)

    def find(self, xpath: str) -> str | None:
        return (self.doc.findtext(xpath) or "").strip() or None

    def text(self, xpath: str) -> str:
        value = self.find(xpath)
        if value is None:
            raise self.fail(xpath, "is missing")
        return value

    def number(self, xpath: str) -> float:
        value = self.text(xpath)
        try:
            return float(value)
        except ValueError:
            raise self.fail(xpath, f"is not a number: {value!r}") from None

    def maybe_number(self, xpath: str) -> float | None:
        return self.number(xpath) if self.find(xpath) is not None else None

    def date(self, xpath: str) -> datetime:
        value = self.text(xpath)
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail(xpath, f"is not an ISO date: {value!r}") from None
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)

    def quality(self, name: str) -> float | None:
        """A QUALITY_INDEX of the N2 (L2A) quality list, or of any list when N2 is absent."""
        for path in (f".//Product_Quality_List[@level='N2']//QUALITY_INDEX[@name='{name}']",
                     f".//QUALITY_INDEX[@name='{name}']"):
            if self.doc.find(path) is not None:
                return self.maybe_number(path)
        return None

    def group(self, group: str) -> tuple[float, float, float, float, int, int]:
        if group not in self.geoposition:
            base = f"Geoposition_Informations//Group_Geopositioning[@group_id='{group}']/"
            ulx, uly, xdim, ydim, rows, cols = (self.number(base + f) for f in
                                                ("ULX", "ULY", "XDIM", "YDIM", "NROWS", "NCOLS"))
            self.geoposition[group] = (ulx, uly, xdim, ydim, int(rows), int(cols))
        return self.geoposition[group]

    def listed_files(self) -> dict[str, str]:
        """Asset key → relative path, for every image and mask file the MTD names that we publish."""
        listed: dict[str, str] = {}
        for el in self.doc.iter():
            if el.tag in ("IMAGE_FILE", "MASK_FILE") and el.text and (m := _KEY.search(el.text.strip())):
                key = m.group(1).upper()
                if key in RASTER_KEYS:
                    listed.setdefault(key, el.text.strip())
        return listed

    def band_groups(self) -> dict[str, str]:
        groups = {b.text.strip(): g.get("group_id", "") for g in self.doc.iterfind(".//Band_Group_List/Group")
                  for b in g.iterfind(".//BAND_ID") if b.text}
        return groups or BAND_GROUP


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _float(text: str | None) -> float:
    """Optional MTD values: NaN when absent or unreadable, so that one odd angle does not refuse a product."""
    try:
        return float((text or "").strip())
    except ValueError:
        return math.nan

# ------------------------------------------------------------------------------------------------ rasters


def _rasters(root: Path, mtd: _Mtd, epsg: int, tile: str) -> dict[str, RasterFile]:
    listed = mtd.listed_files()
    groups = mtd.band_groups()
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for key in RASTER_KEYS:
        default = (f"MASKS/{root.name}_{key}.tif" if key[:3] in ("CLM", "MG2", "SAT", "EDG", "IAB")
                   else f"{root.name}_{key}.tif")
        rel = listed.get(key, default)
        path = root / rel
        if not _inside(root, path):
            raise InvalidDelivery(root, f"MTD names a file outside the product: {rel}", REDELIVER)
        if path.is_file():
            paths[key] = path
        elif key in REQUIRED_KEYS or key in listed:
            missing.append(rel)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InvalidDelivery(root, f"missing band file{'s' if len(missing) > 1 else ''}: "
                              f"{', '.join(missing[:5])}{more}", REDELIVER)
    nodata = mtd.maybe_number("Radiometric_Informations//SPECIAL_VALUE[@name='nodata']")
    out = {}
    for key, path in paths.items():
        band = key.split("_", 1)[1]
        group = groups.get(band, "") if key[:3] in ("FRE", "SRE") else band
        if group not in ("R1", "R2"):
            raise InvalidDelivery(root, f"MTD Band_Group_List puts band {band} in no known group", REDELIVER)
        default_nodata = (REFLECTANCE_NODATA if nodata is None else nodata) if key[:3] in ("FRE", "SRE") \
            else 0 if key.startswith("ATB") else None
        out[key] = _inspect(root, key, path, group, mtd.group(group), epsg, tile, default_nodata)
    return out


def _inspect(root: Path, key: str, path: Path, group: str, geo: tuple, epsg: int, tile: str,
             default_nodata: float | None) -> RasterFile:
    """Open one raster and compare it with the MTD; a truncated file is found from its TIFF layout."""
    rel = path.relative_to(root).as_posix()
    size = path.stat().st_size
    try:
        need = tiff_extent(path)
    except ValueError as exc:
        raise InvalidDelivery(root, f"{rel} is not a TIFF file ({exc})", REDELIVER) from None
    if need > size:
        raise InvalidDelivery(root, f"truncated TIFF {rel}: the file has {size} bytes, its image data needs "
                              f"{need}", REDELIVER)
    try:
        with rasterio.open(path) as ds:
            width, height, crs, t = ds.width, ds.height, ds.crs, ds.transform
            dtype, count, file_nodata = ds.dtypes[0], ds.count, ds.nodata
    except RasterioError as exc:
        raise raster_fault(root, path, f"cannot read {rel} as a GeoTIFF: {exc}", REDELIVER) from exc
    ulx, uly, xdim, ydim, rows, cols = geo
    if (width, height) != (cols, rows):
        raise InvalidDelivery(root, f"raster size of {rel} is {width}×{height} px but MTD Group_Geopositioning "
                              f"{group} says {cols}×{rows} (NCOLS×NROWS)", REDELIVER)
    found = crs.to_epsg() if crs else None
    if found != epsg:
        raise InvalidDelivery(root, f"CRS {'EPSG:' + str(found) if found else crs or 'none'} of {rel} contradicts "
                              f"tile {tile} ({_zone_text(tile)} is EPSG:{epsg})", REDELIVER)
    if not np.allclose([t.c, t.f, t.a, t.e], [ulx, uly, xdim, ydim], rtol=0, atol=1e-6 * abs(xdim)) or t.b or t.d:
        raise InvalidDelivery(root, f"geotransform of {rel} (UL {t.c:.12g}, {t.f:.12g}; pixel {t.a:.12g}, "
                              f"{t.e:.12g}) contradicts MTD Group_Geopositioning {group} (UL {ulx:.12g}, "
                              f"{uly:.12g}; pixel {xdim:.12g}, {ydim:.12g})", REDELIVER)
    _check_in_tile(root, rel, tile, t, width, height)
    expected = "int16" if key[:3] in ("FRE", "SRE") else "uint8"
    if dtype != expected:
        raise InvalidDelivery(root, f"{rel} has data type {dtype}, MUSCATE {key[:3]} rasters are {expected}",
                              REDELIVER)
    return RasterFile(key=key, path=path, group=group, width=width, height=height, dtype=dtype, count=count,
                      nodata=file_nodata if file_nodata is not None else default_nodata,
                      transform=tuple(t)[:6])


def _check_in_tile(root: Path, rel: str, tile: str, t, width: int, height: int) -> None:
    """The raster lies on its tile (a sub-tile region of interest too): a product named for one tile but
    georeferenced on another is refused."""
    try:
        grid = tile_grid(tile)
    except ValueError:
        return  # _parse_name accepted the id; a tile the grid cannot place is checked by CRS alone
    left, right = sorted((t.c, t.c + t.a * width))
    bottom, top = sorted((t.f, t.f + t.e * height))
    tol = TILE_TOLERANCE_M
    if (left < grid.ulx - tol or top > grid.uly + tol or right > grid.ulx + TILE_EXTENT_M + tol
            or bottom < grid.uly - TILE_EXTENT_M - tol):
        raise InvalidDelivery(root, f"{rel} lies outside tile {tile}: its extent ({left:.0f}, {bottom:.0f}, "
                              f"{right:.0f}, {top:.0f}) is not within the tile's ({grid.ulx}, "
                              f"{grid.uly - TILE_EXTENT_M}, {grid.ulx + TILE_EXTENT_M}, {grid.uly})", REDELIVER)


def _check_not_all_nodata(root: Path, fre: list[RasterFile], rows: int = 512) -> None:
    """Stop at the first valid pixel: a normal product costs one block, an all-nodata one a full read."""
    for raster in fre:
        with rasterio.open(raster.path) as ds:
            for row in range(0, ds.height, rows):
                window = Window(0, row, ds.width, min(rows, ds.height - row))
                try:
                    block = ds.read(1, window=window)
                except RasterioError as exc:
                    rel = raster.path.relative_to(root).as_posix()
                    raise raster_fault(root, raster.path, f"cannot read {rel}: {exc}", REDELIVER) from exc
                if (block != raster.nodata).any():
                    return
    raise InvalidDelivery(root, f"all-nodata product: every FRE band is entirely {REFLECTANCE_NODATA} "
                          "(no valid pixel)", "nothing to publish; ask the producer whether this is expected")

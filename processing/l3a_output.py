"""The L3A product's files: each output raster assembled from the block pieces (a VRT) into a COG, and the
MUSCATE-like `<ID>_MTD_ALL.xml`.

Why pieces and a VRT: workers write their blocks as plain GeoTIFFs on the shared store; the COG driver then reads
the VRT once per output. No worker ever writes into another's file, and no process holds a whole output in memory.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.shutil import copy as gdal_copy
from rio_cogeo.cogeo import cog_validate

from catalog.collections import COG
from ingest.checksum import multihash
from ingest.cog import cog_options
from ingest.model import CogFile
from processing.l3a_block import GROUPS, READ_ENV, BlockOutput, overview_factors
from processing.l3a_kernel import NODATA
from processing.raster_io import RasterInputError


@dataclass(frozen=True)
class OutputBand:
    """Where one output raster comes from: group, piece kind and band in the piece, data type, no-data."""

    key: str
    group: str
    piece: int  # 0: int16 piece, 1: uint8 piece
    band: int  # 1-based band of the piece
    dtype: str
    nodata: float | None
    continuous: bool  # averaged overviews and predictor (reflectance-like) or nearest (flags, counts)


def output_bands() -> list[OutputBand]:
    """FRC_<band> (10), WGT, DTS, FLG, NOBS at R1 and R2 — the L3A collection's raster assets."""
    out: list[OutputBand] = []
    for group, (bands, _, _) in GROUPS.items():
        n = len(bands)
        out += [OutputBand(f"FRC_{b}", group, 0, i + 1, "Int16", NODATA, True) for i, b in enumerate(bands)]
        out += [OutputBand(f"WGT_{group}", group, 0, n + 1, "Int16", NODATA, True),
                OutputBand(f"DTS_{group}", group, 0, n + 2, "Int16", NODATA, True),
                OutputBand(f"FLG_{group}", group, 1, 1, "Byte", None, False),
                OutputBand(f"NOBS_{group}", group, 1, 2, "Byte", None, False)]
    order = {f"FRC_{b}": i for i, b in enumerate(GROUPS["R1"][0] + GROUPS["R2"][0])}
    return sorted(out, key=lambda o: (o.key[:3] != "FRC", order.get(o.key, 0), o.key))


def write_vrt(path: Path, band: OutputBand, blocks: Sequence[BlockOutput], size: tuple[int, int], crs_wkt: str,
              transform: Sequence[float]) -> Path:
    """A one-band VRT of `band` mosaicking the block pieces, `size` (rows, cols) and `transform` of its group, with
    the overview levels the blocks made as the VRT's overviews (each a VRT of the pieces of that level)."""
    factors = sorted(blocks[0].pieces[band.group]) if blocks else [1]
    overviews = []
    for factor in factors[1:]:
        level = path.with_name(f"{path.stem}_{factor}.vrt")
        level.write_text(_mosaic(band, blocks, factor, size, crs_wkt, transform, ""))
        overviews.append(f'<Overview><SourceFilename relativeToVRT="0">{escape(str(level))}</SourceFilename>'
                         "<SourceBand>1</SourceBand></Overview>")
    path.write_text(_mosaic(band, blocks, 1, size, crs_wkt, transform, "".join(overviews)))
    return path


def _mosaic(band: OutputBand, blocks: Sequence[BlockOutput], factor: int, size: tuple[int, int], crs_wkt: str,
            transform: Sequence[float], overviews: str) -> str:
    scale = GROUPS[band.group][2]
    rows, cols = (-(-n // factor) for n in size)
    a, b, c, d, e, f = transform
    sources = []
    for block in blocks:
        row0, nrows, col0, ncols = (v * scale for v in block.window)
        row0, col0, nrows, ncols = row0 // factor, col0 // factor, -(-nrows // factor), -(-ncols // factor)
        src = escape(block.pieces[band.group][factor][band.piece])
        sources.append(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename>'
            f'<SourceBand>{band.band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{ncols}" ySize="{nrows}"/>'
            f'<DstRect xOff="{col0}" yOff="{row0}" xSize="{ncols}" ySize="{nrows}"/></SimpleSource>')
    nodata = f"<NoDataValue>{band.nodata:g}</NoDataValue>" if band.nodata is not None else ""
    gt = f"{c!r}, {a * factor!r}, {b!r}, {f!r}, {d!r}, {e * factor!r}"
    return (f'<VRTDataset rasterXSize="{cols}" rasterYSize="{rows}"><SRS>{escape(crs_wkt)}</SRS>'
            f"<GeoTransform>{gt}</GeoTransform>"
            f'<VRTRasterBand dataType="{band.dtype}" band="1">{nodata}{"".join(sources)}{overviews}</VRTRasterBand>'
            "</VRTDataset>")


def encode_cog(vrt: str, dst: str, key: str, continuous: bool, threads: str, compress: str = "deflate") -> CogFile:
    """The COG of one output (GDAL's COG driver, landsurf's options), fsync'd, with its multihash; runs on a
    worker. A file is written once: an existing `dst` is an error.

    Two measured choices (docs/benchmarks.md): the overviews come with the source (made by the blocks, or else built
    uncompressed beside the VRT here), so the COG driver copies them instead of resampling through a compressed
    temporary file (2× faster); and the compression runs at level 1 (2.3× faster than deflate's default 6, no larger
    on reflectances).
    """
    path = Path(dst)
    if path.exists():
        raise FileExistsError(f"{path} exists: a derived file is written once")
    options = cog_options(key, compress, threads) | {  # type: ignore[arg-type]
        "PREDICTOR": "YES" if continuous else "NO", "RESAMPLING": "AVERAGE" if continuous else "NEAREST",
        "LEVEL": "1"}
    part = path.with_name(f".{path.name}.part")
    resampling = Resampling.average if continuous else Resampling.nearest
    try:
        with rasterio.Env(COMPRESS_OVERVIEW="NONE", **READ_ENV):
            with rasterio.open(vrt, "r+") as ds:
                factors = overview_factors(ds.width, ds.height)
                if factors and not ds.overviews(1):  # blocks that could not make them (an odd block shape)
                    ds.build_overviews(factors, resampling)
            gdal_copy(vrt, str(part), driver="COG", **options)
        valid, errors, _ = cog_validate(str(part), quiet=True)
        if not valid:
            raise RasterInputError(f"the COG written for {key} is not valid: {'; '.join(errors)}",
                                   "report this as a landsurf bug with the GDAL version")
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        os.link(part, path)
    except RasterioError as exc:
        raise RasterInputError(f"cannot write the COG of {key}: {exc}",
                               "check free space and that workers see the product folder") from exc
    finally:
        part.unlink(missing_ok=True)
        Path(f"{vrt}.ovr").unlink(missing_ok=True)
    return CogFile(key=key, path=path, size=path.stat().st_size, checksum=multihash(path), media_type=COG)


def _sub(parent: ET.Element, tag: str, text: object = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def _iso(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class MtdFacts:
    product_id: str
    platform: str
    tile: str
    when: date
    first: date
    last: date
    version: str
    produced: datetime
    epsg: int
    geoposition: Mapping[str, tuple[float, float, float, float, int, int]]  # group → ulx, uly, xdim, ydim, rows, cols
    files: Mapping[str, str]  # key → file name
    cloud_percent: int
    snow_percent: int
    inputs: Sequence[str]
    parameters: Mapping[str, object]
    params_hash: str
    software: str


def build_mtd(facts: MtdFacts) -> bytes:
    """A MUSCATE-like MTD_ALL.xml of the L3A (WASP writes one too): identification, characteristics, file lists,
    grids, quantification, quality indexes (from FLG R2), the input products and the parameter set."""
    root = ET.Element("Muscate_Metadata_Document")
    _sub(_sub(root, "Metadata_Identification"), "METADATA_FORMAT", "METADATA_MUSCATE", version="1.16")
    ident = _sub(root, "Dataset_Identification")
    _sub(ident, "IDENTIFIER", facts.product_id.rsplit("_V", 1)[0])
    _sub(ident, "PROJECT", "SENTINEL2")
    _sub(ident, "GEOGRAPHICAL_ZONE", f"T{facts.tile}", type="Tile")
    chars = _sub(root, "Product_Characteristics")
    midnight = datetime(facts.when.year, facts.when.month, facts.when.day, tzinfo=timezone.utc)
    for tag, value in (("PRODUCT_ID", facts.product_id), ("ACQUISITION_DATE", _iso(midnight)),
                       ("PRODUCTION_DATE", _iso(facts.produced)), ("PRODUCT_VERSION", facts.version.replace("-", ".")),
                       ("PRODUCT_LEVEL", "L3A"), ("PLATFORM", facts.platform)):
        _sub(chars, tag, value)
    period = _sub(chars, "Synthesis_Period")
    _sub(period, "BEGIN", facts.first.isoformat())
    _sub(period, "END", facts.last.isoformat())
    _sub(chars, "DTS_CONVENTION", "days from ACQUISITION_DATE (negative before)")
    product = _sub(_sub(root, "Product_Organisation"), "Muscate_Product")
    if "thumbnail" in facts.files:
        _sub(product, "QUICKLOOK", facts.files["thumbnail"], bands_id="B4,B3,B2")
    images = _sub(_sub(product, "Image_List"), "Image")
    _sub(_sub(images, "Image_Properties"), "NATURE", "Flat_Reflectance_Composite")
    image_files = _sub(images, "Image_File_List")
    masks = _sub(product, "Mask_List")
    natures = {"WGT": "Weight", "DTS": "Weighted_Average_Date", "FLG": "Status", "NOBS": "Number_Of_Dates"}
    for prefix, nature in natures.items():
        mask = _sub(masks, "Mask")
        _sub(_sub(mask, "Mask_Properties"), "NATURE", nature)
        mask_files = _sub(mask, "Mask_File_List")
        for group in GROUPS:
            if f"{prefix}_{group}" in facts.files:
                _sub(mask_files, "MASK_FILE", facts.files[f"{prefix}_{group}"], group_id=group)
    for key, name in facts.files.items():
        if key.startswith("FRC_"):
            _sub(image_files, "IMAGE_FILE", name, band_id=key[4:])
    geo = _sub(root, "Geoposition_Informations")
    _sub(_sub(_sub(geo, "Coordinate_Reference_System"), "Horizontal_Coordinate_System"), "HORIZONTAL_CS_CODE",
         facts.epsg)
    groups = _sub(_sub(geo, "Geopositioning"), "Group_Geopositioning_List")
    for gid, (ulx, uly, xdim, ydim, rows, cols) in facts.geoposition.items():
        el = _sub(groups, "Group_Geopositioning", group_id=gid)
        for tag, value in (("ULX", ulx), ("ULY", uly), ("XDIM", xdim), ("YDIM", ydim), ("NROWS", rows),
                           ("NCOLS", cols)):
            _sub(el, tag, f"{value:g}" if isinstance(value, float) else value)
    radio = _sub(root, "Radiometric_Informations")
    _sub(radio, "REFLECTANCE_QUANTIFICATION_VALUE", 10000)
    _sub(radio, "WEIGHT_QUANTIFICATION_VALUE", 1000)
    _sub(_sub(radio, "Special_Values_List"), "SPECIAL_VALUE", NODATA, name="nodata")
    quality = _sub(_sub(_sub(root, "Quality_Informations"), "Current_Product"), "Product_Quality_List", level="N3")
    pq = _sub(quality, "Product_Quality")
    indexes = _sub(pq, "Global_Index_List")
    _sub(indexes, "QUALITY_INDEX", facts.cloud_percent, name="CloudPercent")
    _sub(indexes, "QUALITY_INDEX", facts.snow_percent, name="SnowPercent")
    sources = _sub(pq, "Source_Product_List")
    for pid in facts.inputs:
        _sub(_sub(sources, "Source_Product"), "PRODUCT_ID", pid)
    proc = _sub(root, "Processing_Information")
    _sub(proc, "SOFTWARE", facts.software)
    params = _sub(proc, "Parameter_Set", name="l3a", version_hash=facts.params_hash)
    for name, value in sorted(facts.parameters.items()):
        _sub(params, "PARAMETER", value if not isinstance(value, (dict, list)) else repr(value), name=name)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"

"""The product's file names and its `<ID>_MTD_ALL.xml` (products.md §1.4, MAJA's MUSCATE template layout).

Only what a reader needs is written, at the template's XPaths: identification, characteristics, the file
lists with their natures, group geopositioning (taken from the written grids), mean and gridded angles,
quantification and special values, and the quality indexes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from ingest.synthetic.grid import TileGrid
from ingest.synthetic.spectra import BANDS, BANDS_R1, BANDS_R2

GROUPS = {"R1": (BANDS_R1, 10), "R2": (BANDS_R2, 20)}
MASKS = ("CLM", "MG2", "SAT", "EDG", "IAB")
# MG2 bit_number (1-based) per nature; hidden surface before topographic shadow, as MAJA's writer stacks them.
MG2_NATURES = ("Water", "Cloud", "Snow", "Cloud_Shadow", "Hidden_Surface", "Topography_Shadow", "Sun_Too_Low",
               "Tangent_Sun")
ANGLE_STEP_M = 5000


def product_files(product_id: str) -> dict[str, str]:
    """Asset key → path inside the product folder, e.g. `FRE_B4`, `CLM_R2`, `thumbnail`, `metadata`."""
    files = {f"{kind}_{b}": f"{product_id}_{kind}_{b}.tif" for kind in ("FRE", "SRE") for b in BANDS}
    files |= {f"ATB_{g}": f"{product_id}_ATB_{g}.tif" for g in GROUPS}
    files |= {f"{m}_{g}": f"MASKS/{product_id}_{m}_{g}.tif" for m in MASKS for g in GROUPS}
    return files | {"thumbnail": f"{product_id}_QKL_ALL.jpg", "metadata": f"{product_id}_MTD_ALL.xml"}


@dataclass(frozen=True)
class Angles:
    """Mean angles (degrees) and the sun angle grids on nodes every 5 km from the ROI's upper-left corner."""

    sun_zenith: float
    sun_azimuth: float
    view: dict[str, tuple[float, float]]  # band → (zenith, azimuth)
    sun_zenith_grid: list[list[float]]
    sun_azimuth_grid: list[list[float]]


def _iso(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def _sub(parent: ET.Element, tag: str, text: object = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def _properties(parent: ET.Element, tag: str, nature: str, encoding: str, compression: str) -> None:
    props = _sub(parent, tag)
    for key, value in (("NATURE", nature), ("FORMAT", "image/tiff"), ("ENCODING", encoding),
                       ("ENDIANNESS", "LittleEndian"), ("COMPRESSION", compression)):
        _sub(props, key, value)


def _grid(parent: ET.Element, tag: str, values: list[list[float]]) -> None:
    el = _sub(parent, tag, step_unit="m", values_unit="deg")
    _sub(el, "COL_STEP", ANGLE_STEP_M)
    _sub(el, "ROW_STEP", ANGLE_STEP_M)
    rows = _sub(el, "Values_List")
    for row in values:
        _sub(rows, "VALUES", " ".join(f"{v:.4f}" for v in row))


def build_mtd(*, product_id: str, platform: str, acquired: datetime, produced: datetime, grid: TileGrid,
              sizes: dict[str, tuple[int, int]], angles: Angles, orbit: int, cloud_percent: int,
              snow_percent: int, corners: dict[str, tuple[float, float, float, float]],
              band_compression: str) -> bytes:
    """The MTD document; `sizes` maps group → (rows, cols) as written, `corners` name → (lat, lon, x, y)."""
    files = product_files(product_id)
    root = ET.Element("Muscate_Metadata_Document")
    meta = _sub(root, "Metadata_Identification")
    _sub(meta, "METADATA_FORMAT", "METADATA_MUSCATE", version="1.16")
    _sub(meta, "METADATA_PROFILE", "USER")
    _sub(meta, "METADATA_INFORMATION", "EXPERT")
    ident = _sub(root, "Dataset_Identification")
    _sub(ident, "IDENTIFIER", product_id.rsplit("_V", 1)[0])
    _sub(ident, "AUTHORITY", "THEIA")
    _sub(ident, "PRODUCER", "MUSCATE")
    _sub(ident, "PROJECT", "SENTINEL2")
    _sub(ident, "GEOGRAPHICAL_ZONE", f"T{grid.tile}", type="Tile")

    chars = _sub(root, "Product_Characteristics")
    for tag, value in (("PRODUCT_ID", product_id), ("ACQUISITION_DATE", _iso(acquired)),
                       ("PRODUCTION_DATE", _iso(produced)),
                       ("PRODUCT_VERSION", product_id.rsplit("_V", 1)[1].replace("-", ".")),
                       ("PRODUCT_LEVEL", "L2A"), ("PLATFORM", platform), ("SPECTRAL_CONTENT", "XS")):
        _sub(chars, tag, value)
    _sub(chars, "ORBIT_NUMBER", orbit, type="Orbit")
    utc = _sub(chars, "UTC_Acquisition_Range")
    _sub(utc, "MEAN", _iso(acquired))
    _sub(utc, "DATE_PRECISION", "0.001", unit="s")
    bands = _sub(chars, "Band_Global_List", count=str(len(BANDS)))
    for b in BANDS:
        _sub(bands, "BAND_ID", b)
    groups = _sub(chars, "Band_Group_List")
    for gid, (members, _) in GROUPS.items():
        blist = _sub(_sub(groups, "Group", group_id=gid), "Band_List", count=str(len(members)))
        for b in members:
            _sub(blist, "BAND_ID", b)

    product = _sub(_sub(root, "Product_Organisation"), "Muscate_Product")
    _sub(product, "QUICKLOOK", files["thumbnail"], bands_id="B4,B3,B2")
    images = _sub(product, "Image_List")
    for nature, kind in (("Surface_Reflectance", "SRE"), ("Flat_Reflectance", "FRE")):
        image = _sub(images, "Image")
        _properties(image, "Image_Properties", nature, "int16", band_compression)
        flist = _sub(image, "Image_File_List")
        for b in BANDS:
            _sub(flist, "IMAGE_FILE", files[f"{kind}_{b}"], band_id=b)
    for nature, number in (("Water_Vapor_Content", "1"), ("Aerosol_Optical_Thickness", "2")):
        image = _sub(images, "Image")
        _properties(image, "Image_Properties", nature, "byte", "DEFLATE")
        flist = _sub(image, "Image_File_List")
        for gid in GROUPS:
            _sub(flist, "IMAGE_FILE", files[f"ATB_{gid}"], group_id=gid, band_number=number)
    masks = _sub(product, "Mask_List")

    def mask(nature: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        el = _sub(masks, "Mask")
        _properties(el, "Mask_Properties", nature, "byte", "DEFLATE")
        flist = _sub(el, "Mask_File_List")
        for key, attrib in entries:
            _sub(flist, "MASK_FILE", files[key], **attrib)

    mask("WVC_Interpolation", [(f"IAB_{g}", {"group_id": g, "bit_number": "1"}) for g in GROUPS])
    mask("AOT_Interpolation", [(f"IAB_{g}", {"group_id": g, "bit_number": "2"}) for g in GROUPS])
    mask("Detailed_Cloud", [(f"CLM_{g}", {"group_id": g}) for g in GROUPS])
    mask("Edge", [(f"EDG_{g}", {"group_id": g}) for g in GROUPS])
    mask("Saturation", [(f"SAT_{g}", {"group_id": g, "band_id": b, "bit_number": str(i + 1)})
                        for g, (members, _) in GROUPS.items() for i, b in enumerate(members)])
    for bit, nature in enumerate(MG2_NATURES):
        mask(nature, [(f"MG2_{g}", {"group_id": g, "bit_number": str(bit + 1)}) for g in GROUPS])

    geo = _sub(root, "Geoposition_Informations")
    crs = _sub(_sub(geo, "Coordinate_Reference_System"), "Horizontal_Coordinate_System")
    _sub(crs, "HORIZONTAL_CS_TYPE", "PROJECTED")
    _sub(crs, "HORIZONTAL_CS_NAME", f"WGS 84 / UTM zone {grid.zone}{'N' if grid.epsg < 32700 else 'S'}")
    _sub(crs, "HORIZONTAL_CS_CODE", grid.epsg)
    raster_cs = _sub(geo, "Raster_CS")
    _sub(raster_cs, "RASTER_CS_TYPE", "CELL")
    _sub(raster_cs, "PIXEL_ORIGIN", 0)
    positioning = _sub(geo, "Geopositioning")
    corners_el = _sub(positioning, "Global_Geopositioning")
    for name, (lat, lon, x, y) in corners.items():
        point = _sub(corners_el, "Point", name=name)
        for tag, value in (("LAT", f"{lat:.9f}"), ("LON", f"{lon:.9f}"), ("X", x), ("Y", y)):
            _sub(point, tag, value)
    glist = _sub(positioning, "Group_Geopositioning_List")
    for gid, (_, res) in GROUPS.items():
        el = _sub(glist, "Group_Geopositioning", group_id=gid)
        rows, cols = sizes[gid]
        for tag, value in (("ULX", grid.ulx), ("ULY", grid.uly), ("XDIM", res), ("YDIM", -res),
                           ("NROWS", rows), ("NCOLS", cols)):
            _sub(el, tag, value)

    geom = _sub(root, "Geometric_Informations")
    means = _sub(geom, "Mean_Value_List")
    sun = _sub(means, "Sun_Angles")
    _sub(sun, "ZENITH_ANGLE", f"{angles.sun_zenith:.6f}", unit="deg")
    _sub(sun, "AZIMUTH_ANGLE", f"{angles.sun_azimuth:.6f}", unit="deg")
    views = _sub(means, "Mean_Viewing_Incidence_Angle_List")
    for b, (zen, azi) in angles.view.items():
        view = _sub(views, "Mean_Viewing_Incidence_Angle", band_id=b)
        _sub(view, "ZENITH_ANGLE", f"{zen:.6f}", unit="deg")
        _sub(view, "AZIMUTH_ANGLE", f"{azi:.6f}", unit="deg")
    grids = _sub(geom, "Angles_Grids_List")
    sun_grids = _sub(grids, "Sun_Angles_Grids")
    _grid(sun_grids, "Zenith", angles.sun_zenith_grid)
    _grid(sun_grids, "Azimuth", angles.sun_azimuth_grid)
    view_grids = _sub(grids, "Viewing_Incidence_Angles_Grids_List")
    shape = (len(angles.sun_zenith_grid), len(angles.sun_zenith_grid[0]))
    for b, (zen, azi) in angles.view.items():
        band_grids = _sub(view_grids, "Band_Viewing_Incidence_Angles_Grids_List", band_id=b)
        detector = _sub(band_grids, "Viewing_Incidence_Angles_Grids", detector_id="1")
        _grid(detector, "Zenith", [[zen] * shape[1]] * shape[0])
        _grid(detector, "Azimuth", [[azi] * shape[1]] * shape[0])

    radio = _sub(root, "Radiometric_Informations")
    _sub(radio, "REFLECTANCE_QUANTIFICATION_VALUE", 10000)
    _sub(radio, "WATER_VAPOR_CONTENT_QUANTIFICATION_VALUE", 20)
    _sub(radio, "AEROSOL_OPTICAL_THICKNESS_QUANTIFICATION_VALUE", 200)
    special = _sub(radio, "Special_Values_List")
    _sub(special, "SPECIAL_VALUE", -10000, name="nodata")
    _sub(special, "SPECIAL_VALUE", 0, name="water_vapor_content_nodata")
    _sub(special, "SPECIAL_VALUE", 0, name="aerosol_optical_thickness_nodata")

    quality = _sub(_sub(_sub(root, "Quality_Informations"), "Current_Product"), "Product_Quality_List",
                   level="N2")
    pq = _sub(quality, "Product_Quality")
    source = _sub(pq, "Source_Product")
    _sub(source, "PRODUCT_ID", product_id)
    _sub(source, "ACQUISITION_DATE", _iso(acquired))
    _sub(source, "PRODUCTION_DATE", _iso(produced))
    indexes = _sub(pq, "Global_Index_List")
    for name, value in (("CloudPercent", cloud_percent), ("SnowPercent", snow_percent),
                        ("RainDetected", "false"), ("HotSpotDetected", "false"), ("SunGlintDetected", "false")):
        _sub(indexes, "QUALITY_INDEX", value, name=name)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"

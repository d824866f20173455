"""Reading MUSCATE L2A deliveries: a valid product end to end, and one test per fault with its exact reason."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from ingest.errors import InvalidDelivery
from ingest.model import Delivery
from ingest.muscate import extract, read_l2a, tile_epsg
from tests.ingest.conftest import WHEN, edit_mtd


def delivery(path: Path) -> Delivery:
    return Delivery(path=path, name=path.name, checksum="", size=0)


def refused(path: Path, work: Path | None = None) -> str:
    """The reason an invalid delivery is refused with, by extract + read_l2a as the pipeline runs them."""
    with pytest.raises(InvalidDelivery) as info:
        read_l2a(extract(delivery(path), work or path.parent / "work"))
    return info.value.reason


def files(root: Path) -> dict[str, Path]:
    return {p.name.split("_V1-0_")[-1]: p for p in root.rglob("*.tif")}


# ------------------------------------------------------------------------------------------------ valid


def test_a_zip_is_read_end_to_end_with_sizes_from_the_files(l2a_zip, tmp_path):
    root = extract(delivery(l2a_zip.path), tmp_path / "work")
    assert root == tmp_path / "work" / l2a_zip.product_id
    product = read_l2a(root)
    assert product.product_id == l2a_zip.product_id
    assert (product.platform, product.level, product.tile, product.epsg) == ("SENTINEL2B", "L2A", "31TCH", 32631)
    assert product.acquired == WHEN
    assert product.version == "1.0"
    assert product.cloud_percent == l2a_zip.cloud_percent
    assert product.snow_percent == l2a_zip.snow_percent
    assert product.geoposition == {"R1": (300000.0, 4800000.0, 10.0, -10.0, 256, 256),
                                   "R2": (300000.0, 4800000.0, 20.0, -20.0, 128, 128)}
    assert len(product.rasters) == 32  # FRE and SRE × 10, ATB and 5 masks × 2 groups
    for key, raster in product.rasters.items():
        with rasterio.open(raster.path) as ds:
            assert (raster.width, raster.height, raster.count, raster.dtype) == (ds.width, ds.height, ds.count,
                                                                                 ds.dtypes[0]), key
            assert raster.transform == tuple(ds.transform)[:6]
    assert product.rasters["FRE_B4"].group == "R1" and product.rasters["FRE_B11"].group == "R2"
    assert product.rasters["FRE_B4"].nodata == -10000
    assert product.rasters["CLM_R2"].path.parent.name == "MASKS"
    assert product.quicklook.name.endswith("_QKL_ALL.jpg")
    assert product.sun_zenith is not None and 0 < product.sun_zenith < 90
    assert set(product.view_angles) >= {"B2", "B4", "B11"}


def test_a_sub_tile_roi_of_any_even_size_is_read_from_its_files(tmp_path):
    from ingest.generate import generate_l2a

    made = generate_l2a(tmp_path, WHEN, "32ULV", seed=1, size=300, as_zip=False)
    product = read_l2a(extract(delivery(made.path), tmp_path / "work"))
    assert product.tile == "32ULV" and product.epsg == 32632
    assert product.rasters["FRE_B2"].width == 300 and product.rasters["FRE_B12"].width == 150
    assert product.geoposition["R2"][4:] == (150, 150)


def test_a_folder_is_used_in_place_and_a_wrapping_folder_is_looked_through(l2a_dir, tmp_path):
    assert extract(delivery(l2a_dir.path), tmp_path / "unused") == l2a_dir.path
    assert not (tmp_path / "unused").exists()
    wrapper = tmp_path / "upload"
    shutil.copytree(l2a_dir.path, wrapper / l2a_dir.product_id)
    assert read_l2a(extract(delivery(wrapper), tmp_path / "w")).product_id == l2a_dir.product_id


def test_a_zip_without_top_folder_is_unpacked_under_its_own_name(l2a_dir, tmp_path):
    flat = tmp_path / f"{l2a_dir.product_id}.zip"
    with zipfile.ZipFile(flat, "w") as zf:
        for p in l2a_dir.path.rglob("*"):
            zf.write(p, p.relative_to(l2a_dir.path).as_posix())
    root = extract(delivery(flat), tmp_path / "work")
    assert root == tmp_path / "work" / l2a_dir.product_id
    assert read_l2a(root).product_id == l2a_dir.product_id


@pytest.mark.parametrize("letter", ["C", "D"])
def test_c_and_d_letters_are_accepted(product_copy, letter):
    """Theia's `_D_` zips hold `_C_` folders (products.md §1.1): the letter alone is no disagreement."""
    renamed = product_copy.with_name(product_copy.name.replace("_C_V", f"_{letter}_V"))
    product_copy.rename(renamed)
    product = read_l2a(renamed)
    assert product.extra["letter"] == letter
    assert product.product_id.endswith("_C_V1-0")  # the MTD's PRODUCT_ID


# ------------------------------------------------------------------------------------------------ the zip


def test_not_a_zip(tmp_path):
    fake = tmp_path / "SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V1-0.zip"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert refused(fake) == "not a zip archive: it looks like a PNG file"
    fake.write_bytes(b"")
    assert refused(fake) == "not a zip archive: the file is empty (0 bytes)"


def test_corrupt_zip_cut_short(l2a_zip, tmp_path):
    cut = tmp_path / l2a_zip.path.name
    cut.write_bytes(l2a_zip.path.read_bytes()[: l2a_zip.path.stat().st_size // 2])
    assert refused(cut) == "corrupt zip: File is not a zip file"
    assert not (tmp_path / "work").exists()


def test_corrupt_zip_with_a_damaged_member(l2a_zip, tmp_path):
    bad = tmp_path / l2a_zip.path.name
    shutil.copy(l2a_zip.path, bad)
    with zipfile.ZipFile(bad) as zf:
        member = next(i for i in zf.infolist() if i.filename.endswith("_FRE_B4.tif"))
    with bad.open("r+b") as f:  # stored members: flip bytes in the middle of the data
        f.seek(member.header_offset + 30 + len(member.filename.encode()) + member.file_size // 2)
        f.write(b"\xde\xad\xbe\xef")
    assert refused(bad) == f"corrupt zip: Bad CRC-32 for file '{member.filename}'"
    assert not (tmp_path / "work").exists()  # what was unpacked before the fault is removed


@pytest.mark.parametrize("entry, why", [
    ("../evil.txt", "points outside the product folder"),
    ("P/../../evil.txt", "points outside the product folder"),
    ("/tmp/evil.txt", "is an absolute path"),
    ("link", "is a symbolic link"),
])
def test_zip_slip_entries_are_refused_before_anything_is_written(tmp_path, entry, why):
    bad = tmp_path / "in" / "SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V1-0.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("P/first.txt", b"harmless, listed before the bad entry")
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd" if entry == "link" else b"pwned")
    work = tmp_path / "work"
    assert refused(bad, work) == f"zip-slip entry refused: {entry!r} {why}"
    assert not work.exists()
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_empty_folder(tmp_path):
    empty = tmp_path / "SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V1-0"
    empty.mkdir()
    assert refused(empty) == "empty folder: the delivery contains no files"


def test_empty_zip(tmp_path):
    bad = tmp_path / "x.zip"
    zipfile.ZipFile(bad, "w").close()
    assert refused(bad) == "empty zip archive (no entries)"


# ------------------------------------------------------------------------------------------------ the MTD


def test_missing_mtd(product_copy):
    next(product_copy.glob("*_MTD_ALL.xml")).unlink()
    assert refused(product_copy) == f"missing {product_copy.name}_MTD_ALL.xml (the product's metadata)"


def test_malformed_xml_names_line_and_column(product_copy):
    mtd = next(product_copy.glob("*_MTD_ALL.xml"))
    lines = mtd.read_text().splitlines()
    lines[5] += "<a></b>"  # line 6: a mismatched closing tag
    mtd.write_text("\n".join(lines))
    column = lines[5].index("</b>") + 3  # 1-based, at the tag name, as expat reports it
    assert refused(product_copy) == f"malformed XML in {mtd.name}: mismatched tag at line 6, column {column}"


def test_a_missing_mtd_field_is_named(product_copy):
    edit_mtd(product_copy, "<PRODUCTION_DATE>", "<PRODUCTION_DAY>")
    edit_mtd(product_copy, "</PRODUCTION_DATE>", "</PRODUCTION_DAY>")
    assert refused(product_copy) == (f"{product_copy.name}_MTD_ALL.xml: Product_Characteristics/PRODUCTION_DATE "
                                     "is missing")


# ------------------------------------------------------------------------------------------------ rasters


def test_missing_band_file(product_copy):
    files(product_copy)["FRE_B8A.tif"].unlink()
    assert refused(product_copy) == f"missing band file: {product_copy.name}_FRE_B8A.tif"


def test_missing_mask_files_are_all_named(product_copy):
    for name in ("CLM_R1.tif", "EDG_R2.tif"):
        files(product_copy)[name].unlink()
    assert refused(product_copy) == (f"missing band files: MASKS/{product_copy.name}_CLM_R1.tif, "
                                     f"MASKS/{product_copy.name}_EDG_R2.tif")


@pytest.mark.parametrize("name", ["SRE_B4.tif", "CLM_R1.tif"])
def test_truncated_tiff(product_copy, name):
    path = files(product_copy)[name]
    size = path.stat().st_size
    os.truncate(path, size * 2 // 3)
    rel = path.relative_to(product_copy).as_posix()
    reason = refused(product_copy)
    assert reason.startswith(f"truncated TIFF {rel}: the file has {size * 2 // 3} bytes, its image data needs ")
    assert int(reason.rsplit(" ", 1)[1]) == size  # GDAL wrote the last block at the very end


def test_truncated_inside_the_tiff_directory(product_copy):
    path = files(product_copy)["FRE_B2.tif"]
    os.truncate(path, 60)
    assert refused(product_copy).startswith(f"truncated TIFF {path.name}: the file has 60 bytes")


def test_truncated_bigtiff(product_copy):
    path = files(product_copy)["FRE_B12.tif"]
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read()
    with rasterio.open(path, "w", **(profile | {"BIGTIFF": "YES"})) as ds:
        ds.write(data)
    assert path.read_bytes()[2:4] == b"+\x00"  # magic 43: BigTIFF
    os.truncate(path, path.stat().st_size - 1)
    assert refused(product_copy).startswith(f"truncated TIFF {path.name}: ")


def test_a_band_file_that_is_no_tiff(product_copy):
    path = files(product_copy)["SRE_B6.tif"]
    path.write_bytes(b"<?xml version='1.0'?><html/>")
    assert refused(product_copy) == f"{path.name} is not a TIFF file (it looks like an XML file)"


def test_raster_size_contradicting_the_metadata(product_copy):
    path = files(product_copy)["FRE_B5.tif"]
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read(1)
    with rasterio.open(path, "w", **(profile | {"width": 120, "height": 100})) as ds:
        ds.write(data[:100, :120], 1)
    assert refused(product_copy) == (f"raster size of {path.name} is 120×100 px but MTD Group_Geopositioning R2 "
                                     "says 128×128 (NCOLS×NROWS)")


def test_raster_size_in_the_metadata_contradicting_the_files(product_copy):
    edit_mtd(product_copy, "<NROWS>256</NROWS>", "<NROWS>10980</NROWS>")
    assert refused(product_copy) == (f"raster size of {product_copy.name}_FRE_B2.tif is 256×256 px but MTD "
                                     "Group_Geopositioning R1 says 256×10980 (NCOLS×NROWS)")


def test_file_crs_contradicting_the_tile(product_copy):
    path = files(product_copy)["FRE_B3.tif"]
    with rasterio.open(path, "r+") as ds:
        ds.crs = "EPSG:32632"
    assert refused(product_copy) == (f"CRS EPSG:32632 of {path.name} contradicts tile 31TCH "
                                     "(UTM zone 31 north is EPSG:32631)")


def test_metadata_crs_contradicting_the_tile(product_copy):
    edit_mtd(product_copy, "<HORIZONTAL_CS_CODE>32631<", "<HORIZONTAL_CS_CODE>32632<")
    assert refused(product_copy) == ("CRS EPSG:32632 in MTD HORIZONTAL_CS_CODE contradicts tile 31TCH "
                                     "(UTM zone 31 north is EPSG:32631)")


def test_tile_epsg_follows_zone_and_hemisphere():
    assert tile_epsg("31TCH") == 32631
    assert tile_epsg("32ULV") == 32632
    assert tile_epsg("55HBU") == 32755  # latitude band H: south
    assert tile_epsg("01NAA") == 32601  # band N is the first northern one


def test_geotransform_contradicting_the_metadata(product_copy):
    path = files(product_copy)["MG2_R2.tif"]
    with rasterio.open(path, "r+") as ds:
        ds.transform = rasterio.Affine(20, 0, 300020, 0, -20, 4800000)
    assert refused(product_copy) == (f"geotransform of MASKS/{path.name} (UL 300020, 4800000; pixel 20, -20) "
                                     "contradicts MTD Group_Geopositioning R2 (UL 300000, 4800000; pixel 20, -20)")


def test_all_nodata_product(product_copy):
    for name, path in files(product_copy).items():
        if name.startswith("FRE_"):
            with rasterio.open(path, "r+") as ds:
                ds.write(np.full((ds.height, ds.width), -10000, "int16"), 1)
    assert refused(product_copy) == "all-nodata product: every FRE band is entirely -10000 (no valid pixel)"


# ------------------------------------------------------------------------------------------------ names


def renamed(root: Path, old: str, new: str) -> Path:
    target = root.with_name(root.name.replace(old, new))
    root.rename(target)
    return target


def test_unknown_platform_in_the_name(product_copy):
    root = renamed(product_copy, "SENTINEL2B", "LANDSAT8")
    assert refused(root) == ("unknown platform 'LANDSAT8' in the product name "
                             "(expected one of SENTINEL2A, SENTINEL2B, SENTINEL2C)")


def test_unknown_level_in_the_name(product_copy):
    root = renamed(product_copy, "_L2A_", "_L1C_")
    assert refused(root) == "unknown level 'L1C' in the product name (expected L2A)"


def test_a_name_that_is_no_product_identifier(product_copy):
    root = renamed(product_copy, product_copy.name, "my_product")
    assert refused(root).startswith("folder name 'my_product' is not a MUSCATE product identifier")


def test_name_and_metadata_disagree_on_the_tile(product_copy):
    root = renamed(product_copy, "T31TCH", "T31TCJ")
    assert refused(root) == ("name and metadata disagree: product id "
                             f"{root.name.replace('_C_', '_?_')} in the name, "
                             f"{product_copy.name.replace('_C_', '_?_')} in MTD PRODUCT_ID; "
                             "tile 31TCJ in the name, 31TCH in MTD GEOGRAPHICAL_ZONE")


def test_name_and_metadata_disagree_on_the_date(product_copy):
    edit_mtd(product_copy, "<ACQUISITION_DATE>2024-03-10T10:40:21.123Z",
             "<ACQUISITION_DATE>2024-03-11T10:40:21.123Z")
    assert refused(product_copy) == ("name and metadata disagree: date 2024-03-10T10:40:21.123Z in the name, "
                                     "2024-03-11T10:40:21.123Z in MTD ACQUISITION_DATE")


def test_name_and_metadata_disagree_on_the_platform(product_copy):
    edit_mtd(product_copy, "<PLATFORM>SENTINEL2B<", "<PLATFORM>SENTINEL2A<")
    assert refused(product_copy) == ("name and metadata disagree: platform SENTINEL2B in the name, "
                                     "SENTINEL2A in MTD PLATFORM")


def test_every_fault_message_starts_with_the_delivery_name(product_copy):
    next(product_copy.glob("*_MTD_ALL.xml")).unlink()
    with pytest.raises(InvalidDelivery) as info:
        read_l2a(product_copy)
    assert str(info.value).startswith(f"{product_copy.name}: missing ")
    assert info.value.fix

"""The synthetic MUSCATE L2A generator: layout, metadata, georeferencing, masks, spectra and truth (products.md
§1, §6). Everything is read back from the files, the MTD parsed independently, as an ingest reader would."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
import zipfile
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio

from ingest.generate import generate_l2a, generate_series, product_id
from ingest.synthetic.grid import tile_grid
from ingest.synthetic.spectra import BANDS, BANDS_R1, BANDS_R2, FRESH_SNOW, ROCK, THIN_SNOW, VEGETATION, WATER

WHEN = datetime(2024, 2, 10, 10, 40, 12, 345000, tzinfo=timezone.utc)
ID_PATTERN = re.compile(r"^(SENTINEL2[AB])_(\d{8})-(\d{6})-(\d{3})_L2A_T(\d{2}[A-Z]{3})_C_V(\d+)-(\d+)$")
SIZE = 512


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory):
    """One zipped product with clouds and a swath edge, extracted next to the zip for reading."""
    out = tmp_path_factory.mktemp("gen")
    made = generate_l2a(out, "31TCH", WHEN, seed=7, size=SIZE, cloud_cover=0.35, swath_edge=True)
    with zipfile.ZipFile(made.path) as zf:
        zf.extractall(out / "x")
    return made, out / "x" / made.product_id


def read(folder: Path, name: str, band: int = 1) -> np.ndarray:
    with rasterio.open(folder / name) as ds:
        return ds.read(band)


def f(pid: str, suffix: str) -> str:
    return f"MASKS/{pid}_{suffix}.tif" if suffix[:3] in ("CLM", "MG2", "SAT", "EDG", "IAB") else f"{pid}_{suffix}.tif"


def test_identifier_follows_the_muscate_pattern(product) -> None:
    made, _ = product
    m = ID_PATTERN.match(made.product_id)
    assert m, made.product_id
    assert m.groups()[1:5] == ("20240210", "104012", "345", "31TCH")
    assert (m[6], m[7]) == ("1", "0")
    assert made.path.name == f"{made.product_id}.zip"
    assert product_id("SENTINEL2B", WHEN, "T32UPV", "2.3") == "SENTINEL2B_20240210-104012-345_L2A_T32UPV_C_V2-3"


def test_zip_holds_one_top_folder_with_masks(product) -> None:
    made, _ = product
    pid = made.product_id
    names = zipfile.ZipFile(made.path).namelist()
    assert {n.split("/")[0] for n in names} == {pid}
    expected = {f"{pid}/{f(pid, f'{kind}_{b}')}" for kind in ("FRE", "SRE") for b in BANDS}
    expected |= {f"{pid}/{f(pid, f'{m}_{g}')}" for m in ("ATB", "CLM", "MG2", "SAT", "EDG", "IAB") for g in ("R1", "R2")}
    expected |= {f"{pid}/{pid}_QKL_ALL.jpg", f"{pid}/{pid}_MTD_ALL.xml"}
    assert expected <= set(names)
    assert f"{pid}/MASKS/" in names
    assert all(n.startswith(f"{pid}/MASKS/") for n in names if "_CLM_" in n or "_EDG_" in n)


def test_same_seed_same_bytes_other_seed_other_bytes(product, tmp_path: Path) -> None:
    made, folder = product
    again = generate_l2a(tmp_path / "a", "31TCH", WHEN, seed=7, size=SIZE, cloud_cover=0.35, swath_edge=True)
    other = generate_l2a(tmp_path / "b", "31TCH", WHEN, seed=8, size=SIZE, cloud_cover=0.35, swath_edge=True)
    assert again.path.read_bytes() == made.path.read_bytes()
    band = f"{made.product_id}/{made.product_id}_FRE_B4.tif"
    assert zipfile.ZipFile(other.path).read(band) != (folder / f"{made.product_id}_FRE_B4.tif").read_bytes()


def test_mtd_sizes_and_geometry_match_the_files(product) -> None:
    made, folder = product
    pid = made.product_id
    root = ET.parse(folder / f"{pid}_MTD_ALL.xml").getroot()
    assert root.tag == "Muscate_Metadata_Document"
    assert root.findtext("Product_Characteristics/PRODUCT_ID") == pid
    assert root.findtext("Product_Characteristics/ACQUISITION_DATE") == "2024-02-10T10:40:12.345Z"
    assert root.findtext("Product_Characteristics/PRODUCT_VERSION") == "1.0"
    assert root.findtext("Product_Characteristics/PLATFORM") == pid.split("_")[0]
    assert root.findtext("Dataset_Identification/IDENTIFIER") == pid.rsplit("_V", 1)[0]
    assert root.find("Dataset_Identification/GEOGRAPHICAL_ZONE[@type='Tile']").text == "T31TCH"
    assert root.findtext("Geoposition_Informations/Coordinate_Reference_System/Horizontal_Coordinate_System/"
                         "HORIZONTAL_CS_CODE") == "32631"
    shapes = {}
    for group, bands in (("R1", BANDS_R1), ("R2", BANDS_R2)):
        geo = root.find(f".//Group_Geopositioning[@group_id='{group}']")
        nrows, ncols = int(geo.findtext("NROWS")), int(geo.findtext("NCOLS"))
        ulx, uly = float(geo.findtext("ULX")), float(geo.findtext("ULY"))
        xdim, ydim = float(geo.findtext("XDIM")), float(geo.findtext("YDIM"))
        names = [f(pid, f"{k}_{b}") for k in ("FRE", "SRE") for b in bands]
        names += [f(pid, f"{m}_{group}") for m in ("ATB", "CLM", "MG2", "SAT", "EDG", "IAB")]
        for name in names:
            with rasterio.open(folder / name) as ds:
                assert (ds.height, ds.width) == (nrows, ncols), name
                assert (ds.transform.c, ds.transform.f, ds.transform.a, ds.transform.e) == (ulx, uly, xdim, ydim)
        shapes[group] = (nrows, ncols)
    assert shapes["R1"] == (SIZE, SIZE) and shapes["R1"] == tuple(2 * v for v in shapes["R2"])
    listed = [e.text for e in root.iter() if e.tag in ("IMAGE_FILE", "MASK_FILE", "QUICKLOOK")]
    assert listed and all((folder / rel).is_file() for rel in listed)
    images = {i.findtext("Image_Properties/NATURE"): i for i in root.iter("Image")}
    masks = {m.findtext("Mask_Properties/NATURE"): m for m in root.iter("Mask")}
    assert images["Flat_Reflectance"].find(".//IMAGE_FILE[@band_id='B11']").text == f(pid, "FRE_B11")
    assert images["Aerosol_Optical_Thickness"].find(".//IMAGE_FILE[@group_id='R2']").get("band_number") == "2"
    cloud_bit = masks["Cloud"].find(".//MASK_FILE[@group_id='R2']")
    assert (cloud_bit.text, cloud_bit.get("bit_number")) == (f(pid, "MG2_R2"), "2")
    assert masks["Detailed_Cloud"].find(".//MASK_FILE[@group_id='R1']").text == f(pid, "CLM_R1")
    assert float(root.findtext(".//Sun_Angles/ZENITH_ANGLE")) == pytest.approx(61.5, abs=2)
    assert len(root.findall(".//Mean_Viewing_Incidence_Angle")) == len(BANDS)
    assert root.findtext("Radiometric_Informations/REFLECTANCE_QUANTIFICATION_VALUE") == "10000"
    assert root.find(".//SPECIAL_VALUE[@name='nodata']").text == "-10000"


def test_georeferencing_on_the_tile_corner(product) -> None:
    made, folder = product
    with rasterio.open(folder / f(made.product_id, "FRE_B2")) as ds:
        assert ds.crs.to_epsg() == 32631
        assert (ds.transform.c, ds.transform.f) == (300000, 4800000)
        assert ds.res == (10, 10) and ds.nodata == -10000 and ds.dtypes[0] == "int16"
    for tile, epsg, ul in (("T31TCJ", 32631, (300000, 4900020)), ("32UPV", 32632, (600000, 5500020)),
                           ("30TYN", 32630, (699960, 4800000))):
        grid = tile_grid(tile)
        assert (grid.epsg, grid.ulx, grid.uly) == (epsg, *ul)
    with pytest.raises(ValueError, match="not a Sentinel-2 tile"):
        tile_grid("31TCI")


def test_values_in_range_and_nodata_exactly_on_the_edge(product) -> None:
    made, folder = product
    pid = made.product_id
    for group, bands in (("R1", BANDS_R1), ("R2", BANDS_R2)):
        edge = read(folder, f(pid, f"EDG_{group}")) == 1
        assert 0.05 < edge.mean() < 0.6
        for kind in ("FRE", "SRE"):
            for b in bands:
                data = read(folder, f(pid, f"{kind}_{b}"))
                assert (data[edge] == -10000).all()
                assert data[~edge].min() >= -200 and data[~edge].max() <= 15000
        for band in (1, 2):
            atb = read(folder, f(pid, f"ATB_{group}"), band)
            assert (atb[edge] == 0).all() and (atb[~edge] > 0).all()
        for mask in ("CLM", "MG2", "SAT", "IAB"):
            assert (read(folder, f(pid, f"{mask}_{group}"))[edge] == 0).all()
    aot = read(folder, f(pid, "ATB_R2"), 2)[~edge] / 200
    assert 0.005 < aot.min() and aot.max() < 1.3


def test_mask_bits_are_consistent(product) -> None:
    made, folder = product
    pid = made.product_id
    clm2 = read(folder, f(pid, "CLM_R2"))
    for group in ("R1", "R2"):
        clm, mg2 = read(folder, f(pid, f"CLM_{group}")), read(folder, f(pid, f"MG2_{group}"))
        bit = lambda a, i: (a >> i) & 1  # noqa: E731
        assert (bit(clm, 0) == (bit(clm, 1) | bit(clm, 5) | bit(clm, 6))).all()
        assert (bit(mg2, 1) == bit(clm, 1)).all()
        assert (bit(mg2, 3) == (bit(clm, 5) | bit(clm, 6))).all()
        assert not (bit(clm, 4) & ~bit(clm, 1) & 1).any() and not (bit(clm, 7) & ~bit(clm, 1) & 1).any()
        assert bit(clm, 1).any() and bit(clm, 5).any()
    clm1 = read(folder, f(pid, "CLM_R1"))
    assert (clm1[::2, ::2] == clm2).all() and (clm1[1::2, 1::2] == clm2).all()


def test_truth_sidecar_and_dem(product) -> None:
    made, _ = product
    with rasterio.open(made.truth_path) as truth, rasterio.open(made.dem_path) as dem:
        assert truth.descriptions == ("snow", "cloud", "shadow", "water", "class")
        assert (truth.height, truth.width) == (SIZE // 2, SIZE // 2) and truth.transform.a == 20
        assert truth.crs.to_epsg() == 32631 and dem.crs.to_epsg() == 32631
        snow, cloud, shadow, water, classes = truth.read()
        z = dem.read(1)
    assert dem.dtypes[0] == "int16" and 200 <= z.min() and z.max() <= 3500 and z.max() > 3000
    assert water.any() and not (snow & water).any()
    assert (water == (classes == WATER)).all()
    assert snow.any() and cloud.any() and shadow.any() and not (shadow & cloud).any()
    assert z[snow == 1].mean() > z[snow == 0].mean() + 500


def test_class_spectra_pass_the_snow_tests_they_are_made_for(product) -> None:
    made, folder = product
    pid = made.product_id
    with rasterio.open(made.truth_path) as truth:
        _, cloud, shadow, _, classes = truth.read()
    clear = (cloud == 0) & (shadow == 0) & (read(folder, f(pid, "CLM_R2")) == 0)
    clear &= read(folder, f(pid, "EDG_R2")) == 0
    green = read(folder, f(pid, "FRE_B3"))[::2, ::2] / 1e4
    red = read(folder, f(pid, "FRE_B4"))[::2, ::2] / 1e4
    swir = read(folder, f(pid, "FRE_B11")) / 1e4
    ndsi = (green - swir) / (green + swir)
    fresh, thin = clear & (classes == FRESH_SNOW), clear & (classes == THIN_SNOW)
    assert fresh.sum() > 100 and thin.sum() > 10
    assert (ndsi[fresh] > 0.4).all() and (red[fresh] > 0.2).all()
    assert (ndsi[thin] > 0.15).all() and (ndsi[thin] < 0.4).all() and (red[thin] > 0.04).all()
    land = clear & np.isin(classes, (VEGETATION, ROCK))
    assert (ndsi[land] < 0).all()
    lake = clear & (classes == WATER)
    assert (red[lake] < 0.04).all()


def test_cloud_and_snow_percent_in_the_mtd(product) -> None:
    made, folder = product
    pid = made.product_id
    root = ET.parse(folder / f"{pid}_MTD_ALL.xml").getroot()
    index = {q.get("name"): q.text for q in root.iter("QUALITY_INDEX")}
    valid = read(folder, f(pid, "EDG_R2")) == 0
    cloud = (read(folder, f(pid, "CLM_R2")) & 1)[valid].mean() * 100
    snow = ((read(folder, f(pid, "MG2_R2")) >> 2) & 1)[valid].mean() * 100
    assert int(index["CloudPercent"]) == math.floor(cloud + 0.5) == made.cloud_percent
    assert int(index["SnowPercent"]) == math.floor(snow + 0.5) == made.snow_percent
    assert 20 < made.cloud_percent < 80


def test_quicklook_is_a_small_rgb_jpeg(product) -> None:
    made, folder = product
    with rasterio.open(folder / f"{made.product_id}_QKL_ALL.jpg") as ds:
        assert ds.driver == "JPEG" and ds.count == 3 and ds.width == SIZE and ds.height == SIZE
        rgb = ds.read()
    edge = read(folder, f(made.product_id, "EDG_R1")) == 1
    assert rgb.max() == 255  # clouds saturate the 0-0.30 stretch
    assert (rgb.max(axis=0)[edge] < 20).mean() > 0.95  # outside the swath is black


def test_overcast_date_and_series(tmp_path: Path) -> None:
    made = generate_series(tmp_path, "31TCH", date(2024, 7, 1), date(2024, 7, 11), 5, size=128, as_zip=False,
                           overcast={date(2024, 7, 6)})
    assert [p.platform for p in made] == ["SENTINEL2A", "SENTINEL2B", "SENTINEL2A"]
    assert [p.acquired.date() for p in made] == [date(2024, 7, 1), date(2024, 7, 6), date(2024, 7, 11)]
    assert all(10 * 60 + 30 <= p.acquired.hour * 60 + p.acquired.minute < 10 * 60 + 50 for p in made)
    assert made[1].cloud_percent == 100 and made[1].path.is_dir()
    assert len({p.dem_path for p in made}) == 1


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        generate_l2a(tmp_path, "31TCH", WHEN, size=255)
    with pytest.raises(ValueError, match="platform"):
        generate_l2a(tmp_path, "31TCH", WHEN, size=128, platform="LANDSAT8")
    with pytest.raises(ValueError, match="version"):
        generate_l2a(tmp_path, "31TCH", WHEN, size=128, version="one")
    assert not list(tmp_path.iterdir())


def test_cli_prints_one_line_per_product(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from processing.cli import app

    result = CliRunner().invoke(app, ["generate", "--out", str(tmp_path), "--start", "2024-03-01", "--end",
                                      "2024-03-06", "--size", "128", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[0].endswith(".zip") for line in lines)
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == sorted(Path(line.split()[0]).name for line in lines)

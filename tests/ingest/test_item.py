"""The STAC item of an L2A product: properties from the MTD, a grid per asset, full asset definitions."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from pystac import STACObjectType
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from shapely.geometry import Point, box, shape

from catalog import __version__
from catalog.collections import COLLECTIONS, S2_L2A
from ingest.cog import write_cogs
from ingest.item import EXTENSIONS, build_item
from ingest.muscate import read_l2a
from tests.ingest.conftest import WHEN

NOW = datetime(2024, 3, 12, 8, 0, tzinfo=timezone.utc)


def href(key: str) -> str:
    return f"https://data.example/download/{key}"


@pytest.fixture(scope="module")
def product(l2a_dir):
    return read_l2a(l2a_dir.path)


@pytest.fixture(scope="module")
def cogs(product, tmp_path_factory):
    return write_cogs(product, tmp_path_factory.mktemp("staging") / "p")


@pytest.fixture(scope="module")
def item(product, cogs) -> dict:
    return build_item(product, cogs, href, now=NOW).to_dict(include_self_link=False, transform_hrefs=False)


def mtd_value(product, xpath: str) -> str:
    return ET.parse(product.metadata_file).getroot().findtext(xpath).strip()


def test_it_validates_against_the_stac_core_schema_offline(item):
    JsonSchemaSTACValidator().validate_core(item, STACObjectType.ITEM, "1.1.0")
    assert item["stac_version"] == "1.1.0"
    assert item["collection"] == S2_L2A
    assert {"rel": "collection", "href": f"../../{S2_L2A}", "type": "application/json"} in item["links"]


def test_properties(item, product, l2a_dir):
    p = item["properties"]
    assert item["id"] == l2a_dir.product_id
    assert p["datetime"] == "2024-03-10T10:40:21.123000Z" and WHEN == product.acquired
    assert (p["platform"], p["constellation"], p["instruments"]) == ("sentinel-2b", "sentinel-2", ["msi"])
    assert p["eo:cloud_cover"] == l2a_dir.cloud_percent and p["eo:snow_cover"] == l2a_dir.snow_percent
    assert p["grid:code"] == "MGRS-31TCH"
    assert (p["mgrs:utm_zone"], p["mgrs:latitude_band"], p["mgrs:grid_square"]) == (31, "T", "CH")
    assert p["proj:code"] == "EPSG:32631"
    assert p["processing:level"] == "L2A"
    assert p["processing:software"] == {"landsurf": __version__}
    assert p["processing:version"] == __version__
    produced = mtd_value(product, "Product_Characteristics/PRODUCTION_DATE")
    assert datetime.fromisoformat(p["processing:datetime"]) == datetime.fromisoformat(produced)
    assert p["version"] == "1.0"
    orbit = int(mtd_value(product, "Product_Characteristics/ORBIT_NUMBER"))
    assert p.get("sat:relative_orbit", p.get("sat:absolute_orbit")) == orbit
    zenith = float(mtd_value(product, "Geometric_Informations/Mean_Value_List/Sun_Angles/ZENITH_ANGLE"))
    assert p["view:sun_elevation"] == pytest.approx(90 - zenith)
    assert p["view:sun_azimuth"] == pytest.approx(
        float(mtd_value(product, "Geometric_Informations/Mean_Value_List/Sun_Angles/AZIMUTH_ANGLE")))
    assert 0 <= p["view:incidence_angle"] < 15
    assert p["created"] == p["updated"] == "2024-03-12T08:00:00Z"
    assert set(item["stac_extensions"]) == set(EXTENSIONS.values())


def test_each_asset_carries_its_full_definition_href_file_and_grid(item, cogs):
    definitions = COLLECTIONS[S2_L2A].item_assets
    assert set(item["assets"]) == set(cogs.files)
    for key, asset in item["assets"].items():
        definition = definitions[key]
        assert asset["href"] == href(key)
        assert asset["type"] == definition["type"]
        for field, value in definition.items():
            if field != "type":
                assert asset[field] == value, (key, field)
        assert asset["file:size"] == cogs.files[key].path.stat().st_size
        assert asset["file:checksum"] == "1220" + hashlib.sha256(cogs.files[key].path.read_bytes()).hexdigest()
    fre = item["assets"]["FRE_B4"]
    assert fre["raster:bands"][0]["nodata"] == -10000 and fre["raster:bands"][0]["scale"] == 0.0001
    assert item["assets"]["thumbnail"]["roles"] == ["thumbnail", "overview"]
    assert item["assets"]["metadata"]["type"] == "application/xml"


def test_r1_and_r2_assets_have_their_own_grid(item, cogs):
    for key in ("FRE_B4", "SRE_B11", "CLM_R1", "ATB_R2"):
        asset = item["assets"][key]
        with rasterio.open(cogs.files[key].path) as ds:
            assert asset["proj:shape"] == [ds.height, ds.width]
            assert asset["proj:transform"] == list(ds.transform)[:6]
            assert asset["proj:bbox"] == list(ds.bounds)
    assert item["assets"]["FRE_B4"]["proj:shape"] == [256, 256]
    assert item["assets"]["FRE_B11"]["proj:shape"] == [128, 128]
    assert item["assets"]["FRE_B4"]["proj:transform"] == [10, 0, 300000, 0, -10, 4800000]
    assert item["assets"]["CLM_R2"]["proj:transform"] == [20, 0, 300000, 0, -20, 4800000]
    assert "proj:shape" not in item["assets"]["thumbnail"]


def test_the_footprint_holds_every_valid_pixel_and_leaves_out_the_swath_edge(item, product):
    geometry = shape(item["geometry"])
    with rasterio.open(product.rasters["EDG_R2"].path) as ds:
        edge = ds.read(1)
        rows, cols = np.nonzero(edge == 0)
        xs, ys = rasterio.transform.xy(ds.transform, rows, cols)
        extent = box(*ds.bounds)
    assert edge.any(), "the fixture has a swath edge"
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(np.asarray(xs), np.asarray(ys))
    assert all(geometry.covers(Point(x, y)) for x, y in zip(lon, lat))
    to_ll = Transformer.from_crs(32631, 4326, always_xy=True)
    tile_extent = shape({"type": "Polygon", "coordinates": [[to_ll.transform(x, y)
                                                             for x, y in extent.exterior.coords]]})
    assert geometry.area < 0.97 * tile_extent.area  # the no-data triangle is outside
    assert item["bbox"] == list(geometry.bounds)
    assert geometry.exterior.is_ccw  # RFC 7946 ring orientation


def test_a_product_without_edge_data_gets_its_raster_extent(l2a_zip, tmp_path):
    from ingest.model import Delivery
    from ingest.muscate import extract

    product = read_l2a(extract(Delivery(l2a_zip.path, l2a_zip.path.name, "", 0), tmp_path / "w"))
    with rasterio.open(product.rasters["EDG_R2"].path, "r+") as ds:
        ds.write(np.zeros((ds.height, ds.width), "uint8"), 1)
    cogs = write_cogs(product, tmp_path / "s")
    geometry = shape(build_item(product, cogs, href).geometry)
    to_ll = Transformer.from_crs(32631, 4326, always_xy=True)
    for x, y in ((300000, 4800000), (302560, 4800000), (302560, 4797440), (300000, 4797440)):
        assert geometry.distance(Point(*to_ll.transform(x, y))) < 1e-6  # corners, to the 7th decimal
    assert len(geometry.exterior.coords) > 5  # densified edges


def test_hrefs_come_from_the_caller(product, cogs):
    built = build_item(product, cogs, lambda key: f"s3://bucket/{key}.tif",
                       collection_href="https://data.example/collections/sentinel2-l2a")
    assert built.assets["CLM_R2"].href == "s3://bucket/CLM_R2.tif"
    assert built.get_single_link("collection").href == "https://data.example/collections/sentinel2-l2a"

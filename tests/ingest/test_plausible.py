"""Plausible products: dates a Sentinel-2 could have sensed, a delivery name that names its content, rasters on
the tile they claim. Each refusal names the field."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest import receipts
from ingest.errors import InvalidDelivery
from ingest.generate import generate_l2a
from ingest.inbox import take
from ingest.muscate import check_delivery_name, read_l2a
from ingest.pipeline import process
from ingest.settings import IngestSettings


def reason_of(root: Path, now: datetime | None = None) -> str:
    with pytest.raises(InvalidDelivery) as info:
        read_l2a(root, now=now)
    return info.value.reason


@pytest.mark.parametrize("platform,when,launch", [
    ("SENTINEL2A", datetime(2015, 6, 1, 10, 40, tzinfo=timezone.utc), "2015-06-23"),
    ("SENTINEL2B", datetime(2016, 12, 1, 10, 40, tzinfo=timezone.utc), "2017-03-07"),
])
def test_acquired_before_the_platform_was_launched(tmp_path, platform, when, launch):
    made = generate_l2a(tmp_path, "31TCH", when, size=64, platform=platform, as_zip=False)
    assert reason_of(made.path) == (f"acquisition date {when:%Y-%m-%dT%H:%M:%S}.000Z (MTD ACQUISITION_DATE) is "
                                    f"before {platform}'s launch on {launch}")


def test_acquired_in_the_future(tmp_path):
    made = generate_l2a(tmp_path, "31TCH", datetime(2099, 1, 1, 10, 40, tzinfo=timezone.utc), size=64,
                        as_zip=False)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert reason_of(made.path, now) == ("acquisition date 2099-01-01T10:40:00.000Z (MTD ACQUISITION_DATE) is in the "
                                         "future (now 2026-01-01T00:00:00.000Z)")


def test_a_day_of_clock_skew_is_tolerated_and_the_first_days_after_launch_are_accepted(tmp_path):
    when = datetime(2025, 5, 1, 10, 40, tzinfo=timezone.utc)
    made = generate_l2a(tmp_path / "a", "31TCH", when, size=64, as_zip=False)
    assert read_l2a(made.path, now=when - timedelta(hours=20)).acquired == when
    early = datetime(2015, 6, 29, 10, 40, tzinfo=timezone.utc)
    made = generate_l2a(tmp_path / "b", "31TCH", early, size=64, platform="SENTINEL2A", as_zip=False)
    assert read_l2a(made.path).acquired == early


def test_produced_before_acquired(tmp_path):
    when = datetime(2024, 3, 10, 10, 40, tzinfo=timezone.utc)
    made = generate_l2a(tmp_path, "31TCH", when, size=64, as_zip=False, production=when - timedelta(days=3))
    assert reason_of(made.path) == ("production date 2024-03-07T10:40:00.000Z (MTD PRODUCTION_DATE) is before the "
                                    "acquisition date 2024-03-10T10:40:00.000Z")


def test_rasters_georeferenced_on_another_tile(tmp_path):
    """A product of 31TCJ relabelled 31TCH everywhere (names, MTD): its rasters still lie 100 km north."""
    made = generate_l2a(tmp_path / "gen", "31TCJ", datetime(2024, 3, 10, 10, 40, tzinfo=timezone.utc), size=64,
                        as_zip=False)
    root = tmp_path / made.path.name.replace("T31TCJ", "T31TCH")
    shutil.copytree(made.path, root)
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if "T31TCJ" in p.name:
            p.rename(p.with_name(p.name.replace("T31TCJ", "T31TCH")))
    mtd = next(root.glob("*_MTD_ALL.xml"))
    mtd.write_text(mtd.read_text().replace("T31TCJ", "T31TCH"))
    reason = reason_of(root)
    assert reason.startswith(f"{root.name}_FRE_B2.tif lies outside tile 31TCH: its extent (300000, 4899380, "
                             "300640, 4900020) is not within the tile's (300000, 4690200, 409800, 4800000)"), reason

# ------------------------------------------------------------------------------------------- delivery names


@pytest.fixture(scope="module")
def product(l2a_dir):
    return read_l2a(l2a_dir.path)  # SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V1-0


@pytest.mark.parametrize("name,field", [
    ("SENTINEL2B_20240310-104021-123_L2A_T31TCJ_C_V1-0.zip",
     "tile 31TCJ in the delivery name, 31TCH in the product (MTD GEOGRAPHICAL_ZONE)"),
    ("SENTINEL2A_20240310-104021-123_L2A_T31TCH_C_V1-0.zip",
     "platform SENTINEL2A in the delivery name, SENTINEL2B in the product (MTD PLATFORM)"),
    ("SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V2-0.zip",
     "version 2.0 in the delivery name, 1.0 in the product (MTD PRODUCT_VERSION)"),
    ("SENTINEL2B_20240311-104021-123_L2A_T31TCH_C_V1-0.zip",
     "date 2024-03-11T10:40:21.123Z in the delivery name, 2024-03-10T10:40:21.123Z in the product "
     "(MTD ACQUISITION_DATE)"),
])
def test_a_delivery_named_for_another_product(product, name, field):
    with pytest.raises(InvalidDelivery) as info:
        check_delivery_name(name, product)
    assert info.value.reason == f"delivery name and product disagree: {field}"


@pytest.mark.parametrize("name", ["SENTINEL2B_20240310-104021-123_L2A_T31TCH_D_V1-0.zip",
                                  "SENTINEL2B_20240310-104021-123_L2A_T31TCH_C_V1-0.ZIP", "upload.zip", "batch-7"])
def test_names_that_agree_or_name_no_product(product, name):
    check_delivery_name(name, product)


def test_the_pipeline_quarantines_a_zip_named_for_another_tile(catalog_settings, factory_256, tmp_path):
    made = factory_256(seed=70)
    lying = tmp_path / made.path.name.replace("T31TCH", "T32ULV")
    shutil.copy(made.path, lying)
    settings = IngestSettings()
    outcome = process(catalog_settings, settings, take(catalog_settings, settings, lying).receipt_id)
    assert outcome.status == "quarantined"
    assert "tile 32ULV in the delivery name, 31TCH in the product (MTD GEOGRAPHICAL_ZONE)" in outcome.reason
    assert receipts.get(catalog_settings, outcome.receipt_id).reason == outcome.reason

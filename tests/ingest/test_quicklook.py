"""Producer-controlled files (issue 14, item 4): the quicklook is the producer's bytes under a name of the
producer's choosing. Hostile ones are quarantined with a reason, or published re-encoded with checksums that
verify — never served as they came, never written over a converted band."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile

from catalog.database import session
from ingest import receipts
from ingest.generate import generate_l2a
from ingest.inbox import take
from ingest.pipeline import process
from ingest.settings import IngestSettings
from tests.ingest.conftest import edit_mtd, published_item

BASE = datetime(2023, 11, 1, 10, 40, 21, 123000, tzinfo=timezone.utc)


@pytest.fixture
def hostile(tmp_path):
    """A folder delivery (one day per test) whose quicklook the test replaces."""
    counter = iter(range(1000))

    def make(seed: int) -> Path:
        made = generate_l2a(tmp_path / str(next(counter)), "31TCH", BASE + timedelta(days=seed - 300), seed=seed,
                            size=128, as_zip=False)
        return made.path

    return make


def run(catalog_settings, root: Path):
    settings = IngestSettings()
    return process(catalog_settings, settings, take(catalog_settings, settings, root).receipt_id)


def nothing_published(catalog_settings, product_id: str) -> None:
    with session(catalog_settings) as conn:
        assert conn.execute("SELECT count(*) FROM pgstac.items WHERE id = %s", (product_id,)).fetchone()[0] == 0
    assert not list(catalog_settings.store_dir.glob(f"*/*/*/*/{product_id}"))


@pytest.mark.parametrize("name,content,looks", [
    ("x.html", b"<html><script>alert(document.cookie)</script></html>", "it starts with bytes 3c 68 74 6d"),
    ("x.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
     "it looks like an XML file"),
])
def test_a_quicklook_that_is_a_web_page_is_quarantined(catalog_settings, hostile, name, content, looks):
    root = hostile(300 if name.endswith("html") else 301)
    (root / name).write_bytes(content)
    edit_mtd(root, f"{root.name}_QKL_ALL.jpg</QUICKLOOK>", f"{name}</QUICKLOOK>")
    outcome = run(catalog_settings, root)
    assert outcome.status == "quarantined"
    assert f"{root.name}: quicklook {name} is not a JPEG or PNG image: {looks} — " in outcome.reason
    nothing_published(catalog_settings, root.name)


def test_a_quicklook_named_after_a_band_is_quarantined_and_the_band_never_overwritten(catalog_settings, hostile):
    root = hostile(302)
    band = f"{root.name}_FRE_B2.tif"
    edit_mtd(root, f"{root.name}_QKL_ALL.jpg</QUICKLOOK>", f"{band}</QUICKLOOK>")
    outcome = run(catalog_settings, root)
    assert outcome.status == "quarantined"
    assert f": quicklook {band} is not a JPEG or PNG image: it looks like a TIFF file — " in outcome.reason
    nothing_published(catalog_settings, root.name)


def test_a_jpeg_with_a_page_appended_is_published_re_encoded(catalog_settings, hostile):
    root = hostile(303)
    qkl = root / f"{root.name}_QKL_ALL.jpg"
    qkl.write_bytes(qkl.read_bytes() + b"<html><script>alert(1)</script></html>")
    outcome = run(catalog_settings, root)
    assert outcome.status == "published", outcome.reason
    item = published_item(catalog_settings, root.name)  # every checksum verifies
    thumb = catalog_settings.store_dir / item["assets"]["thumbnail"]["href"]
    assert thumb.name == f"{root.name}_QKL_ALL.jpg" and item["assets"]["thumbnail"]["type"] == "image/jpeg"
    assert b"<script" not in thumb.read_bytes() and thumb.read_bytes().startswith(b"\xff\xd8\xff")


def test_a_png_quicklook_is_published_as_a_jpeg_under_the_fixed_name(catalog_settings, hostile):
    root = hostile(304)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 40, 50), dtype=np.uint8)  # RGBA
    with MemoryFile() as mem:
        with mem.open(driver="PNG", width=50, height=40, count=4, dtype="uint8") as ds:
            ds.write(pixels)
        (root / "preview.png").write_bytes(mem.read())
    (root / f"{root.name}_QKL_ALL.jpg").unlink()
    edit_mtd(root, f"{root.name}_QKL_ALL.jpg</QUICKLOOK>", "preview.png</QUICKLOOK>")
    outcome = run(catalog_settings, root)
    assert outcome.status == "published", outcome.reason
    item = published_item(catalog_settings, root.name)
    thumb = catalog_settings.store_dir / item["assets"]["thumbnail"]["href"]
    assert thumb.name == f"{root.name}_QKL_ALL.jpg"
    with rasterio.open(thumb) as ds:
        assert (ds.driver, ds.count, ds.width, ds.height) == ("JPEG", 3, 50, 40)
    assert not list(thumb.parent.glob("*.png"))


def test_a_truncated_jpeg_is_quarantined(catalog_settings, hostile):
    root = hostile(305)
    qkl = root / f"{root.name}_QKL_ALL.jpg"
    qkl.write_bytes(qkl.read_bytes()[:40])
    outcome = run(catalog_settings, root)
    assert outcome.status == "quarantined"
    assert f": quicklook {qkl.name} cannot be decoded as JPEG" in outcome.reason
    assert receipts.get(catalog_settings, outcome.receipt_id).status == "quarantined"
    nothing_published(catalog_settings, root.name)
    shutil.rmtree(root, ignore_errors=True)

"""Small synthetic MUSCATE L2A products for the reader, COG and item tests (real files, nothing mocked)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ingest.generate import GeneratedProduct, generate_l2a

WHEN = datetime(2024, 3, 10, 10, 40, 21, 123000, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def l2a_zip(tmp_path_factory) -> GeneratedProduct:
    """A 256-px product (R1; R2 128 px) zipped as `<ID>.zip` with one top folder."""
    return generate_l2a(tmp_path_factory.mktemp("l2a-zip"), WHEN, "31TCH", seed=3, size=256)


@pytest.fixture(scope="session")
def l2a_dir(tmp_path_factory) -> GeneratedProduct:
    """The same kind of product as a folder, with a swath edge (a triangle of no-data)."""
    return generate_l2a(tmp_path_factory.mktemp("l2a-dir"), WHEN, "31TCH", seed=3, size=256, as_zip=False,
                        swath_edge=True)


@pytest.fixture(scope="session")
def l2a_large(tmp_path_factory) -> GeneratedProduct:
    """1024 px: large enough for the COGs to carry internal overviews (blocks are 512 px)."""
    return generate_l2a(tmp_path_factory.mktemp("l2a-large"), WHEN, "31TCH", seed=4, size=1024, as_zip=False,
                        swath_edge=True)


@pytest.fixture
def product_copy(l2a_dir: GeneratedProduct, tmp_path: Path) -> Path:
    """A private copy of the folder product, for tests that damage it."""
    target = tmp_path / l2a_dir.path.name
    shutil.copytree(l2a_dir.path, target)
    return target


def edit_mtd(root: Path, old: str, new: str, count: int = 1) -> Path:
    """Replace text in the product's MTD (the file keeps its name); fails if `old` is not there."""
    mtd = next(root.glob("*_MTD_ALL.xml"))
    text = mtd.read_text()
    assert old in text, f"{old!r} not in {mtd.name}"
    mtd.write_text(text.replace(old, new, count))
    return mtd

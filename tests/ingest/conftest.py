"""Small synthetic MUSCATE L2A products for the reader, COG and item tests (real files, nothing mocked)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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


@pytest.fixture(scope="session")
def factory_256(tmp_path_factory):
    """Small zipped deliveries (256 px) on tile 31TCH, one day of 2023 per seed: seeds must differ between tests
    that publish into the session database (tests/ingest: 60-99 limits/plausibility, 100-199 inbox, 200-299
    recovery, 300-399 quicklooks, 400+ CLI)."""
    out = tmp_path_factory.mktemp("small-deliveries")

    def make(seed: int, when: datetime | None = None, version: str = "1-0", **kw) -> GeneratedProduct:
        when = when or datetime(2023, 1, 1, 10, 40, 21, 123000, tzinfo=timezone.utc) + timedelta(days=seed)
        return generate_l2a(out / f"{seed}-{version}-{when:%Y%m%d%H%M%S}", tile=kw.pop("tile", "31TCH"), when=when,
                            seed=seed, size=256, version=version, **kw)

    return make


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


@dataclass
class PrivateCatalog:
    """A catalog database of its own: for tests that stop PostgreSQL or kill workers, apart from the session's."""

    settings: "CatalogSettings"
    cluster: "EmbeddedCluster"

    def env(self, **extra: str) -> dict[str, str]:
        from tests.conftest import env_for

        return env_for(self.settings, **extra)


@pytest.fixture(scope="module")
def private_catalog():
    from catalog.embedded import EmbeddedCluster
    from processing.setup import prepare_database
    from tests.conftest import make_home, settings_for

    settings = settings_for(make_home("landsurf-ingest-"), statement_timeout_ms=5000, connect_timeout_s=2)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    try:
        prepare_database(settings)
        yield PrivateCatalog(settings, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(settings.home, ignore_errors=True)


def published_item(settings, product_id: str) -> dict:
    """The one item of `product_id` in the catalog, after checking that every asset's file is in the store with
    the size and multihash its item says."""
    from catalog.database import session
    from ingest.checksum import multihash

    with session(settings) as conn:
        rows = conn.execute("SELECT pgstac.get_item(id, collection) FROM pgstac.items WHERE id = %s",
                            (product_id,)).fetchall()
    assert len(rows) == 1, f"{product_id}: {len(rows)} items"
    item = rows[0][0]
    for key, asset in item["assets"].items():
        path = settings.store_dir / asset["href"]
        assert path.is_file(), (key, asset["href"])
        assert path.stat().st_size == asset["file:size"], key
        assert multihash(path) == asset["file:checksum"], key
    return item


def leftovers(settings, ingest_settings) -> list[str]:
    """Whatever a dead or finished attempt could leave behind: work/, staging, set-aside directories."""
    work = ingest_settings.work_dir(settings)
    staging = ingest_settings.staging_dir(settings)
    found = [str(p) for p in work.iterdir() if p.name != "done"] if work.exists() else []
    found += [str(p) for p in staging.iterdir()] if staging.exists() else []
    return found

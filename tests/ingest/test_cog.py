"""COG writing: valid COGs, lossless pixels, checksums of the bytes on disk, and a disk that fills up for real."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from catalog.collections import COG
from ingest.cog import cog_options, write_cogs
from ingest.errors import TransientIngestError
from ingest.muscate import read_l2a
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def large(l2a_large):
    return read_l2a(l2a_large.path)


@pytest.fixture(scope="module")
def cogs(large, tmp_path_factory):
    return write_cogs(large, tmp_path_factory.mktemp("staging") / "p")


def sha(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_valid_cog_per_band_and_mask_plus_quicklook_and_metadata(large, cogs):
    assert set(cogs.files) == set(large.rasters) | {"thumbnail", "metadata"}
    for key, raster in large.rasters.items():
        cog = cogs.files[key]
        assert cog.path == cogs.staging / f"{large.product_id}_{key}.tif"  # fixed names, MASKS/ flattened
        assert cog.path.name == raster.path.name  # the MUSCATE name, when the product follows the convention
        assert cog.media_type == COG
        valid, errors, warnings = cog_validate(str(cog.path), quiet=True)
        assert valid and not errors and not warnings, (key, errors, warnings)
    assert cogs.files["thumbnail"].media_type == "image/jpeg"
    assert cogs.files["metadata"].media_type == "application/xml"
    assert sorted(p.name for p in cogs.staging.iterdir()) == sorted(c.path.name for c in cogs.files.values())


def test_pixels_are_read_back_exactly(large, cogs):
    for key, raster in large.rasters.items():
        with rasterio.open(raster.path) as src, rasterio.open(cogs.files[key].path) as cog:
            assert np.array_equal(src.read(), cog.read()), key
            assert (cog.crs, cog.transform, cog.dtypes) == (src.crs, src.transform, src.dtypes)
            assert cog.nodata == raster.nodata


def test_checksums_and_sizes_are_those_of_the_files(large, cogs):
    for cog in cogs.files.values():
        assert cog.size == cog.path.stat().st_size
        assert cog.checksum == sha(cog.path)
    assert cogs.files["metadata"].path.read_bytes() == large.metadata_file.read_bytes()
    with rasterio.open(cogs.files["thumbnail"].path) as out, rasterio.open(large.quicklook) as src:
        assert out.driver == "JPEG" and (out.count, out.width, out.height) == (3, src.width, src.height)
        assert np.abs(out.read().astype(int) - src.read().astype(int)).mean() < 8  # re-encoded, same picture
    assert cogs.files["thumbnail"].path.name == f"{large.product_id}_QKL_ALL.jpg"


def test_layout_compression_and_overviews(cogs):
    with rasterio.open(cogs.files["FRE_B4"].path) as ds:
        assert ds.block_shapes == [(512, 512)]
        assert ds.overviews(1) == [2]  # 1024 px → one overview of 512
        assert ds.tags(ns="IMAGE_STRUCTURE").items() >= {"COMPRESSION": "DEFLATE", "PREDICTOR": "2",
                                                          "LAYOUT": "COG"}.items()
    with rasterio.open(cogs.files["CLM_R1"].path) as ds:
        assert "PREDICTOR" not in ds.tags(ns="IMAGE_STRUCTURE")
        overview = ds.read(1, out_shape=(512, 512))
        assert set(np.unique(overview)) <= set(np.unique(ds.read(1)))  # nearest: no invented bit patterns
    assert cog_options("FRE_B4")["RESAMPLING"] == "AVERAGE" and cog_options("CLM_R1")["RESAMPLING"] == "NEAREST"


def test_zstd(l2a_dir, tmp_path):
    product = read_l2a(l2a_dir.path)
    cogs = write_cogs(product, tmp_path / "z", compress="zstd")
    with rasterio.open(cogs.files["SRE_B8"].path) as ds, rasterio.open(product.rasters["SRE_B8"].path) as src:
        assert ds.compression.name == "zstd"
        assert np.array_equal(ds.read(), src.read())


def test_a_source_without_nodata_tag_gets_the_mtd_nodata(l2a_dir, product_copy, tmp_path):
    """Real MUSCATE files may lack the GeoTIFF nodata tag; the COG must carry −10000 for overviews and clients."""
    source = next(product_copy.glob("*_FRE_B2.tif"))
    with rasterio.open(source, "r+") as ds:
        ds.nodata = None
    with rasterio.open(source) as ds:
        assert ds.nodata is None
        pixels = ds.read()
    product = read_l2a(product_copy)
    assert product.rasters["FRE_B2"].nodata == -10000
    cogs = write_cogs(product, tmp_path / "s")
    with rasterio.open(cogs.files["FRE_B2"].path) as ds:
        assert ds.nodata == -10000
        assert np.array_equal(ds.read(), pixels)


def test_unknown_compression_is_refused(l2a_dir, tmp_path):
    with pytest.raises(ValueError, match="compress must be one of"):
        write_cogs(read_l2a(l2a_dir.path), tmp_path / "x", compress="lzw")


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from ingest.cog import write_cogs
    from ingest.errors import TransientIngestError
    from ingest.muscate import read_l2a

    product = read_l2a(Path(sys.argv[1]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
    try:
        write_cogs(product, Path(sys.argv[2]))
    except TransientIngestError as exc:
        print(f"TRANSIENT {exc}")
    else:
        print("WRITTEN")
""")


@pytest.mark.parametrize("when", ["first COG", "after ten COGs"])
def test_disk_full_is_transient_and_leaves_no_staging(l2a_large, cogs, tmp_path, when):
    """A real write failure (RLIMIT_FSIZE → EFBIG), in the first COG or after several were written."""
    first = cogs.files["FRE_B2"].size
    limit = 50_000 if when == "first COG" else first + 1  # FRE_B2 … FRE_B12 fit, SRE_B2 is a little larger
    assert when == "first COG" or cogs.files["SRE_B2"].size > limit
    staging = tmp_path / "store" / ".staging" / "7"
    run = subprocess.run([sys.executable, "-c", DISK_FULL, str(l2a_large.path), str(staging), str(limit)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (f"TRANSIENT no space left while writing COGs to {staging} — free space in the "
                                  "store (or raise its quota); the job is retried")
    assert not staging.exists()
    assert (tmp_path / "store" / ".staging").exists()  # only the product's own directory is removed


def test_transient_error_class():
    assert issubclass(TransientIngestError, Exception) and TransientIngestError.exit_code == 7

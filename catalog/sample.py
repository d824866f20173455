"""A small real sample catalog, so the system is useful before ingest exists.

Writes a handful of small Sentinel-2-like L2A products as real COGs, georeferenced on tile
T31TCH (EPSG:32631, UL 300000/4800000 at 10 m), and publishes their items.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from pyproj import Transformer
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from catalog import __version__
from catalog.collections import COG, COLLECTIONS, S2_BANDS, S2_L2A
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, product_prefix

TILE = "31TCH"
EPSG = 32631
TILE_UL = (300_000.0, 4_800_000.0)
SAMPLE_BANDS = ("B2", "B3", "B4", "B8", "B11")


@dataclass(frozen=True)
class SampleProduct:
    product_id: str
    when: datetime
    cloud_cover: float
    ul: tuple[float, float]
    size: int  # pixels at 10 m


def sample_products(n: int = 6, size: int = 512) -> list[SampleProduct]:
    """n products, alternating between two neighbouring areas of the tile, 5 days apart."""
    start = datetime(2024, 6, 3, 10, 50, 21, 463000, tzinfo=timezone.utc)
    clouds = [5.0, 42.0, 12.5, 88.0, 0.5, 23.0, 61.0, 9.0]
    out = []
    for i in range(n):
        when = start + timedelta(days=5 * i)
        platform = "SENTINEL2A" if i % 2 == 0 else "SENTINEL2B"
        ul = (TILE_UL[0] + 40_000 + (i % 2) * size * 10, TILE_UL[1] - 40_000)
        pid = f"{platform}_{when:%Y%m%d-%H%M%S}-{when.microsecond // 1000:03d}_L2A_T{TILE}_C_V1-0"
        out.append(SampleProduct(pid, when, clouds[i % len(clouds)], ul, size))
    return out


def _reflectance(rng: np.random.Generator, band: str, shape: tuple[int, int], cloud: np.ndarray) -> np.ndarray:
    base = {"B2": 600, "B3": 900, "B4": 800, "B8": 3000, "B11": 2000}[band]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    field = base * (1 + 0.3 * np.sin(xx / 37.0) * np.cos(yy / 53.0)) + rng.normal(0, 40, shape)
    field = np.where(cloud, 5600 + rng.normal(0, 60, shape), field)
    return field.astype("int16")


def _cloud_mask(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> np.ndarray:
    noise = rng.random((shape[0] // 16 + 1, shape[1] // 16 + 1))
    big = np.kron(noise, np.ones((16, 16)))[: shape[0], : shape[1]]
    return big < cover / 100.0


def _write_cog(array: np.ndarray, transform, dst: Path, nodata: float | None) -> None:
    profile = dict(driver="GTiff", height=array.shape[0], width=array.shape[1], count=1, dtype=array.dtype.name,
                   crs=f"EPSG:{EPSG}", transform=transform, nodata=nodata)
    cog = cog_profiles.get("deflate")
    cog.update(predictor=2, blockxsize=256, blockysize=256)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(array, 1)
        with mem.open() as src:
            cog_translate(src, str(dst), cog, overview_resampling="average", quiet=True, in_memory=True,
                          config={"GDAL_NUM_THREADS": "ALL_CPUS"})


def _proj(ul: tuple[float, float], gsd: int, size: int) -> dict:
    """Per-asset grid, so that clients (GDAL STACIT, odc-stac) can place pixels without opening files."""
    return {"proj:shape": [size, size], "proj:transform": [gsd, 0, ul[0], 0, -gsd, ul[1]]}


def _multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def _footprint(ul: tuple[float, float], extent_m: float) -> tuple[dict, list[float], list[float]]:
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    x0, y0 = ul
    corners = [(x0, y0), (x0 + extent_m, y0), (x0 + extent_m, y0 - extent_m), (x0, y0 - extent_m), (x0, y0)]
    ring = [list(map(lambda v: round(v, 7), to_ll.transform(x, y))) for x, y in corners]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return ({"type": "Polygon", "coordinates": [ring]}, [min(lons), min(lats), max(lons), max(lats)],
            [x0, y0 - extent_m, x0 + extent_m, y0])


def write_product(product: SampleProduct, store: AssetStore, seed: int = 0) -> dict:
    """Write one product's COGs and thumbnail into the store and return its STAC item."""
    rng = np.random.default_rng([seed, int(product.when.timestamp())])
    rel = product_prefix(S2_L2A, TILE, product.when, product.product_id)
    out_dir = store.path(rel)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = product.size
    cloud10 = _cloud_mask(rng, (n, n), product.cloud_cover)
    assets: dict[str, dict] = {}
    band_meta = {b[0]: b for b in S2_BANDS}
    for band in SAMPLE_BANDS:
        gsd = band_meta[band][4]
        m = n * 10 // gsd
        cloud = cloud10[:: gsd // 10, :: gsd // 10][:m, :m]
        data = _reflectance(rng, band, (m, m), cloud)
        data[:m // 8, :m // 8] = -10000  # a no-data corner, as at a swath edge
        name = f"{product.product_id}_FRE_{band}.tif"
        _write_cog(data, from_origin(product.ul[0], product.ul[1], gsd, gsd), out_dir / name, -10000)
        assets[f"FRE_{band}"] = {"href": store.href(rel / name), "type": COG, "roles": ["data", "reflectance"],
                                 **_proj(product.ul, gsd, m)}
    clm = np.where(cloud10[::2, ::2], 0b11, 0).astype("uint8")
    name = f"{product.product_id}_CLM_R2.tif"
    _write_cog(clm, from_origin(product.ul[0], product.ul[1], 20, 20), out_dir / name, None)
    assets["CLM_R2"] = {"href": store.href(rel / name), "type": COG, "roles": ["cloud", "data-mask"],
                        **_proj(product.ul, 20, n // 2)}
    with rasterio.open(out_dir / f"{product.product_id}_FRE_B4.tif") as r, \
            rasterio.open(out_dir / f"{product.product_id}_FRE_B3.tif") as g, \
            rasterio.open(out_dir / f"{product.product_id}_FRE_B2.tif") as b:
        rgb = np.stack([src.read(1, out_shape=(256, 256)) for src in (r, g, b)])
    qkl = np.clip(rgb.astype("float32") / 3000 * 255, 0, 255).astype("uint8")
    qkl_name = f"{product.product_id}_QKL_ALL.jpg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a quicklook is a plain picture
        with rasterio.open(out_dir / qkl_name, "w", driver="JPEG", width=256, height=256, count=3,
                           dtype="uint8") as q:
            q.write(qkl)
    (out_dir / f"{qkl_name}.aux.xml").unlink(missing_ok=True)
    assets["thumbnail"] = {"href": store.href(rel / qkl_name), "type": "image/jpeg", "roles": ["thumbnail"]}
    item_assets = COLLECTIONS[S2_L2A].item_assets
    for key, asset in assets.items():
        asset.update({k: v for k, v in item_assets[key].items() if k not in asset or k == "roles"})
        local = out_dir / Path(asset["href"]).name
        asset["file:size"] = local.stat().st_size
        asset["file:checksum"] = _multihash(local)
    geometry, bbox, proj_bbox = _footprint(product.ul, n * 10)
    platform = "sentinel-2a" if product.product_id.startswith("SENTINEL2A") else "sentinel-2b"
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
            "https://stac-extensions.github.io/version/v1.2.0/schema.json",
        ],
        "id": product.product_id,
        "collection": S2_L2A,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": product.when.isoformat().replace("+00:00", "Z"),
            "platform": platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": product.cloud_cover,
            "grid:code": f"MGRS-{TILE}",
            "proj:code": f"EPSG:{EPSG}",
            "proj:bbox": proj_bbox,
            "processing:level": "L2A",
            "processing:software": {"landsurf-sample": __version__},
            "version": "1.0",
            "landsurf:sample": True,
            "created": now,
            "updated": now,
        },
        "assets": assets,
        "links": [],
    }


def write_sample(settings: CatalogSettings, n: int = 6, size: int = 512) -> list[dict]:
    """Write the sample products and return their items (publish them with `upsert_items`)."""
    store = AssetStore.from_settings(settings)
    store.ensure()
    return [write_product(p, store) for p in sample_products(n, size)]

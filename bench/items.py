"""Synthetic Theia/MUSCATE-like Sentinel-2 STAC items for catalogue benchmarks.

Plain dicts, not pystac objects: 250k items must come out in seconds, so tile geometries are computed
once and every per-item value comes from an integer hash of (seed, tile, date), which keeps the output
deterministic and lets the L2A and snow items of one acquisition share time, orbit and cloud cover.
Nested values that never change (geometry rings, roles, proj:bbox, band lists) are shared between items:
copy an item before mutating it in place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

TILE_SIZE_M = 109_800
AOI = (-8.0, 33.5, 24.0, 57.0)
ZONES = range(29, 35)
_COLS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_M64 = (1 << 64) - 1
_SE = "https://stac-extensions.github.io"
EXTENSIONS = [f"{_SE}/{n}/v{v}/schema.json" for n, v in (
    ("eo", "1.1.0"), ("projection", "2.0.0"), ("file", "2.1.0"), ("grid", "1.1.0"), ("mgrs", "1.0.0"),
    ("processing", "1.2.0"), ("sat", "1.0.0"), ("view", "1.0.0"), ("version", "1.2.0"), ("raster", "1.1.0"))]
TIFF = "image/tiff; application=geotiff; profile=cloud-optimized"
BANDS = ("B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12")
# key -> (file suffix, media type, roles, title, typical size in bytes)
_Spec = tuple[str, str, list[str], str, int]
_QKL: _Spec = (".jpg", "image/jpeg", ["thumbnail", "overview"], "Quicklook (B4, B3, B2)", 180_000)


def _bands(prefix: str, what: str) -> dict[str, _Spec]:
    return {f"{prefix}_{b}": (".tif", TIFF, ["data", "reflectance"], f"{what} {b}",
                              95_000_000 if b in ("B2", "B3", "B4", "B8") else 26_000_000) for b in BANDS}


ASSETS: dict[str, dict[str, _Spec]] = {
    "sentinel2-l2a": {**_bands("FRE", "Flat reflectance"),
                      "CLM_R1": (".tif", TIFF, ["cloud"], "Cloud mask, 10 m", 2_500_000),
                      "CLM_R2": (".tif", TIFF, ["cloud"], "Cloud mask, 20 m", 800_000),
                      "MG2_R2": (".tif", TIFF, ["data-mask"], "Geophysical mask, 20 m", 900_000),
                      "thumbnail": _QKL},
    "sentinel2-l3a": {**_bands("FRC", "Composite flat reflectance"),
                      "FLG_R1": (".tif", TIFF, ["data-mask"], "Status flags, 10 m", 1_200_000),
                      "FLG_R2": (".tif", TIFF, ["data-mask"], "Status flags, 20 m", 400_000),
                      "WGT_R1": (".tif", TIFF, ["metadata"], "Summed weight, 10 m", 30_000_000),
                      "thumbnail": _QKL},
    "sentinel2-snow": {"SNW_R2": (".tif", TIFF, ["data", "snow"], "Snow map (0/100/205/254), 20 m", 700_000),
                       "SNOW_ALL": (".tif", TIFF, ["data"], "Snow pass bits, 20 m", 1_100_000),
                       "FSC_TOC": (".tif", TIFF, ["data", "snow"], "Fractional snow cover, top of canopy", 4_000_000),
                       "FSC_OG": (".tif", TIFF, ["data", "snow"], "Fractional snow cover, on ground", 4_000_000),
                       "QCFLAGS": (".tif", TIFF, ["data-mask"], "FSC quality flags", 600_000),
                       "NDSI": (".tif", TIFF, ["data"], "Normalised difference snow index", 12_000_000),
                       "CLM_R2": (".tif", TIFF, ["cloud"], "Input cloud mask, 20 m", 800_000),
                       "SLP_R2": (".tif", TIFF, ["data-mask"], "Bad slope-correction flag, 20 m", 300_000),
                       "ALT_R2": (".tif", TIFF, ["metadata"], "Elevation used, 20 m", 25_000_000),
                       "COMPO": (".tif", TIFF, ["overview"], "SWIR/red/green composite with outlines", 40_000_000),
                       "HISTO": (".txt", "text/csv", ["metadata"], "Snow/cloud histogram by elevation", 4_000),
                       "METADATA": (".xml", "application/xml", ["metadata"], "LIS metadata", 3_000),
                       "thumbnail": _QKL},
}


@dataclass(frozen=True, slots=True)
class Tile:
    """One Sentinel-2 tile: a 109.8 km square on the MGRS 100 km grid, UL snapped to 60 m as in real tiles."""

    code: str
    epsg: int
    ul: tuple[int, int]
    geometry: dict[str, Any]
    bbox: list[float]

    @property
    def proj_bbox(self) -> list[int]:
        x, y = self.ul
        return [x, y - TILE_SIZE_M, x + TILE_SIZE_M, y]


_Ctx = tuple[Tile, int, float, float, dict[str, Any]]


def mgrs_code(zone: int, ul_e: float, ul_n: float, lat: float | None = None) -> str:
    """MGRS id of the 100 km square whose upper-left corner is (ul_e, ul_n), within 60 m.

    The band letter comes from the latitude of the square's centre unless `lat` is given.
    """
    if lat is None:
        from pyproj import Transformer

        to_ll = Transformer.from_crs(32600 + zone, 4326, always_xy=True).transform
        lat = to_ll(round(ul_e, -5) + 50_000, round(ul_n, -5) - 50_000)[1]
    col, top = round(ul_e / 100_000), round(ul_n / 100_000)
    column = _COLS[(zone - 1) % 3][col - 1]
    row = _ROWS[(top - 1 + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone}{_BANDS[int((lat + 80) // 8)]}{column}{row}"


def _all_tiles() -> list[Tile]:
    """Every 100 km square that meets its zone's 6-degree strip inside the AOI, as the real S2 grid does, so
    neighbouring zones overlap at the seams instead of leaving gaps."""
    from pyproj import Transformer
    from shapely.geometry import Polygon, box

    out = []
    for zone in ZONES:
        to_ll = Transformer.from_crs(32600 + zone, 4326, always_xy=True).transform
        west = 6 * zone - 186
        area = box(max(west, AOI[0]), AOI[1], min(west + 6, AOI[2]), AOI[3])
        for e in range(100_000, 900_000, 100_000):
            for n in range(3_700_000, 6_500_000, 100_000):
                square = Polygon([to_ll(x, y) for x, y in ((e, n), (e, n - 1e5), (e + 1e5, n - 1e5), (e + 1e5, n))])
                if not square.intersects(area):
                    continue
                ul = ((e // 60) * 60, -(-n // 60) * 60)
                s = [i * TILE_SIZE_M / 4 for i in range(4)]
                x0, y0, x1, y1 = ul[0], ul[1] - TILE_SIZE_M, ul[0] + TILE_SIZE_M, ul[1]
                ring_xy = ([(x0, y1 - d) for d in s] + [(x0 + d, y0) for d in s]
                           + [(x1, y0 + d) for d in s] + [(x1 - d, y1) for d in s])
                ring = [[round(c, 6) for c in to_ll(x, y)] for x, y in ring_xy]
                ring.append(ring[0])
                lons, lats = [p[0] for p in ring], [p[1] for p in ring]
                code = mgrs_code(zone, e, n, to_ll(e + 50_000, n - 50_000)[1])
                out.append(Tile(code, 32600 + zone, ul, {"type": "Polygon", "coordinates": [ring]},
                                [min(lons), min(lats), max(lons), max(lats)]))
    return sorted(out, key=lambda t: t.code)


def tiles(n: int, seed: int = 0) -> list[Tile]:
    """n tiles of the zone 29-34 grid (847 in all), a seeded sample sorted by code; n >= 847 gives them all."""
    grid = _all_tiles()
    if n >= len(grid):
        return grid
    return sorted(random.Random(seed).sample(grid, n), key=lambda t: t.code)


def is_mountain(tile: Tile) -> bool:
    """About 40% of tiles carry a snow product; a stable hash of the code decides which."""
    return int(hashlib.sha256(tile.code.encode()).hexdigest()[:8], 16) % 100 < 40


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _tile_ctx(t: Tile, seed: int) -> _Ctx:
    ring = t.geometry["coordinates"][0]
    lon, lat = (t.bbox[0] + t.bbox[2]) / 2, (t.bbox[1] + t.bbox[3]) / 2
    zone, band, square = t.code[:2], t.code[2], t.code[3:]
    props = {"constellation": "sentinel-2", "instruments": ["msi"], "grid:code": f"MGRS-{t.code}",
             "mgrs:utm_zone": int(zone), "mgrs:latitude_band": band, "mgrs:grid_square": square,
             "proj:code": f"EPSG:{t.epsg}", "proj:bbox": t.proj_bbox, "proj:shape": [10980, 10980]}
    key = int(hashlib.sha256(f"{seed}/{t.code}".encode()).hexdigest()[:15], 16)
    return t, key, lon, lat, {"props": props, "ring": ring}


def _sun(lon: float, lat: float, day: date, utc_h: float) -> tuple[float, float]:
    """Approximate solar (azimuth, elevation) in degrees: enough for plausible view:sun_* values."""
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + day.timetuple().tm_yday) / 365)
    ha = math.radians((utc_h + lon / 15 - 12) * 15)
    phi = math.radians(lat)
    elev = math.asin(math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha))
    az = math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    return round(math.degrees(az) + 180, 4), round(math.degrees(elev), 4)


def _cloud(h: int) -> float:
    """Bimodal cloud cover: 45% mostly clear, 35% mostly overcast, 20% anything."""
    mode, u = (h & 0xFFFF) / 65536, ((h >> 16) & 0xFFFF) / 65536
    v = u ** 3 if mode < 0.45 else 1 - u ** 3 if mode < 0.80 else u
    return round(100 * v, 2)


def _band_fields(collection: str) -> dict[str, dict[str, Any]]:
    """eo:bands and raster:bands of the reflectance assets, for item_assets and for the items alike."""
    out = {}
    for key in ASSETS[collection]:
        if key[:4] in ("FRE_", "FRC_"):
            band = key[4:]
            out[key] = {"eo:bands": [{"name": band}],
                        "raster:bands": [{"nodata": -10000, "data_type": "int16", "scale": 0.0001,
                                          "spatial_resolution": 10 if band in BANDS[:4] else 20}]}
    return out


def asset_href(collection: str, tile: str, day: date, item_id: str, file: str, base_url: str | None = None) -> str:
    """Where an asset is: its store path (`{collection}/{tile}/{yyyy}/{mm}/{id}/{file}`, what the catalog keeps
    since hrefs are rendered at response time), or with `base_url` the absolute download URL that items carried
    before (`{base_url}/download/{store path}`)."""
    rel = f"{collection}/{tile}/{day.year}/{day.month:02d}/{item_id}/{file}"
    return rel if base_url is None else f"{base_url.rstrip('/')}/download/{rel}"


def _assets(collection: str, item_id: str, tile: str, day: date, base_url: str | None, h: int,
            bands: dict[str, dict[str, Any]]) -> dict[str, Any]:
    prefix = asset_href(collection, tile, day, item_id, f"{item_id}_", base_url)
    out = {}
    for i, (key, (suffix, mtype, roles, title, size)) in enumerate(ASSETS[collection].items()):
        digest = hashlib.sha256(f"{item_id}/{key}".encode()).hexdigest()
        asset = out[key] = {"href": f"{prefix}{key}{suffix}", "type": mtype, "roles": roles, "title": title,
                            "file:size": size + ((h >> (i * 4)) & 0xFFFF) * size // 262_144,
                            "file:checksum": f"1220{digest}"}
        if key in bands:
            asset.update(bands[key])
    return out


def _item(ctx: _Ctx, collection: str, item_id: str, day: date, props: dict[str, Any], h: int,
          base_url: str | None, bands: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t, _, _, _, c = ctx
    created = f"{day + timedelta(days=1 + h % 3)}T{(h >> 20) % 24:02d}:{(h >> 25) % 60:02d}:00Z"
    props.update(c["props"])
    props.update({"processing:software": {"landsurf": "0.1.0"}, "processing:version": "1.0", "version": "1.0",
                  "created": created, "updated": created})
    return {"type": "Feature", "stac_version": "1.1.0", "stac_extensions": EXTENSIONS, "id": item_id,
            "collection": collection, "geometry": {"type": "Polygon", "coordinates": [c["ring"]]},
            "bbox": t.bbox, "properties": props, "links": [],
            "assets": _assets(collection, item_id, t.code, day, base_url, _mix(h), bands)}


def _acquisitions(tiles_: Iterable[Tile], start: date, end: date, every_days: int, seed: int,
                  level: str, collection: str, base_url: str | None) -> Iterator[dict[str, Any]]:
    ctxs = [_tile_ctx(t, seed) for t in tiles_]
    bands = _band_fields(collection)
    for k in range((end - start).days // every_days + 1):
        day = start + timedelta(days=k * every_days)
        sat = "AB"[k % 2]
        for ctx in ctxs:
            t, key, lon, lat, _ = ctx
            h = _mix(key ^ (day.toordinal() << 20))
            # 10:30-10:50 UTC: the east of the area is overflown first, then up to 2 min of jitter
            t_ms = 37_800_000 + int((AOI[2] - min(max(lon, AOI[0]), AOI[2])) * 33_750) + (h >> 32) % 120_000
            hh, rest = divmod(t_ms, 3_600_000)
            mm, rest = divmod(rest, 60_000)
            ss, ms = divmod(rest, 1000)
            az, el = _sun(lon, lat, day, t_ms / 3_600_000)
            stamp = f"{day:%Y%m%d}-{hh:02d}{mm:02d}{ss:02d}-{ms:03d}"
            item_id = f"SENTINEL2{sat}_{stamp}_{level}_T{t.code}_C_V1-0"
            props = {"datetime": f"{day}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z", "platform": f"sentinel-2{sat.lower()}",
                     "eo:cloud_cover": _cloud(h), "processing:level": level.split("-")[0],
                     "sat:relative_orbit": 1 + (int((lon + 180) * 7.3) + 71 * (k % 2)) % 143,
                     "view:sun_azimuth": az, "view:sun_elevation": el}
            yield _item(ctx, collection, item_id, day, props, h, base_url, bands)


def l2a_items(tiles: Iterable[Tile], start: date, end: date, every_days: int = 5, seed: int = 0,
              base_url: str | None = None) -> Iterator[dict[str, Any]]:
    """Collection sentinel2-l2a: one item per tile every `every_days`, in date order (partition-friendly)."""
    return _acquisitions(tiles, start, end, every_days, seed, "L2A", "sentinel2-l2a", base_url)


def snow_items(tiles: Iterable[Tile], start: date, end: date, every_days: int = 5, seed: int = 0,
               base_url: str | None = None) -> Iterator[dict[str, Any]]:
    """Collection sentinel2-snow on the mountain tiles; same acquisitions (time, cloud) as the L2A items."""
    mountains = [t for t in tiles if is_mountain(t)]
    return _acquisitions(mountains, start, end, every_days, seed, "L2B-SNOW", "sentinel2-snow", base_url)


def l3a_items(tiles: Iterable[Tile], start: date, end: date, seed: int = 0,
              base_url: str | None = None) -> Iterator[dict[str, Any]]:
    """Collection sentinel2-l3a: a monthly composite per tile dated the 15th, window +/- 23 days."""
    ctxs = [_tile_ctx(t, seed) for t in tiles]
    bands = _band_fields("sentinel2-l3a")
    for m in range(start.year * 12 + start.month - 1, end.year * 12 + end.month):
        day = date(m // 12, m % 12 + 1, 15)
        window = {"start_datetime": f"{day - timedelta(days=23)}T00:00:00Z",
                  "end_datetime": f"{day + timedelta(days=23)}T00:00:00Z"}
        for ctx in ctxs:
            h = _mix(ctx[1] ^ (day.toordinal() << 20) ^ 0x13A)
            item_id = f"SENTINEL2X_{day:%Y%m%d}-000000-000_L3A_T{ctx[0].code}_C_V1-0"
            props = {"datetime": f"{day}T00:00:00Z", **window, "eo:cloud_cover": round(_cloud(h) / 10, 2),
                     "processing:level": "L3A"}
            yield _item(ctx, "sentinel2-l3a", item_id, day, props, h, base_url, bands)


def item_assets(collection: str) -> dict[str, Any]:
    """The collection's item_assets: exactly the per-item values shared by every item, so pgSTAC stores
    none of them per item. pgSTAC marks base-item keys absent from an item as absent, so items must carry
    the band fields too for them to come back hydrated."""
    bands = _band_fields(collection)
    return {key: {"type": mtype, "roles": roles, "title": title, **bands.get(key, {})}
            for key, (_, mtype, roles, title, _) in ASSETS[collection].items()}


def write_ndjson(items: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write one JSON item per line (pypgstac's ndjson input); orjson when present, as it is several times faster."""
    try:
        import orjson

        def dumps(o: Any) -> bytes:
            return orjson.dumps(o) + b"\n"
    except ImportError:
        def dumps(o: Any) -> bytes:
            return (json.dumps(o, separators=(",", ":")) + "\n").encode()
    n = 0
    with open(path, "wb") as f:
        for item in items:
            f.write(dumps(item))
            n += 1
    return n


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.perf_counter()
    grid = tiles(10_000)
    t1 = time.perf_counter()
    stream = l2a_items(grid, date(2016, 7, 1), date(2030, 1, 1))
    count = sum(1 for _ in itertools.islice(stream, n))
    t2 = time.perf_counter()
    print(f"{len(grid)} tiles in {t1 - t0:.2f} s; {count} L2A items in {t2 - t1:.2f} s "
          f"= {count / (t2 - t1):,.0f} items/s")

"""The collections landsurf publishes, declared as data, and their queryables.

One collection per product type. Partitioning is by **year** for every collection: measured on a
637k-item Theia-like catalog (shared spec catalog-scale.md §5), year partitions are equal or
faster on every query, 2.2× faster on id lookups, load 5–15 % faster and take 4 % less space;
month partitions only pay off at several million items per collection per year. It is set
before the first item is loaded, since pgSTAC cannot cheaply re-partition afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from catalog import __version__

S2_L2A = "sentinel2-l2a"
S2_SNOW = "sentinel2-snow"
S2_L3A = "sentinel2-l3a"
S2_SCD = "sentinel2-snow-duration"
DEM = "dem"
VENUS_L2A = "venus-l2a"
LANDSAT8_L2A = "landsat8-l2a"

STAC_VERSION = "1.1.0"  # of every object the API serves: landing page, collections, items
# The extension versions landsurf declares (their schemas are vendored in tests/schemas/ and checked there).
EXTENSIONS = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    # v1.2.0, not v2.0.0: the last version that allows `proj:epsg` beside `proj:code`, and GDAL < 3.10 STACIT
    # (Debian 12's 3.6, QGIS) skips every asset without `proj:epsg`
    "proj": "https://stac-extensions.github.io/projection/v1.2.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "grid": "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "mgrs": "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "version": "https://stac-extensions.github.io/version/v1.2.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "view": "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "render": "https://stac-extensions.github.io/render/v2.0.0/schema.json",
    "web-map-links": "https://stac-extensions.github.io/web-map-links/v1.2.0/schema.json",
}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
LICENSE = "etalab-2.0"
PROVIDERS = [
    {"name": "ESA / Copernicus", "roles": ["producer", "licensor"], "url": "https://sentinels.copernicus.eu"},
    {"name": "landsurf", "roles": ["processor", "host"], "url": "https://github.com/landsurf"},
]

# Sentinel-2 reflective bands delivered in MUSCATE L2A: (name, common name, centre µm, fwhm µm, gsd m, group).
# Common names are those of eo v1.1.0 (B5, B6 and B7 are all `rededge`; eo v2.0's `rededge071/075/078` belong to
# STAC 1.1 `bands`, which odc-stac 0.5, GDAL STACIT and rio-tiler do not read in place of `eo:bands`):
# clients tell the three apart by `name` and `center_wavelength`.
S2_BANDS: list[tuple[str, str, float, float, int, str]] = [
    ("B2", "blue", 0.490, 0.098, 10, "R1"),
    ("B3", "green", 0.560, 0.045, 10, "R1"),
    ("B4", "red", 0.665, 0.038, 10, "R1"),
    ("B8", "nir", 0.842, 0.145, 10, "R1"),
    ("B5", "rededge", 0.705, 0.019, 20, "R2"),
    ("B6", "rededge", 0.740, 0.018, 20, "R2"),
    ("B7", "rededge", 0.783, 0.028, 20, "R2"),
    ("B8A", "nir08", 0.865, 0.033, 20, "R2"),
    ("B11", "swir16", 1.610, 0.143, 20, "R2"),
    ("B12", "swir22", 2.190, 0.242, 20, "R2"),
]
GSD = {"R1": 10, "R2": 20}


def _reflectance_asset(prefix: str, title: str, band: tuple) -> dict[str, Any]:
    name, common, centre, fwhm, gsd, _ = band
    return {
        "type": COG,
        "title": f"{title} {name}",
        "roles": ["data", "reflectance"],
        "gsd": gsd,
        "eo:bands": [{"name": name, "common_name": common, "center_wavelength": centre,
                      "full_width_half_max": fwhm}],
        "raster:bands": [{"data_type": "int16", "nodata": -10000, "scale": 0.0001, "offset": 0,
                          "spatial_resolution": gsd, "unit": "1"}],
    }


def _mask_asset(title: str, group: str, roles: list[str], data_type: str = "uint8", **extra) -> dict[str, Any]:
    return {
        "type": COG, "title": f"{title} ({GSD[group]} m)", "roles": roles, "gsd": GSD[group],
        "raster:bands": [{"data_type": data_type, "spatial_resolution": GSD[group], **extra}],
    }


def _masks_r12(key: str, title: str, roles: list[str]) -> dict[str, dict]:
    return {f"{key}_{g}": _mask_asset(title, g, roles) for g in ("R1", "R2")}


THUMBNAIL = {"type": "image/jpeg", "title": "Quicklook", "roles": ["thumbnail", "overview"]}
METADATA = {"type": "application/xml", "title": "MUSCATE metadata (MTD_ALL.xml)", "roles": ["metadata"]}


def l2a_item_assets() -> dict[str, dict]:
    assets: dict[str, dict] = {}
    for band in S2_BANDS:
        assets[f"FRE_{band[0]}"] = _reflectance_asset("FRE", "Flat (slope-corrected) surface reflectance", band)
    for band in S2_BANDS:
        assets[f"SRE_{band[0]}"] = _reflectance_asset("SRE", "Surface reflectance", band)
    for group in ("R1", "R2"):
        assets[f"ATB_{group}"] = {
            "type": COG, "title": f"Water vapour (g/cm²) and aerosol optical thickness ({GSD[group]} m)",
            "roles": ["data", "atmosphere"], "gsd": GSD[group],
            "raster:bands": [
                {"name": "water_vapour", "data_type": "uint8", "nodata": 0, "scale": 0.05, "unit": "g/cm2",
                 "spatial_resolution": GSD[group]},
                {"name": "aot", "data_type": "uint8", "nodata": 0, "scale": 0.005,
                 "spatial_resolution": GSD[group]},
            ],
        }
    assets |= _masks_r12("CLM", "Cloud mask (bit 0 all clouds and shadows … bit 7 cirrus)", ["cloud", "data-mask"])
    assets |= _masks_r12("MG2", "Geophysical mask (bit 0 water, 1 cloud, 2 snow, 3 shadow …)", ["data-mask"])
    assets |= _masks_r12("SAT", "Saturation (one bit per band of the group)", ["saturation", "data-mask"])
    assets |= _masks_r12("EDG", "Edge / no-data mask", ["data-mask"])
    assets |= _masks_r12("IAB", "Interpolated water vapour (bit 0) and AOT (bit 1)", ["data-mask"])
    assets["thumbnail"] = THUMBNAIL
    assets["metadata"] = METADATA
    return assets


def l3a_item_assets() -> dict[str, dict]:
    assets = {f"FRC_{b[0]}": _reflectance_asset("FRC", "Composite flat reflectance", b) for b in S2_BANDS}
    for g in ("R1", "R2"):
        assets[f"WGT_{g}"] = _mask_asset("Summed weight (×1000)", g, ["data"], "int16", nodata=-10000, scale=0.001)
        assets[f"DTS_{g}"] = _mask_asset("Weighted mean date (days from the synthesis date)", g, ["data"], "int16",
                                         nodata=-10000, unit="d")
        assets[f"FLG_{g}"] = _mask_asset("Status: 0 no-data 1 cloud 2 snow 3 water 4 land", g, ["data-mask"])
        assets[f"NOBS_{g}"] = _mask_asset("Number of clear land dates averaged", g, ["data"])
    assets["thumbnail"] = THUMBNAIL
    assets["metadata"] = METADATA
    return assets


def snow_item_assets() -> dict[str, dict]:
    return {
        # Theia V1 codes, as processing/snow.py writes them: no-data is 254 (LIS ≥ 1.7 would use 255)
        "SNW_R2": _mask_asset("Snow: 0 no snow, 100 snow, 205 cloud, 254 no-data", "R2", ["data", "snow"],
                              nodata=254),
        "thumbnail": THUMBNAIL,
        "metadata": {**METADATA, "title": "Snow product metadata"},
    }


def dem_item_assets() -> dict[str, dict]:
    return {"DEM": _mask_asset("Elevation (m)", "R2", ["data", "elevation"], "int16", nodata=-32768, unit="m")}


def scd_item_assets() -> dict[str, dict]:
    def band(title: str) -> dict:
        return _mask_asset(title, "R2", ["data"], "uint16")
    return {
        "SCD": band("Snow cover duration (days)"),
        "SOD": band("Snow onset date (days since 1 September)"),
        "SMOD": band("Snow melt-out date (days since 1 September)"),
        "NOBS": band("Number of clear observations"),
        "NSP": band("Number of snow periods"),
        "thumbnail": THUMBNAIL,
    }


@dataclass(frozen=True)
class CollectionSpec:
    id: str
    title: str
    description: str
    keywords: list[str]
    item_assets: dict[str, dict]
    platforms: list[str]
    levels: list[str]
    start: str
    partition: str = "year"
    enabled: bool = True
    extra_summaries: dict[str, Any] = field(default_factory=dict)
    # render extension: how a viewer shows an item (tiler parameters); the first is the default
    renders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        extensions = [EXTENSIONS["eo"], EXTENSIONS["raster"], EXTENSIONS["proj"], EXTENSIONS["processing"]]
        return {
            "type": "Collection",
            "stac_version": STAC_VERSION,
            "stac_extensions": extensions + ([EXTENSIONS["render"]] if self.renders else []),
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "keywords": self.keywords,
            "license": LICENSE,
            "providers": PROVIDERS,
            "extent": {
                "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                "temporal": {"interval": [[self.start, None]]},
            },
            "summaries": {
                **({"platform": self.platforms,
                    "constellation": sorted({p.rsplit("-", 1)[0] for p in self.platforms})} if self.platforms else {}),
                "processing:level": self.levels,
                "eo:cloud_cover": {"minimum": 0, "maximum": 100},
                **self.extra_summaries,
            },
            "item_assets": self.item_assets,
            **({"renders": self.renders} if self.renders else {}),
            "links": [
                {"rel": "license", "href": "https://www.etalab.gouv.fr/licence-ouverte-open-licence",
                 "title": "Licence Ouverte / Open Licence 2.0"},
            ],
        }


S2_PLATFORMS = ["sentinel-2a", "sentinel-2b", "sentinel-2c"]
S2_KEYWORDS = ["Sentinel-2", "MUSCATE", "Theia", "land surface", "Copernicus"]

COLLECTIONS: dict[str, CollectionSpec] = {
    c.id: c
    for c in [
        CollectionSpec(
            S2_L2A, "Sentinel-2 L2A (MUSCATE format)",
            "Sentinel-2 surface reflectance with MAJA cloud and geophysical masks, MUSCATE layout, "
            "published as Cloud-Optimized GeoTIFFs.",
            S2_KEYWORDS + ["L2A", "surface reflectance"], l2a_item_assets(), S2_PLATFORMS, ["L2A"],
            "2015-07-04T00:00:00Z",
            extra_summaries={"eo:bands": [{"name": b[0], "common_name": b[1]} for b in S2_BANDS],
                             "gsd": [10, 20]},
            renders={"true-colour": {"title": "True colour (flat reflectance B4, B3, B2)",
                                     "assets": ["FRE_B4", "FRE_B3", "FRE_B2"], "rescale": [[0, 3000]]}},
        ),
        CollectionSpec(
            S2_SNOW, "Sentinel-2 snow maps (LIS-like, 20 m)",
            "Binary snow cover maps at 20 m derived from Sentinel-2 L2A with a LIS-like algorithm.",
            S2_KEYWORDS + ["snow", "L2B"], snow_item_assets(), S2_PLATFORMS, ["L2B"], "2015-07-04T00:00:00Z",
        ),
        CollectionSpec(
            S2_L3A, "Sentinel-2 monthly syntheses (WASP-like L3A)",
            "Monthly cloud-free surface reflectance syntheses (weighted average over ±23 days).",
            S2_KEYWORDS + ["L3A", "synthesis", "monthly"], l3a_item_assets(), S2_PLATFORMS + ["sentinel-2x"],
            ["L3A"], "2015-07-15T00:00:00Z",
        ),
        CollectionSpec(
            S2_SCD, "Snow cover duration per hydrological year",
            "Snow cover duration, onset and melt-out dates per hydrological year (1 Sept – 31 Aug), 20 m.",
            S2_KEYWORDS + ["snow", "L3B", "snow cover duration"], scd_item_assets(), S2_PLATFORMS, ["L3B"],
            "2015-09-01T00:00:00Z",
        ),
        CollectionSpec(
            DEM, "Elevation per Sentinel-2 tile (20 m)",
            "A digital elevation model on each tile's 20 m grid (int16 metres), one current item per tile, "
            "registered once (`landsurf dem add TILE FILE`); the snow maps read it for the snowline and pass 2.",
            ["DEM", "elevation", "Sentinel-2 tile grid"], dem_item_assets(), [], ["DEM"], "2000-01-01T00:00:00Z",
        ),
        # Ready for Venµs and Landsat 8 L2A: declared, not created until their readers exist.
        CollectionSpec(
            VENUS_L2A, "Venµs L2A (MUSCATE format)", "Venµs surface reflectance, MUSCATE layout.",
            ["Venus", "MUSCATE", "L2A"], {}, ["venus"], ["L2A"], "2017-08-01T00:00:00Z", enabled=False,
        ),
        CollectionSpec(
            LANDSAT8_L2A, "Landsat 8 L2A (MUSCATE format)", "Landsat 8 OLI surface reflectance, MUSCATE layout.",
            ["Landsat 8", "MUSCATE", "L2A"], {}, ["landsat-8"], ["L2A"], "2013-04-11T00:00:00Z", enabled=False,
        ),
    ]
}

QUERYABLES: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "properties": {
        "eo:cloud_cover": {"title": "Cloud cover (%)", "type": "number", "minimum": 0, "maximum": 100},
        "grid:code": {"title": "Grid cell (MGRS-31TCH)", "type": "string"},
        "platform": {"title": "Platform", "type": "string"},
        "version": {"title": "Product version", "type": "string"},
        "processing:version": {"title": "Processing version", "type": "string"},
        # when the product's metadata was written, just before publication: what subscription feeds follow
        "updated": {"title": "Metadata updated", "type": "string", "format": "date-time"},
    },
}
INDEXED = ["eo:cloud_cover", "grid:code", "platform"]
# pgSTAC settings of every search, kept in its `pgstac_settings` table so that they apply to every client of the
# database (a `pgstac.*` connection setting or a search's `conf` would override them). `context` on: every search
# answer carries `numberMatched`, an exact count (its cost is measured in the catalog benchmark).
SEARCH_SETTINGS = {"context": "on"}


HISTORY_SUFFIX = "-history"


def history_of(spec: CollectionSpec) -> CollectionSpec:
    """Where superseded versions of a collection's products live: out of default searches, still linked."""
    return replace(
        spec, id=spec.id + HISTORY_SUFFIX, title=f"{spec.title} — superseded versions",
        description=f"Earlier versions of products of `{spec.id}`, replaced by a reprocessing. Each item links "
                    "to its successor (`latest-version`).",
        keywords=spec.keywords + ["history"],
    )


def is_history(collection_id: str) -> bool:
    return collection_id.endswith(HISTORY_SUFFIX)


def enabled() -> list[CollectionSpec]:
    current = [c for c in COLLECTIONS.values() if c.enabled]
    return current + [history_of(c) for c in current]


def ensure_collections(conn: psycopg.Connection, specs: list[CollectionSpec] | None = None) -> list[str]:
    """Upsert collections, set their partitioning while they are empty, register queryables and search settings."""
    specs = specs if specs is not None else enabled()
    for spec in specs:
        conn.execute("SELECT pgstac.upsert_collection(%s::jsonb)", (json.dumps(spec.to_dict()),))
        conn.execute(
            "UPDATE pgstac.collections SET partition_trunc = %s WHERE id = %s "
            "AND partition_trunc IS DISTINCT FROM %s "
            "AND NOT EXISTS (SELECT 1 FROM pgstac.items WHERE collection = %s)",
            (spec.partition, spec.id, spec.partition, spec.id),
        )
    ids = [s.id for s in specs]
    conn.execute(
        "SELECT pgstac.upsert_queryables(%s::jsonb, %s::text[], %s::text[], false)",
        (json.dumps(QUERYABLES), ids, INDEXED),
    )
    for name, value in SEARCH_SETTINGS.items():
        conn.execute("INSERT INTO pgstac.pgstac_settings (name, value) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", (name, value))
    return ids


def processing_software() -> dict[str, str]:
    return {"landsurf": __version__}

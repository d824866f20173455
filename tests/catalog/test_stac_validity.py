"""Valid STAC for every client: schemas of every declared extension, offline, on what the pipeline published and
the API serves; GDAL 3.6 and 3.10 STACIT, odc-stac, pystac-client; numberMatched; fields; tiles links; and
stac-api-validator run offline against the live API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timezone

import httpx
import numpy as np
import pystac
import pytest
import rasterio
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses

from catalog.collections import EXTENSIONS, HISTORY_SUFFIX, S2_L2A, STAC_VERSION, enabled
from catalog.database import session
from catalog.stac import FIELDS_MINIMUM
from tests import schemas
from tests.conftest import ROOT

HISTORY = S2_L2A + HISTORY_SUFFIX
# a product of another UTM zone (EPSG:32630) and date than the session's series, in two versions: the older one
# ends in the -history collection. Removed from the catalog when the module ends.
TILE, WHEN = "30TYN", datetime(2023, 8, 20, 10, 50, 31, 250000, tzinfo=timezone.utc)


def get(url: str, **params) -> httpx.Response:
    r = httpx.get(url, params=params or None, timeout=30)  # params={} would drop the URL's own query
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:500]}"
    return r


@pytest.fixture(scope="module")
def versions(api, catalog_settings, tmp_path_factory) -> dict[str, str]:
    """{collection: id} of one product published twice by the pipeline (V1-0, then V1-1)."""
    from ingest.generate import generate_l2a
    from ingest.inbox import take
    from ingest.pipeline import process
    from ingest.settings import IngestSettings

    out = tmp_path_factory.mktemp("versions")
    ingest = IngestSettings()
    made = {}
    for version in ("1-0", "1-1"):
        product = generate_l2a(out / version, TILE, WHEN, seed=7, size=256, version=version)
        outcome = process(catalog_settings, ingest, take(catalog_settings, ingest, product.path).receipt_id)
        assert outcome.status == "published", outcome
        made[version] = product.product_id
    yield {S2_L2A: made["1-1"], HISTORY: made["1-0"]}
    with session(catalog_settings) as conn:
        for collection, item_id in ((S2_L2A, made["1-1"]), (HISTORY, made["1-0"])):
            conn.execute("SELECT pgstac.delete_item(%s, %s)", (item_id, collection))


@pytest.fixture(scope="module")
def served(api, published_items, versions) -> list[dict]:
    """Every pipeline item of the catalog as GET /collections/{c}/items/{id} serves it, history included."""
    items = [get(f"{api.url}/collections/{i['collection']}/items/{i['id']}").json() for i in published_items]
    items += [get(f"{api.url}/collections/{c}/items/{i}").json() for c, i in versions.items()]
    assert {i["collection"] for i in items} == {S2_L2A, HISTORY}
    return items


# ---- JSON schemas -------------------------------------------------------------------------------------------


def test_landing_page_and_every_collection_validate(api):
    landing = get(api.url + "/").json()
    assert schemas.errors(landing) == []
    collections = get(api.url + "/collections").json()["collections"]
    ids = {c["id"] for c in collections}
    assert {s.id for s in enabled()} <= ids and any(i.endswith(HISTORY_SUFFIX) for i in ids)
    problems = [e for c in collections for e in schemas.errors(c)]
    assert problems == []
    l2a = next(c for c in collections if c["id"] == S2_L2A)
    assert EXTENSIONS["render"] in l2a["stac_extensions"] and l2a["renders"]


def test_pipeline_items_validate_as_served(api, served):
    problems = [e for item in served for e in schemas.errors(item)]
    assert problems == [], "\n".join(problems)
    for item in served:
        assert EXTENSIONS["proj"] in item["stac_extensions"] and EXTENSIONS["web-map-links"] in item["stac_extensions"]
    # the same items as a search answers them
    found = get(api.url + "/search", collections=f"{S2_L2A},{HISTORY}", limit=100).json()["features"]
    assert {i["id"] for i in served} <= {f["id"] for f in found}
    assert [e for f in found for e in schemas.errors(f)] == []


def test_the_item_build_item_makes_validates_before_publication(tmp_path):
    """The item as the pipeline builds it, before publication, with its relative collection link."""
    from ingest.cog import write_cogs
    from ingest.generate import generate_l2a
    from ingest.item import build_item
    from ingest.muscate import read_l2a

    product = read_l2a(generate_l2a(tmp_path, "31TCH", WHEN, seed=3, size=256, as_zip=False).path)
    cogs = write_cogs(product, tmp_path / "staging")
    item = build_item(product, cogs, lambda key: f"x/{key}.tif").to_dict(include_self_link=False,
                                                                        transform_hrefs=False)
    assert schemas.errors(item) == []
    assert item["properties"]["proj:epsg"] == 32631 and item["properties"]["proj:code"] == "EPSG:32631"


def test_validation_really_happens():
    """The schemas bite: the eo v2 band name, and proj:epsg under projection v2.0.0, are refused."""
    item = {
        "type": "Feature", "stac_version": STAC_VERSION, "id": "x", "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32631, "proj:code": "EPSG:32631"},
        "links": [], "assets": {"B5": {"href": "b5.tif", "eo:bands": [{"name": "B5", "common_name": "rededge"}]}},
        "stac_extensions": [EXTENSIONS["eo"], EXTENSIONS["proj"]],
    }
    assert schemas.errors(item) == []
    bad_band = json.loads(json.dumps(item))
    bad_band["assets"]["B5"]["eo:bands"][0]["common_name"] = "rededge071"
    assert any("rededge071" in e and "eo/v1.1.0" in e for e in schemas.errors(bad_band))
    proj2 = {**item, "stac_extensions": [EXTENSIONS["eo"],
                                         "https://stac-extensions.github.io/projection/v2.0.0/schema.json"]}
    assert any("projection/v2.0.0" in e for e in schemas.errors(proj2))
    with pytest.raises(schemas.SchemaNotVendored, match="not vendored"):
        schemas.errors({**item, "stac_extensions": ["https://stac-extensions.github.io/nope/v9/schema.json"]})


def test_one_stac_version_throughout(api, served):
    versions = {get(api.url + "/").json()["stac_version"]}
    versions |= {c["stac_version"] for c in get(api.url + "/collections").json()["collections"]}
    versions |= {i["stac_version"] for i in served}
    versions |= {f["stac_version"] for f in get(api.url + "/search", limit=5).json()["features"]}
    assert versions == {STAC_VERSION}


# ---- proj:epsg: GDAL 3.6 (Debian 12, QGIS) and 3.10 (rasterio) ---------------------------------------------


def test_proj_epsg_beside_proj_code(served):
    for item in served:
        for where in [item["properties"], *item["assets"].values()]:
            if "proj:code" in where:
                assert where["proj:epsg"] == int(where["proj:code"].removeprefix("EPSG:")), item["id"]
    assert {i["properties"]["proj:epsg"] for i in served} == {32630, 32631}


DEBIAN_GDALINFO = "/usr/bin/gdalinfo"  # Debian 12's gdal-bin: GDAL 3.6, the one QGIS uses there


def gdalinfo(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which(DEBIAN_GDALINFO), "gdalinfo (Debian package gdal-bin) is missing: run .ci/system-deps.sh"
    return subprocess.run([DEBIAN_GDALINFO, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"})


def test_debian_gdal_36_stacit_finds_the_asset_of_a_search(api, published_items):
    version = gdalinfo("--version").stdout
    assert version.startswith("GDAL 3.6."), f"Debian 12's GDAL is 3.6, this is {version}"
    url = f"{api.url}/search?collections={S2_L2A}&datetime=2024-06-01T00:00:00Z/2024-06-30T23:59:59Z"
    for asset in ("FRE_B4", "FRE_B11"):
        run = gdalinfo("-json", "-mm", f'STACIT:"{url}":asset={asset}')
        assert run.returncode == 0, f"{version}: {run.stderr}"
        info = json.loads(run.stdout)
        assert info["coordinateSystem"]["wkt"].count("32631") and info["bands"][0]["noDataValue"] == -10000
        hrefs = {i["assets"][asset]["href"] for i in published_items}
        assert info["files"] and {f.removeprefix("/vsicurl/") for f in info["files"]} <= hrefs, info["files"]
        assert info["size"] == published_items[0]["assets"][asset]["proj:shape"][::-1]
        assert 0 < info["bands"][0]["computedMax"] < 16000  # pixels read through the /download hrefs
    history = gdalinfo("-json", f'STACIT:"{api.url}/search?collections={HISTORY}":asset=FRE_B4')
    assert history.returncode == 0, history.stderr


def test_gdal_36_needs_proj_epsg(served, tmp_path):
    """The same items without proj:epsg: Debian's GDAL finds no asset. That is why it is served."""
    items = [i for i in served if i["collection"] == S2_L2A and i["properties"]["proj:epsg"] == 32631]
    for name, keep in (("with", True), ("without", False)):
        features = json.loads(json.dumps(items))
        for f in features if not keep else ():
            f["properties"].pop("proj:epsg")
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        run = gdalinfo("-json", f'STACIT:"{path}":asset=FRE_B4')
        assert (run.returncode == 0) is keep, run.stderr
        if not keep:
            assert "No compatible asset" in run.stderr


def test_rasterio_gdal_310_stacit_reads_a_20_m_band(api, versions):
    assert tuple(int(x) for x in rasterio.__gdal_version__.split(".")[:2]) >= (3, 10)
    url = f"{api.url}/search?collections={S2_L2A}&ids={versions[S2_L2A]}"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), \
            rasterio.open(f'STACIT:"{url}":asset=FRE_B11') as ds:
        assert ds.crs.to_epsg() == 32630 and ds.res == (20.0, 20.0)
        data = ds.read(1)
    assert np.median(data[data != -10000]) > 100


def test_odc_stac_finds_the_red_edge_bands_by_name_and_common_name(api, versions):
    import odc.stac

    items = Client.open(api.url + "/").search(ids=[versions[S2_L2A]], collections=[S2_L2A]).item_collection()
    data = odc.stac.load(items, bands=["FRE_B5", "FRE_B6", "FRE_B7", "rededge"], chunks=None)
    b5, b6, b7 = (data[b].isel(time=0).values for b in ("FRE_B5", "FRE_B6", "FRE_B7"))
    assert not np.array_equal(b5, b7) and not np.array_equal(b6, b7)  # three distinct bands
    assert np.median(data["rededge"].isel(time=0).values) > 0


# ---- numberMatched, fields, conformance ----------------------------------------------------------------------


def test_number_matched_in_every_search_and_paging_still_works(api, published_items):
    n = len(published_items)
    for url in (f"{api.url}/search?collections={S2_L2A}&datetime=2024-06-01T00:00:00Z/2024-06-30T23:59:59Z"
                f"&limit=2", f"{api.url}/collections/{S2_L2A}/items?datetime=2024-06-01T00:00:00Z/"
                             "2024-06-30T23:59:59Z&limit=2"):
        ids, pages = [], 0
        while url:
            page = get(url).json()
            assert page["numberMatched"] == n and page["numberReturned"] == len(page["features"])
            ids += [f["id"] for f in page["features"]]
            url = next((ln["href"] for ln in page["links"] if ln["rel"] == "next"), None)
            pages += 1
        assert pages == (n + 1) // 2 and sorted(ids) == sorted(i["id"] for i in published_items)
    body = {"collections": [S2_L2A], "limit": 4, "filter-lang": "cql2-json",
            "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]}}
    r = httpx.post(api.url + "/search", json=body, timeout=30).json()
    assert r["numberMatched"] == sum(i["properties"]["eo:cloud_cover"] < 50 for i in published_items)
    search = Client.open(api.url + "/").search(collections=[S2_L2A], datetime="2024-06", limit=2)
    assert search.matched() == n and len(list(search.items())) == n


def _feature_schema():
    return schemas.validator("https://geojson.org/schema/Feature.json")


@pytest.mark.parametrize("request_", [
    ("GET", {"fields": "properties.eo:cloud_cover"}),
    ("POST", {"fields": {"include": ["properties.eo:cloud_cover"]}}),
    ("POST", {"fields": {"include": ["bbox", "assets"]}}),
    ("POST", {"fields": {"include": ["geometry"], "exclude": ["geometry"]}}),
    ("POST", {"fields": {"exclude": ["properties"], "include": ["properties.platform"]}}),
], ids=lambda r: json.dumps(r[1]))
def test_include_only_answers_are_geojson_that_pystac_parses(api, published_items, request_):
    method, args = request_
    url = api.url + "/search"
    base = {"collections": S2_L2A, "limit": 3}
    r = (httpx.get(url, params={**base, **args}) if method == "GET"
         else httpx.post(url, json={**base, "collections": [S2_L2A], **args}))
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json", r.text[:300]
    body = r.json()
    assert {ln["rel"] for ln in body["links"]} >= {"self", "root", "next"}
    fields = args["fields"]
    include = set(fields.split(",")) if isinstance(fields, str) else set(fields["include"])
    expected_top = {p.split(".")[0] for p in FIELDS_MINIMUM} | {p.split(".")[0] for p in include}
    for feature in body["features"]:
        assert set(feature) == expected_top
        assert list(_feature_schema().iter_errors(feature)) == []
        if "geometry" not in include:
            assert feature["geometry"] is None
        props = {p.split(".", 1)[1] for p in include if p.startswith("properties.")} | {"datetime"}
        assert set(feature["properties"]) == props
    parsed = pystac.ItemCollection.from_dict(body)
    assert len(parsed) == 3 and all(i.datetime for i in parsed)
    assert {i.id for i in parsed} <= {i["id"] for i in published_items}


def test_exclude_answers_and_fields_through_pystac_client(api, published_items):
    r = httpx.post(api.url + "/search", json={"collections": [S2_L2A], "limit": 1,
                                              "fields": {"exclude": ["geometry", "assets"]}})
    feature = r.json()["features"][0]
    assert r.headers["content-type"] == "application/geo+json"
    assert feature["geometry"] is None and "assets" not in feature and "eo:cloud_cover" in feature["properties"]
    assert list(_feature_schema().iter_errors(feature)) == []
    # an empty include with an exclude: the default set, less what is excluded
    r = httpx.post(api.url + "/search", json={"collections": [S2_L2A], "limit": 1,
                                              "fields": {"include": [], "exclude": ["geometry"]}})
    feature = r.json()["features"][0]
    assert set(feature["properties"]) == {"datetime"} and {"id", "assets", "links", "bbox"} <= set(feature)
    # items of one collection, and pystac-client's own fields parameter
    r = httpx.get(f"{api.url}/collections/{S2_L2A}/items", params={"fields": "id,properties.platform", "limit": 2})
    assert r.headers["content-type"] == "application/geo+json"
    assert pystac.ItemCollection.from_dict(r.json()).items[0].properties["platform"].startswith("sentinel-2")
    found = Client.open(api.url + "/").search(collections=[S2_L2A], fields=["properties.eo:cloud_cover"],
                                              max_items=4).item_collection()
    assert len(found) == 4 and all("eo:cloud_cover" in i.properties for i in found)
    # `fields: null` is not a fields object
    r = httpx.post(api.url + "/search", json={"collections": [S2_L2A], "fields": None})
    assert r.status_code == 400 and "fields" in r.text


def test_pystac_client_sees_sort_and_sorts_without_warning(api, published_items):
    client = Client.open(api.url + "/")
    for cc in ("SORT", "FIELDS", "FILTER", "ITEM_SEARCH", "COLLECTIONS", "FEATURES"):
        assert client.conforms_to(ConformanceClasses.get_by_name(cc)), cc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(client.search(collections=[S2_L2A], sortby="-eo:cloud_cover", max_items=6).items())
    assert not [w for w in caught if "DoesNotConformTo" in str(w.message)]
    clouds = [i.properties["eo:cloud_cover"] for i in items]
    assert clouds == sorted(clouds, reverse=True) and len(clouds) == len(published_items)
    conforms = get(api.url + "/conformance").json()["conformsTo"]
    assert {"https://api.stacspec.org/v1.1.0/item-search#sort", "https://api.stacspec.org/v1.0.0/item-search#sort"
            } <= set(conforms)


# ---- links to the tiles -------------------------------------------------------------------------------------


def test_landing_page_links_to_the_tiles_api(api):
    links = get(api.url + "/").json()["links"]
    tiles = [ln for ln in links if ln["href"].startswith(api.url + "/raster/")]
    assert {ln["rel"] for ln in tiles} >= {"service-desc", "service-doc"}
    assert next(ln for ln in links if ln["rel"] == "service-desc")["href"] == api.url + "/api"  # STAC's first
    desc = next(ln for ln in tiles if ln["rel"] == "service-desc")
    assert "/collections/{collection_id}/items/{item_id}" in json.dumps(get(desc["href"]).json()["paths"])
    for ln in tiles:  # each answers with the type its link announces (parameters such as `version=3.0` aside)
        answered = get(ln["href"]).headers["content-type"].replace(" ", "").split(";")
        assert answered[0] == ln["type"].split(";")[0] and set(answered[1:]) >= set(ln["type"].split(";")[1:]), ln


def test_items_link_to_their_tiles_and_preview(api, served, catalog_settings):
    for item in served:
        links = {ln["rel"]: ln for ln in item["links"]}
        tilejson = get(links["tilejson"]["href"]).json()
        prefix = f"{api.url}/raster/collections/{item['collection']}/items/{item['id']}/tiles/WebMercatorQuad/"
        assert tilejson["tiles"][0].startswith(prefix) and tilejson["bounds"]
        preview = get(links["preview"]["href"])
        assert preview.headers["content-type"] == "image/png" and preview.content[:4] == b"\x89PNG"
    # built per request against the public base: nothing of it is stored
    with session(catalog_settings) as conn:
        stored = conn.execute("SELECT count(*) FROM pgstac.items WHERE content::text LIKE '%tilejson%' "
                              "OR content::text LIKE '%/raster/collections/%'").fetchone()[0]
    assert stored == 0


def test_a_tile_of_the_tilejson_has_the_scene(api, versions):
    import morecantile

    item = get(f"{api.url}/collections/{S2_L2A}/items/{versions[S2_L2A]}").json()
    tilejson = get(next(ln["href"] for ln in item["links"] if ln["rel"] == "tilejson")).json()
    lon, lat = (item["bbox"][0] + item["bbox"][2]) / 2, (item["bbox"][1] + item["bbox"][3]) / 2
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 14)
    r = get(tilejson["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y))
    assert r.headers["content-type"] == "image/png"


# ---- stac-api-validator, offline ----------------------------------------------------------------------------

# What the validator reports that is not a fault of this API (docs/architecture.md, "STAC conformance"):
KNOWN = {
    # its sort test POSTs `"collections": "<id>"`, a string where STAC API requires an array (the same body
    # with a list is checked below)
    "sort": re.compile(r"^\[Item Search - Sort Ext\] : POST \S+ params=None body=\{\"sortby\": .*"
                       r"\"collections\": \"[^\"]+\"\} had unexpected status code 400 instead of 200"),
    # it wants at most five members in an include-only answer; ours always carry five (FIELDS_MINIMUM) so they
    # stay GeoJSON Features that pystac parses, so a sixth requested member is over its count
    "fields": re.compile(r"^\[Item Search - Fields Ext\] : (GET fields='\+?|POST \{'fields': \{'include': \[')"
                         r"(bbox|links|assets)'.* response contained more than 5 extra fields"),
    # issue 8 item 2 answers a `limit` over the maximum with a 400 naming it (catalog/limits.py); STAC API says
    # the server serves the maximum instead
    "limit": re.compile(r"^\[Item Search\] : (GET|POST) \S+ params=(\{'limit': \d+\}|None) body=(\{\"limit\": "
                        r"\d+\})? had unexpected status code 400 instead of 200"),
}


def test_the_offline_stac_validator_validates_extensions(served, monkeypatch):
    """What the validator run below relies on: stac-validator, offline, checks every declared extension."""
    import socket

    from tests.schemas import offline_validator

    monkeypatch.setattr(socket, "getaddrinfo", offline_validator._loopback_only)
    item = json.loads(json.dumps(served[0]))
    check = offline_validator.OfflineStacValidate(links=False, assets=False)
    assert check.validate_dict(item), check.message
    item["assets"]["FRE_B5"]["eo:bands"][0]["common_name"] = "rededge071"
    check = offline_validator.OfflineStacValidate(links=False, assets=False)
    assert not check.validate_dict(item) and "rededge071" in json.dumps(check.message)


def test_stac_api_validator_offline(api, published_items):
    box = published_items[0]["bbox"]
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    geometry = {"type": "Polygon", "coordinates": [[[x - .01, y - .01], [x + .01, y - .01], [x + .01, y + .01],
                                                    [x - .01, y + .01], [x - .01, y - .01]]]}
    args = ["--root-url", api.url + "/", "--collection", S2_L2A, "--geometry", json.dumps(geometry),
            "--fields-nested-property", "properties.eo:cloud_cover", "--validate-pagination", "--log-level", "ERROR"]
    for cc in ("core", "features", "item-search", "collections", "filter", "item-search#sort", "item-search#fields"):
        args += ["--conformance", cc]
    run = subprocess.run([sys.executable, "-m", "tests.schemas.offline_validator", *args], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    out = run.stdout
    # it exits 0 even when it crashes: read its report
    assert "Failed." not in out and re.search(r"^Errors:", out, re.M), out[-3000:] + run.stderr[-3000:]
    errors = re.findall(r"^- (.*)$", out.split("\nErrors:", 1)[1], re.M) if "\nErrors:" in out else []
    unexplained = [e for e in errors if not any(p.match(e) for p in KNOWN.values())]
    assert unexplained == [], "\n".join(unexplained)
    sort_errors = [e for e in errors if KNOWN["sort"].match(e)]
    assert len(sort_errors) <= 2
    for direction in ("asc", "desc"):  # the validator's sort request, with collections as the array it must be
        r = httpx.post(api.url + "/search", json={"sortby": [{"field": "properties.datetime", "direction": direction}],
                                                  "limit": 100, "collections": [S2_L2A]})
        dates = [f["properties"]["datetime"] for f in r.json()["features"]]
        assert r.status_code == 200 and dates == sorted(dates, reverse=direction == "desc") and dates

"""The STAC API through a real client (pystac-client) and raw HTTP, on products the pipeline published."""

from __future__ import annotations

import json
import warnings

import httpx
import pytest
from pystac_client import Client

from catalog.collections import S2_L2A

warnings.filterwarnings("ignore", message=".*DoesNotConformTo.*")



def clouds(items: list[dict]) -> list[float]:
    return [i["properties"]["eo:cloud_cover"] for i in items]


@pytest.fixture(scope="module")
def client(api) -> Client:
    return Client.open(api.url + "/")


def test_landing_page_links_use_the_public_base(api, client):
    assert client.id == "landsurf"
    hrefs = [link.href for link in client.links]
    assert hrefs and all(h.startswith(api.url) for h in hrefs)
    conformance = httpx.get(api.url + "/conformance").json()["conformsTo"]
    for needed in ("item-search#filter", "item-search#sort", "item-search#fields", "collection-search"):
        assert any(needed in c for c in conformance), needed


def test_collections_are_declared_with_metadata(api):
    cols = {c["id"]: c for c in httpx.get(api.url + "/collections").json()["collections"]}
    assert {"sentinel2-l2a", "sentinel2-snow", "sentinel2-l3a", "sentinel2-snow-duration"} <= set(cols)
    l2a = cols[S2_L2A]
    assert l2a["license"] and l2a["providers"] and l2a["keywords"]
    assert "FRE_B4" in l2a["item_assets"] and l2a["summaries"]["platform"]
    queryables = httpx.get(f"{api.url}/collections/{S2_L2A}/queryables").json()["properties"]
    assert queryables["eo:cloud_cover"]["type"] == "number"
    assert {"grid:code", "platform", "version"} <= set(queryables)


def test_bbox_and_datetime_search(client, published_items):
    box = published_items[0]["bbox"]
    centre = [(box[0] + box[2]) / 2 - 0.005, (box[1] + box[3]) / 2 - 0.005,
              (box[0] + box[2]) / 2 + 0.005, (box[1] + box[3]) / 2 + 0.005]
    found = client.search(collections=[S2_L2A], bbox=centre, datetime="2024-06-01/2024-06-30").item_collection()
    assert {i.id for i in found} == {i["id"] for i in published_items}
    found = client.search(collections=[S2_L2A], bbox=centre, datetime="2024-06-10/2024-06-20").item_collection()
    assert {i.id for i in found} == {i["id"] for i in published_items[2:4]}
    east = [box[2] + 0.5, box[1], box[2] + 0.6, box[3]]  # beyond the products' footprint
    assert not list(client.search(collections=[S2_L2A], bbox=east).items())


def test_cql2_text_filter_on_cloud_cover(api, published_items):
    r = httpx.get(api.url + "/search", params={"collections": S2_L2A, "filter-lang": "cql2-text",
                                               "filter": "eo:cloud_cover < 20", "limit": 50})
    assert r.status_code == 200
    got = sorted(f["properties"]["eo:cloud_cover"] for f in r.json()["features"])
    assert got == sorted(c for c in clouds(published_items) if c < 20) and 0 < len(got) < len(published_items)


def test_cql2_json_filter_through_pystac_client(client, published_items):
    search = client.search(collections=[S2_L2A], method="POST", filter_lang="cql2-json",
                           filter={"op": "and", "args": [
                               {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 10]},
                               {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]}]})
    got = sorted(i.properties["eo:cloud_cover"] for i in search.items())
    expected = sorted(i["properties"]["eo:cloud_cover"] for i in published_items
                      if i["properties"]["eo:cloud_cover"] >= 10 and i["properties"]["platform"] == "sentinel-2a")
    assert got == expected and 0 < len(got) < len(published_items)


def test_sort_by_cloud_cover_is_numeric(client, published_items):
    values = clouds(published_items)
    assert sorted(values) != sorted(values, key=str), "the data must tell numeric from text order"
    items = list(client.search(collections=[S2_L2A], sortby="+eo:cloud_cover", max_items=10).items())
    assert [i.properties["eo:cloud_cover"] for i in items] == sorted(values)
    items = list(client.search(collections=[S2_L2A], sortby="-eo:cloud_cover", max_items=10).items())
    assert [i.properties["eo:cloud_cover"] for i in items] == sorted(values, reverse=True)


def test_fields_extension_trims_the_response(api):
    r = httpx.post(api.url + "/search", json={"collections": [S2_L2A], "limit": 2,
                                              "fields": {"include": ["properties.eo:cloud_cover"],
                                                         "exclude": ["assets"]}})
    assert r.status_code == 200
    feature = r.json()["features"][0]
    assert "assets" not in feature
    assert "eo:cloud_cover" in feature["properties"] and "platform" not in feature["properties"]


def test_paging_through_three_pages(client, published_items):
    search = client.search(collections=[S2_L2A], limit=2)
    pages = list(search.pages())
    assert len(pages) == 3
    ids = [i.id for page in pages for i in page]
    assert len(ids) == len(set(ids)) == len(published_items)


def test_items_carry_public_hrefs_with_checksums(api, client, published_items):
    item = next(client.search(ids=[published_items[0]["id"]]).items())
    for key, asset in item.assets.items():
        assert asset.href.startswith(api.url + "/download/"), key
        assert asset.extra_fields["file:checksum"].startswith("1220")
        assert asset.extra_fields["file:size"] > 0
    assert item.assets["FRE_B4"].extra_fields["raster:bands"][0]["nodata"] == -10000
    assert item.assets["FRE_B4"].extra_fields["eo:bands"][0]["common_name"] == "red"


@pytest.mark.parametrize(
    "path,params,status,needle",
    [
        ("/search", {"filter": "eo:cloud_cover <<< 3", "filter-lang": "cql2-text"}, 400, ""),
        ("/search", {"bbox": "1,2,3"}, 400, ""),
        ("/search", {"bbox": "a,b,c,d"}, 400, ""),
        ("/search", {"datetime": "not-a-date"}, 400, ""),
        ("/collections/no-such-collection", {}, 404, "no-such-collection"),
        ("/collections/no-such-collection/items", {}, 404, ""),
        ("/collections/sentinel2-l2a/items/no-such-item", {}, 404, ""),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(api, path, params, status, needle):
    r = httpx.get(api.url + path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body.get("description") or body.get("detail")
    assert needle in json.dumps(body)


def test_invalid_cql2_json_is_400(api):
    r = httpx.post(api.url + "/search", json={"filter-lang": "cql2-json",
                                              "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}]}})
    assert r.status_code == 400, r.text


def _new_item(template: dict, suffix: str) -> dict:
    item = json.loads(json.dumps(template))
    item["id"] = item["id"] + suffix
    item["links"] = []
    return item


def test_transactions_need_an_admin_token(api, published_items, admin_token, operator_token):
    item = _new_item(published_items[0], "-tx")
    url = f"{api.url}/collections/{S2_L2A}/items"
    r = httpx.post(url, json=item)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in r.json()["description"]
    r = httpx.post(url, json=item, headers={"Authorization": "Bearer lsf_not-a-real-token"})
    assert r.status_code == 401
    r = httpx.post(url, json=item, headers={"Authorization": f"Bearer {operator_token}"})
    assert r.status_code == 403 and "admin" in r.json()["description"]
    assert httpx.get(f"{url}/{item['id']}").status_code == 404

    r = httpx.post(url, json=item, headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code in (200, 201), r.text
    assert httpx.get(f"{url}/{item['id']}").status_code == 200
    r = httpx.delete(f"{url}/{item['id']}")
    assert r.status_code == 401
    r = httpx.delete(f"{url}/{item['id']}", headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code in (200, 204)
    assert httpx.get(f"{url}/{item['id']}").status_code == 404
    # searching stays anonymous, and POST /search is not a transaction
    assert httpx.post(api.url + "/search", json={"limit": 1}).status_code == 200


def test_health_and_metrics(api, operator_token):
    r = httpx.get(api.url + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True and body["database"] == "up"
    assert body["pgstac_version"] == body["expected_pgstac_version"]
    httpx.get(api.url + "/search", params={"limit": 1})
    assert httpx.get(api.url + "/metrics").status_code == 401  # an operator view
    text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
    assert 'landsurf_http_requests_total{method="GET",route="/search",status="200"}' in text, text[:3000]
    assert "landsurf_http_request_duration_seconds_bucket" in text
    assert "landsurf_database_up 1.0" in text


def test_health_says_when_deliveries_do_not_flow(api, catalog_settings, operator_token):
    """A watcher that died without stopping turns /health `degraded` (the API still serves: 200) and /metrics
    reports it; the public body shows no server path."""
    from catalog.database import session

    ok = httpx.get(api.url + "/health").json()
    assert ok["ingest"]["ok"] is True and ok["status"] == "ok"
    with session(catalog_settings, "admin") as conn:
        conn.execute("INSERT INTO landsurf.inbox_watchers (id, inbox, host, pid, heartbeat_at, untaken, "
                     "oldest_untaken_since) VALUES ('test:1', '/secret/inbox', 'test', 1, now() - interval '1 hour', "
                     "3, now() - interval '2 hours')")
    try:
        r = httpx.get(api.url + "/health")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded" and body["ingest"]["watcher"] == "dead"
        assert body["ingest"]["untaken"] == 3 and body["ingest"]["oldest_untaken_age_s"] >= 7000
        assert "/secret" not in r.text
        text = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {operator_token}"}).text
        assert "landsurf_inbox_watcher_up 0.0" in text and "landsurf_inbox_untaken 3.0" in text
    finally:
        with session(catalog_settings, "admin") as conn:
            conn.execute("DELETE FROM landsurf.inbox_watchers WHERE id = 'test:1'")


def test_an_idle_connection_is_kept_past_uvicorns_default(api):
    """A client pausing between requests (a fuzzer generating a case, QGIS between tiles) reuses its connection:
    at uvicorn's 5 s default the server closed it, and a POST sent at that instant was reset, not retried."""
    import http.client
    import time
    from urllib.parse import urlsplit

    where = urlsplit(api.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        sock = conn.sock
        time.sleep(6.5)
        conn.request("POST", "/search", body=json.dumps({"limit": 1}), headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock, "the server closed the idle connection: the client had to open another"
    finally:
        conn.close()

"""Subscriptions: a saved search as an Atom feed of the products published after it — with a real server, on a
catalog of its own (the session's catalog keeps its six products: other tests count them), products published
by the real pipeline (ingest.inbox.take + ingest.pipeline.process)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import httpx
import pytest

from catalog.auth import create_token
from catalog.collections import S2_L2A
from catalog.database import session
from catalog.embedded import EmbeddedCluster
from catalog.subscriptions import MAX_PER_OWNER
from processing.setup import prepare_database
from tests.conftest import ApiServer, free_port, make_home, settings_for

A = "{http://www.w3.org/2005/Atom}"


def _publish(settings, out, when: datetime) -> str:
    from ingest.generate import generate_l2a
    from ingest.inbox import take
    from ingest.pipeline import process
    from ingest.settings import IngestSettings

    product = generate_l2a(out, "31TCH", when, size=256, seed=3)
    outcome = process(settings, IngestSettings(), take(settings, IngestSettings(), product.path).receipt_id)
    assert outcome.status == "published", outcome
    return outcome.product_id


class World:
    def __init__(self, settings, server, out, before: str) -> None:
        self.settings, self.server, self.out, self.before = settings, server, out, before
        self.url = server.url
        with session(settings) as conn:
            self.tokens = {name: create_token(conn, name, role) for name, role in
                           (("alice", "user"), ("bob", "user"), ("carol", "user"), ("ops", "operator"),
                            ("root", "admin"))}

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def subscribe(self, who: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}/subscriptions", json=body, headers=self.auth(who), timeout=20)


@pytest.fixture(scope="module")
def world():
    home = make_home("landsurf-subs-")
    port = free_port()
    settings = settings_for(home, public_url=f"http://127.0.0.1:{port}", port=port, statement_timeout_ms=3000)
    cluster = EmbeddedCluster(settings)
    cluster.start()
    server = None
    try:
        prepare_database(settings)
        out = home / "deliveries"
        out.mkdir()
        before = _publish(settings, out, datetime(2024, 6, 3, 10, 40, tzinfo=timezone.utc))
        server = ApiServer(settings, port).start()
        yield World(settings, server, out, before)
    finally:
        if server is not None:
            server.stop()
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


def _feed(world: World, feed_url: str, **headers: str) -> tuple[httpx.Response, ET.Element | None]:
    r = httpx.get(feed_url, headers=headers, timeout=20)
    if r.status_code != 200:
        return r, None
    assert r.headers["content-type"].startswith("application/atom+xml")
    root = ET.fromstring(r.content)
    assert root.tag == A + "feed"
    # RFC 4287 4.1.1: a feed has exactly one id, title and updated, an author (here for every entry), a self link
    for tag in ("id", "title", "updated", "author"):
        assert len(root.findall(A + tag)) == 1, tag
    assert root.find(A + "id").text == feed_url
    datetime.fromisoformat(root.find(A + "updated").text.replace("Z", "+00:00"))
    assert [ln.get("href") for ln in root.findall(A + "link") if ln.get("rel") == "self"] == [feed_url]
    for entry in root.findall(A + "entry"):
        for tag in ("id", "title", "updated", "summary"):
            assert len(entry.findall(A + tag)) == 1, tag
        datetime.fromisoformat(entry.find(A + "updated").text.replace("Z", "+00:00"))
    return r, root


def test_writes_need_a_user_token(world):
    body = {"collections": [S2_L2A]}
    r = httpx.post(f"{world.url}/subscriptions", json=body, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert world.subscribe("ops", body).status_code == 403  # an operator token has no subscriptions
    assert httpx.get(f"{world.url}/subscriptions", timeout=10).status_code == 401
    assert httpx.delete(f"{world.url}/subscriptions/{'0' * 32}", timeout=10).status_code == 401
    assert httpx.get(f"{world.url}/subscriptions/{'0' * 32}/feed.atom", timeout=10).status_code == 404
    # documented in /api, so the fuzzer (tests/catalog/test_fuzz.py) and the route enumeration walk them
    paths = httpx.get(f"{world.url}/api", timeout=10).json()["paths"]
    assert {"post", "get"} <= set(paths["/subscriptions"])
    assert "delete" in paths["/subscriptions/{subscription_id}"]
    assert "get" in paths["/subscriptions/{subscription_id}/feed.atom"]


@pytest.mark.parametrize("body,needle", [
    ({"collections": [S2_L2A], "filter": {"op": "frobnicate", "args": [{"property": "eo:cloud_cover"}, 1]}},
     "filter"),
    ({"collections": [S2_L2A], "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, "abc"]}}, "filter"),
    ({"collections": [S2_L2A], "filter": {"op": "s_intersects", "args": [{"property": "geometry"},
                                                                         {"type": "Point"}]}}, "filter"),
    ({"collections": [S2_L2A], "bbox": [0, 43, 1, 200]}, "bbox"),
    ({"collections": [S2_L2A], "bbox": [0, 43, 1]}, "bbox"),
    ({"collections": [S2_L2A], "intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1],
                                                                                  [0, 0]]]}}, "intersects"),
    ({"collections": ["no-such-collection"]}, "no-such-collection"),
    ({"collections": []}, "collections"),
    ({"collections": [S2_L2A], "limit": 5}, "limit"),
    ({"collections": [S2_L2A], "filter": "eo:cloud_cover < 5"}, "filter"),
])
def test_bad_searches_are_400_naming_what(world, body, needle):
    r = world.subscribe("alice", body)
    assert r.status_code == 400, (body, r.status_code, r.text[:300])
    assert needle in r.json()["description"], r.text[:300]


def test_feed_shows_only_products_published_after_it_in_its_area_and_filter(world):
    before = httpx.get(f"{world.url}/collections/{S2_L2A}/items/{world.before}", timeout=10).json()
    assert before["properties"]["eo:cloud_cover"] >= 0
    clear = {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 0]}
    made = {
        "match": world.subscribe("alice", {"title": "31TCH", "collections": [S2_L2A], "bbox": before["bbox"],
                                           "filter": clear}),
        "filtered": world.subscribe("alice", {"collections": [S2_L2A], "bbox": before["bbox"],
                                              "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 0]}}),
        "elsewhere": world.subscribe("alice", {"collections": [S2_L2A], "intersects": {
            "type": "Polygon", "coordinates": [[[140, -30], [141, -30], [141, -29], [140, -29], [140, -30]]]}}),
    }
    feeds = {}
    for name, r in made.items():
        assert r.status_code == 201, (name, r.text[:300])
        assert len(r.json()["id"]) == 32 and r.headers["location"] == r.json()["feed"]
        feeds[name] = r.json()["feed"]
        _, root = _feed(world, feeds[name])
        assert root.findall(A + "entry") == [], name  # the product published before is not in any feed

    after = _publish(world.settings, world.out, datetime(2024, 7, 3, 10, 40, tzinfo=timezone.utc))
    r, root = _feed(world, feeds["match"])
    entries = root.findall(A + "entry")
    self_url = f"{world.url}/collections/{S2_L2A}/items/{after}"
    assert [e.find(A + "id").text for e in entries] == [self_url]
    links = {ln.get("rel"): ln for ln in entries[0].findall(A + "link")}
    assert links["alternate"].get("href") == self_url and links["alternate"].get("type") == "application/geo+json"
    item = httpx.get(links["alternate"].get("href"), timeout=10).json()
    assert item["id"] == after
    assert entries[0].find(A + "updated").text.replace("Z", "+00:00") == \
        datetime.fromisoformat(item["properties"]["updated"].replace("Z", "+00:00")).isoformat()
    assert root.find(A + "updated").text == entries[0].find(A + "updated").text
    thumb = httpx.get(links["enclosure"].get("href"), timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == links["enclosure"].get("type")
    assert "31TCH" in root.find(A + "title").text
    for name in ("filtered", "elsewhere"):
        assert _feed(world, feeds[name])[1].findall(A + "entry") == [], name

    # a feed reader polling again: 304 by ETag and by date
    assert httpx.get(feeds["match"], headers={"If-None-Match": r.headers["etag"]}, timeout=10).status_code == 304
    assert httpx.get(feeds["match"], headers={"If-Modified-Since": r.headers["last-modified"]},
                     timeout=10).status_code == 304
    assert httpx.get(feeds["match"], headers={"If-None-Match": '"stale"'}, timeout=10).status_code == 200


def test_own_subscriptions_listed_deleted_and_capped(world):
    r = world.subscribe("bob", {"collections": [S2_L2A]})
    assert r.status_code == 201, r.text
    mine = r.json()["id"]
    listed = httpx.get(f"{world.url}/subscriptions", headers=world.auth("bob"), timeout=10).json()
    assert [s["id"] for s in listed["subscriptions"]] == [mine]
    others = httpx.get(f"{world.url}/subscriptions", headers=world.auth("alice"), timeout=10).json()
    assert mine not in [s["id"] for s in others["subscriptions"]]
    url = f"{world.url}/subscriptions/{mine}"
    r = httpx.delete(url, headers=world.auth("alice"), timeout=10)
    assert r.status_code == 403 and "not yours" in r.json()["description"]
    assert httpx.get(url + "/feed.atom", timeout=10).status_code == 200
    assert httpx.delete(url, headers=world.auth("bob"), timeout=10).status_code == 204
    assert httpx.get(url + "/feed.atom", timeout=10).status_code == 404
    assert httpx.delete(url, headers=world.auth("bob"), timeout=10).status_code == 404

    for k in range(MAX_PER_OWNER):
        assert world.subscribe("carol", {"collections": [S2_L2A]}).status_code == 201, k
    r = world.subscribe("carol", {"collections": [S2_L2A]})
    assert r.status_code == 429 and str(MAX_PER_OWNER) in r.json()["description"]
    # an admin may delete anyone's
    first = httpx.get(f"{world.url}/subscriptions", headers=world.auth("carol"), timeout=10).json()
    victim = first["subscriptions"][0]["id"]
    assert httpx.delete(f"{world.url}/subscriptions/{victim}", headers=world.auth("root"),
                        timeout=10).status_code == 204
    assert world.subscribe("carol", {"collections": [S2_L2A]}).status_code == 201

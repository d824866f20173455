"""Subscriptions: a saved search as an Atom feed of the products published after it — with a real server, on a
catalog of its own (the session's catalog keeps its six products: other tests count them), products published
by the real pipeline (ingest.inbox.take + ingest.pipeline.process).

Their signed webhooks, end to end on the same catalog (one cluster for both: it is most of the cost): made over
HTTP, delivered by processing/webhooks.py (in this process, then by a real `landsurf worker`) to a real HTTP
receiver on loopback; signatures are checked with an HMAC written here from the Standard Webhooks text, not with
the code under test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import psycopg
import pytest

from catalog.auth import create_token
from catalog.collections import S2_L2A
from catalog.database import resolve_urls, session
from catalog.embedded import EmbeddedCluster
from catalog.settings import WebhookSettings
from catalog.subscriptions import MAX_PER_OWNER
from catalog.webhooks import WebhookRefused, check_url
from processing.setup import prepare_database
from processing.webhooks import deliver, deliver_due
from tests.conftest import ROOT, ApiServer, env_for, free_port, make_home, settings_for

A = "{http://www.w3.org/2005/Atom}"
LOOPBACK = "127.0.0.1/32"
HOOK_ENV = {"LANDSURF_WEBHOOK_ALLOW_HTTP": "true", "LANDSURF_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK}
BACKOFF_S = 0.5
TIMEOUT_S = 2.0


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
        server = ApiServer(settings, port).start(**HOOK_ENV)  # webhooks to the loopback receiver are allowed
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

# ------------------------------------------------------------------------------------------------ webhooks


@pytest.fixture(scope="module")
def receiver():
    rx = Receiver()
    yield rx
    rx.server.shutdown()


class Receiver:
    """An HTTP server recording every request; each path answers the statuses scripted for it, then 200, after
    the delays scripted for it, then at once."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[int]] = {}
        self.delays: dict[str, list[float]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                statuses = receiver.script.get(self.path) or []
                status = statuses.pop(0) if statuses else 200
                delays = receiver.delays.get(self.path) or []
                time.sleep(delays.pop(0) if delays else 0)
                try:
                    self.send_response(status)
                    if status in (301, 302, 307, 308):
                        self.send_header("Location", "/landing")
                    self.send_header("Content-Length", "5")
                    self.end_headers()
                    self.wfile.write(b"nope\n" if status >= 300 else b"okay\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the deliverer stopped waiting (the slow receiver)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.requests if p == path]


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check (standardwebhooks.com): HMAC-SHA256 of "id.timestamp.body" under the base64 key."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.split(",", 1)[1], expected)
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


def _hook(world: World, webhook, **extra) -> httpx.Response:
    return world.subscribe("alice", {"collections": [S2_L2A], "webhook": webhook, **extra})


def _states(world: World) -> dict[str, dict]:
    listed = httpx.get(f"{world.url}/subscriptions", headers=world.auth("alice"), timeout=10)
    assert listed.status_code == 200
    return {s["id"]: s for s in listed.json()["subscriptions"]}


@pytest.mark.parametrize("url,needle", [
    ("http://10.1.2.3/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://127.0.0.2:9/hook", "loopback"),          # loopback, but outside the allowed 127.0.0.1/32
    ("http://[::ffff:10.0.0.1]/hook", "private"),      # an IPv4 address hidden in an IPv6 one
    ("http://0.0.0.0:80/", "unspecified"),
    ("ftp://example.org/hook", "scheme"),
    ("http://user:pw@127.0.0.1/hook", "credentials"),
    ("http://127.0.0.1:99999/hook", "port"),
    (42, "URL"),
])
def test_webhook_receivers_refused_at_creation(world, url, needle):
    r = _hook(world, url)
    assert r.status_code == 400, (url, r.text[:300])
    assert needle in r.json()["description"], r.text[:300]


def test_webhook_loopback_and_http_need_the_settings():
    """Without LANDSURF_WEBHOOK_ALLOWED_NETWORKS a loopback receiver is refused; without
    LANDSURF_WEBHOOK_ALLOW_HTTP a plain http one is."""
    with pytest.raises(WebhookRefused, match="loopback"):
        asyncio.run(check_url("http://127.0.0.1:8080/hook", WebhookSettings(webhook_allow_http=True)))
    with pytest.raises(WebhookRefused, match="private"):
        asyncio.run(check_url("https://192.168.1.10/hook", WebhookSettings()))
    with pytest.raises(WebhookRefused, match="https"):
        asyncio.run(check_url("http://127.0.0.1:8080/hook", WebhookSettings(webhook_allowed_networks=[LOOPBACK])))
    assert asyncio.run(check_url("http://127.0.0.1:8080/h", WebhookSettings(
        webhook_allow_http=True, webhook_allowed_networks=[LOOPBACK]))) == "http://127.0.0.1:8080/h"


def test_webhook_signed_retried_failing_and_never_twice(world, receiver):
    # the deliverer runs in this process with the API's policy (set in its environment by the fixture)
    settings = world.settings.model_copy(update={
        "webhook_allow_http": True, "webhook_allowed_networks": [LOOPBACK], "webhook_backoff_s": BACKOFF_S,
        "webhook_max_attempts": 3, "webhook_timeout_s": TIMEOUT_S})
    rx, api = receiver, world.url
    made = {}
    for name in ("ok", "flaky", "down", "redirect", "rebind", "slow"):
        r = _hook(world, f"{rx.url}/{name}", title=name)
        assert r.status_code == 201, r.text
        hook = r.json()["webhook"]
        assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 32
        assert hook["status"] == "active" and hook["url"] == f"{rx.url}/{name}"
        made[name] = (r.json()["id"], hook["secret"])
    rx.script = {"/flaky": [500], "/down": [500] * 10, "/redirect": [302]}
    ids = {name: sub_id for name, (sub_id, _) in made.items()}
    secrets_ = [secret for _, secret in made.values()]

    # the secret is shown once: not in listings, not in the API's log, not readable by the API's read-only role
    listing = httpx.get(f"{api}/subscriptions", headers=world.auth("alice"), timeout=10).text
    assert ids["ok"] in listing and not any(s in listing for s in secrets_)
    with psycopg.connect(resolve_urls(settings).api) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT secret FROM landsurf_secrets.webhook_secrets")

    # the product published before the subscriptions is not sent
    assert [a.outcome for a in deliver_due(settings)] == ["nothing"] * 6 and rx.requests == []

    after = _publish(settings, world.out, datetime(2024, 7, 13, 10, 40, tzinfo=timezone.utc))

    # DNS rebinding: the deliverer checks the address again, so a policy without loopback refuses to connect
    strict = settings.model_copy(update={"webhook_allowed_networks": []})
    [refused] = deliver(strict, ids["rebind"])
    assert refused.outcome == "failed" and "loopback" in refused.error and rx.at("/rebind") == []

    first = time.monotonic()
    outcomes = {a.subscription: a for a in deliver_due(settings)}
    assert outcomes[ids["ok"]].outcome == "delivered" and outcomes[ids["ok"]].items == [f"{S2_L2A}/{after}"]
    [(headers, body)] = rx.at("/ok")
    assert verify(made["ok"][1], headers, body)
    assert not verify(made["flaky"][1], headers, body)                 # a wrong secret fails
    assert not verify(made["ok"][1], headers, body.replace(after.encode(), b"X" * len(after)))  # so does a change
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60 and headers["webhook-id"].startswith("msg_")
    doc = orjson.loads(body)
    assert doc["type"] == "landsurf.items.published" and doc["data"]["subscription"]["id"] == ids["ok"]
    item_url = f"{api}/collections/{S2_L2A}/items/{after}"
    assert [(i["id"], i["href"]) for i in doc["data"]["items"]] == [(after, item_url)]
    [feature] = doc["data"]["features"]
    assert feature["id"] == after and {"rel": "self", "type": "application/geo+json", "href": item_url} \
        in feature["links"]
    asset = next(iter(feature["assets"].values()))
    assert asset["href"].startswith(api) and httpx.head(asset["href"], timeout=10).status_code == 200
    assert feature["properties"] == httpx.get(item_url, timeout=10).json()["properties"]

    [(failed_headers, _)] = rx.at("/flaky")                             # answered 500
    assert len(rx.at("/down")) == 1 and len(rx.at("/redirect")) == 1 and rx.at("/landing") == []  # not followed
    state = _states(world)
    assert state[ids["ok"]]["webhook"] | {"status": "active", "failures": 0, "delivered": 1, "last_status": 200} \
        == state[ids["ok"]]["webhook"]
    flaky = state[ids["flaky"]]["webhook"]
    assert (flaky["status"], flaky["failures"], flaky["last_status"], flaky["delivered"]) == ("retrying", 1, 500, 0)
    assert "500" in flaky["last_error"] and flaky["next_attempt"] > flaky["last_attempt"]
    assert "redirects are not followed" in state[ids["redirect"]]["webhook"]["last_error"]
    assert len(rx.at("/slow")) == 1
    assert httpx.delete(f"{api}/subscriptions/{ids['redirect']}", headers=world.auth("alice"), timeout=10).status_code == 204

    # within the backoff nothing is tried again; after it, the flaky receiver gets the same message, then never more
    again = deliver_due(settings)
    if time.monotonic() - first < BACKOFF_S * 0.9:
        assert {a.subscription for a in again} <= {ids["ok"], ids["slow"]} and len(rx.at("/flaky")) == 1
    assert _seconds_between(flaky["last_attempt"], flaky["next_attempt"]) == pytest.approx(BACKOFF_S, abs=0.01)
    _sleep_until(max(state[ids[n]]["webhook"]["next_attempt"] for n in ("flaky", "down", "rebind")))
    deliver_due(settings)
    flaky_now = rx.at("/flaky")
    assert len(flaky_now) == 2 and flaky_now[1][0]["webhook-id"] == failed_headers["webhook-id"]
    assert verify(made["flaky"][1], *flaky_now[1]) and len(rx.at("/ok")) == 1
    assert len(rx.at("/rebind")) == 1 and verify(made["rebind"][1], *rx.at("/rebind")[0])
    state = _states(world)
    for name in ("flaky", "rebind"):
        assert (state[ids[name]]["webhook"]["status"], state[ids[name]]["webhook"]["delivered"]) == ("active", 1)

    # the always-down receiver: retried with a doubling wait, then marked failing (JSON and /metrics)
    down = _states(world)[ids["down"]]["webhook"]
    assert (down["status"], down["failures"]) == ("retrying", 2)
    assert _seconds_between(down["last_attempt"], down["next_attempt"]) == pytest.approx(2 * BACKOFF_S, abs=0.01)
    _sleep_until(down["next_attempt"])
    deliver_due(settings)
    assert len(rx.at("/down")) == 3
    down = _states(world)[ids["down"]]["webhook"]
    assert (down["status"], down["failures"], down["delivered"]) == ("failing", 3, 0)
    metrics = httpx.get(f"{api}/metrics", headers=world.auth("ops"), timeout=10).text
    assert 'landsurf_webhooks{status="failing"} 1.0' in metrics
    assert 'landsurf_webhooks{status="active"} 4.0' in metrics

    # a later product, delivered by the periodic task of a real `landsurf worker`: only the new item; the slow
    # receiver answers too late the first time (a failure, though it got the message), so it gets it again, once
    later = _publish(settings, world.out, datetime(2024, 8, 2, 10, 40, tzinfo=timezone.utc))
    seen = {name: len(rx.at(f"/{name}")) for name in ("ok", "flaky", "rebind", "slow")}
    expected = {name: n + (2 if name == "slow" else 1) for name, n in seen.items()}
    rx.delays = {"/slow": [TIMEOUT_S + 0.5]}
    _worker_until(settings, lambda: all(len(rx.at(f"/{n}")) >= expected[n] for n in seen))
    for name in seen:
        got = rx.at(f"/{name}")
        assert [i["id"] for i in orjson.loads(got[-1][1])["data"]["items"]] == [later], name
        assert verify(made[name][1], *got[-1])
    late, again = rx.at("/slow")[-2:]
    assert late[0]["webhook-id"] == again[0]["webhook-id"] and late[1] == again[1]
    slow = _states(world)[ids["slow"]]["webhook"]
    assert (slow["status"], slow["delivered"], slow["failures"]) == ("active", 2, 0)
    assert f"no answer within {TIMEOUT_S:g} s" in (settings.home / "worker.log").read_text()
    assert {name: len(rx.at(f"/{name}")) for name in seen} == expected
    deliver_due(settings)
    assert {name: len(rx.at(f"/{name}")) for name in seen} == expected  # never twice after a 2xx
    assert world.before not in b"".join(b for _, _, b in rx.requests).decode()

    log = (settings.home / f"api-{settings.port}.log").read_text()
    assert not any(s in log for s in secrets_)


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _sleep_until(stamp: str) -> None:
    time.sleep(max(0.0, datetime.fromisoformat(stamp).timestamp() - time.time() + 0.05))


def _worker_until(settings, done, timeout_s: float = 60) -> None:
    """`landsurf worker` (long-running: its periodic deferrer queues the delivery tick) until `done()`."""
    env = env_for(settings, **HOOK_ENV, LANDSURF_WEBHOOK_EVERY_S="1", LANDSURF_WEBHOOK_TIMEOUT_S=str(TIMEOUT_S),
                  LANDSURF_WEBHOOK_BACKOFF_S=str(BACKOFF_S))
    log = settings.home / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "worker"], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("address,refused", [
    ("8.8.8.8", None), ("2606:4700:4700::1111", None),
    ("100.64.0.1", "address"),              # shared (CGNAT) space
    ("224.0.0.251", "multicast"),
    ("2002:7f00:1::1", "loopback"),         # 6to4 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),          # NAT64 of 10.0.0.1…
    ("64:ff9b::808:808", None),             # …and of 8.8.8.8 (what DNS64 answers for a public IPv4 host)
    ("::ffff:169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("fc00::1", "private"),
])
def test_webhook_address_policy(address, refused):
    import ipaddress

    from catalog.webhooks import refusal

    why = refusal(ipaddress.ip_address(address), WebhookSettings())
    assert (why is None) if refused is None else (why is not None and refused in why), why


def test_webhook_item_committed_late_is_still_delivered_once(world, receiver):
    """An item whose `updated` is older than one already delivered (its publication committed later) is sent, and
    the one delivered is not sent again: the reason for the sent keys and the settle window."""
    from catalog.publish import upsert_items

    settings = world.settings.model_copy(update={"webhook_allow_http": True, "webhook_allowed_networks": [LOOPBACK]})
    r = _hook(world, f"{receiver.url}/late")
    assert r.status_code == 201, r.text
    sub_id, secret, created = r.json()["id"], r.json()["webhook"]["secret"], r.json()["created"]
    with session(settings) as conn:
        template = conn.execute("SELECT pgstac.get_item(%s, %s)", (world.before, S2_L2A)).fetchone()[0]

    def commit(item_id: str, updated: datetime) -> None:
        item = {**template, "id": item_id,
                "properties": {**template["properties"], "updated": updated.isoformat().replace("+00:00", "Z")}}
        upsert_items(settings, [item])

    stamped_early = datetime.now(timezone.utc)       # its publication begins…
    assert stamped_early.isoformat() >= datetime.fromisoformat(created.replace("Z", "+00:00")).isoformat()
    commit("late-b", datetime.now(timezone.utc))      # …another one is stamped after it and commits first
    [first] = [a for a in deliver(settings, sub_id) if a.outcome == "delivered"]
    assert first.items == [f"{S2_L2A}/late-b"]
    commit("late-a", stamped_early)                   # the first one commits now, older than what was delivered
    [second] = [a for a in deliver(settings, sub_id) if a.outcome == "delivered"]
    assert second.items == [f"{S2_L2A}/late-a"]
    got = [[i["id"] for i in orjson.loads(body)["data"]["items"]] for _, body in receiver.at("/late")]
    assert got == [["late-b"], ["late-a"]] and all(verify(secret, *req) for req in receiver.at("/late"))
    assert [a.outcome for a in deliver(settings, sub_id)] == ["nothing"] and len(receiver.at("/late")) == 2

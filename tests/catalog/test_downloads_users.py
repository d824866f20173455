"""Downloads with every header (Repr-Digest, ETag, Range, 304, 416), product bundles, download users and their
expiring tokens, and per-user limits (429 + Retry-After) — on real API processes over loopback.

The shared `api` serves downloads publicly; `guarded` is a second `landsurf serve` of the same catalog with
LANDSURF_DOWNLOADS_REQUIRE_TOKEN set, a low per-user rate and no token cache (a revocation is seen at once).
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from urllib.parse import urlsplit

import httpx
import pytest

from catalog.collections import S2_L2A
from catalog.database import session
from catalog.ratelimit import DownloadLimiter
from catalog.users import add_user, issue_token, list_users, revoke_user
from tests.conftest import ApiServer, env_for, free_port, run_cli

RATE, BURST = 4, 8


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def _on(server: ApiServer, href: str) -> str:
    return server.url + urlsplit(href).path


@pytest.fixture(scope="module")
def guarded(catalog_settings, published):
    server = ApiServer(catalog_settings, free_port()).start(
        LANDSURF_DOWNLOADS_REQUIRE_TOKEN="true", LANDSURF_DOWNLOAD_RATE=str(RATE),
        LANDSURF_DOWNLOAD_BURST=str(BURST), LANDSURF_TOKEN_CACHE_S="0")
    yield server
    server.stop()


def _user(catalog_settings, name: str, days: float = 30.0) -> str:
    with session(catalog_settings) as conn:
        add_user(conn, name)
        return issue_token(conn, name, days)[0]


def _age(catalog_settings, token: str, fraction: float) -> None:
    """Move a token's creation back so that `fraction` of its life has passed (1.01: expired)."""
    from catalog.auth import token_hash

    with session(catalog_settings) as conn:
        conn.execute("UPDATE landsurf.user_tokens SET created = now() - (expires - created) * %s, "
                     "expires = now() + (expires - created) * (1 - %s) WHERE token_sha256 = %s",
                     (fraction, fraction, token_hash(token)))


def test_file_answers_carry_digest_validators_and_ranges(api, published_items):
    asset = published_items[1]["assets"]["FRE_B8"]
    href, size = asset["href"], asset["file:size"]
    full = httpx.get(href)
    assert full.status_code == 200 and int(full.headers["content-length"]) == size == len(full.content)
    assert full.headers["repr-digest"] == _digest(full.content)
    assert asset["file:checksum"] == "1220" + base64.b64decode(full.headers["repr-digest"][9:-1]).hex()
    etag = full.headers["etag"]
    head = httpx.head(href)
    assert head.status_code == 200 and head.content == b""
    assert (head.headers["content-length"], head.headers["etag"], head.headers["repr-digest"]) == \
        (str(size), etag, full.headers["repr-digest"])
    not_modified = httpx.get(href, headers={"If-None-Match": f'"other", {etag}'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag and not_modified.headers["repr-digest"] == full.headers["repr-digest"]
    assert httpx.get(href, headers={"If-None-Match": '"other"'}).status_code == 200
    tail = httpx.get(href, headers={"Range": f"bytes={size - 1000}-"})
    assert tail.status_code == 206 and tail.content == full.content[-1000:]
    assert tail.headers["content-range"] == f"bytes {size - 1000}-{size - 1}/{size}"
    assert tail.headers["content-length"] == "1000"
    assert tail.headers["repr-digest"] == full.headers["repr-digest"], "the representation's digest, not the part's"
    suffix = httpx.get(href, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == full.content[-10:]
    past = httpx.get(href, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert "ask for bytes below the size" in past.json()["description"]
    stale = httpx.get(href, headers={"Range": "bytes=0-9", "If-Range": '"an-old-etag"'})
    assert stale.status_code == 200 and stale.content == full.content, "If-Range mismatch: the whole new file"
    fresh = httpx.get(href, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == full.content[:10]


def test_bundle_streams_one_product_as_a_verifiable_zip(api, published_items):
    item = published_items[2]
    url = f"{api.url}/collections/{S2_L2A}/items/{item['id']}/bundle.zip"
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["content-disposition"] == f'attachment; filename="{item["id"]}.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = set(z.namelist())
        inner = z.read(f"{item['id']}/{item['id']}.json")
        checked = 0
        for key, asset in item["assets"].items():
            name = f"{item['id']}/{urlsplit(asset['href']).path.rsplit('/', 1)[1]}"
            assert name in names, (key, sorted(names))
            assert "1220" + hashlib.sha256(z.read(name)).hexdigest() == asset["file:checksum"], key
            checked += 1
    assert checked >= 5
    assert b'"href": "./' in inner and str(api.url).encode() not in inner, "hrefs made relative to the bundle"
    assert httpx.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == r.headers["content-length"]
    missing = httpx.get(f"{api.url}/collections/{S2_L2A}/items/no-such-item/bundle.zip")
    assert missing.status_code == 404 and "check the ids" in missing.text


def test_users_cli_adds_tokens_lists_and_revokes(catalog_settings, guarded):
    env = env_for(catalog_settings)
    assert run_cli("users", "add", "cli-user", env=env).returncode == 0
    again = run_cli("users", "add", "cli-user", env=env)
    assert again.returncode != 0 and "already exists" in again.stderr + again.stdout
    issued = run_cli("users", "token", "cli-user", "--days", "2", env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("lsu_") and "expires" in issued.stderr
    with session(catalog_settings) as conn:
        stored = conn.execute("SELECT token_sha256 FROM landsurf.user_tokens").fetchall()
    assert token not in str(stored) and (hashlib.sha256(token.encode()).hexdigest(),) in stored, "stored hashed"
    listed = run_cli("users", "list", env=env)
    assert "cli-user: active, 1 live token(s)" in listed.stdout, listed.stdout
    who = httpx.get(guarded.url + "/auth/token", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200 and who.json()["name"] == "cli-user" and who.json()["kind"] == "user"
    assert run_cli("users", "revoke", "cli-user", env=env).returncode == 0
    assert "cli-user: revoked" in run_cli("users", "list", env=env).stdout
    gone = httpx.get(guarded.url + "/auth/token", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401 and gone.headers["www-authenticate"] == "Bearer"
    bad = run_cli("users", "add", "no spaces/allowed", env=env)
    assert bad.returncode != 0 and "not allowed" in bad.stderr + bad.stdout


def test_downloads_need_a_token_when_configured_search_and_tiles_do_not(catalog_settings, guarded, published_items,
                                                                      operator_token):
    item = published_items[0]
    href = _on(guarded, item["assets"]["FRE_B4"]["href"])
    bundle = f"{guarded.url}/collections/{S2_L2A}/items/{item['id']}/bundle.zip"
    for url in (href, bundle):
        r = httpx.get(url)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
        assert "landsurf users token" in r.json()["description"]
    assert httpx.get(f"{guarded.url}/search?collections={S2_L2A}&limit=1").status_code == 200
    preview = httpx.get(f"{guarded.url}/raster/collections/{S2_L2A}/items/{item['id']}/preview.png"
                        "?assets=FRE_B4&rescale=0,3000&max_size=64", timeout=30)
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG"), preview.text[:200]
    token = _user(catalog_settings, "alice")
    ok = httpx.get(href, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.headers["repr-digest"]
    assert httpx.head(bundle, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.head(href, headers={"Authorization": f"Bearer {operator_token}"}).status_code == 200
    for bad, why in (("lsu_invented", "unknown or revoked"), (token[:-1] + "x", "unknown or revoked")):
        r = httpx.get(href, headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and why in r.json()["description"]
    r = httpx.get(href, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["description"]


def test_expired_and_revoked_tokens_are_refused_naming_why(catalog_settings, guarded, published_items):
    href = _on(guarded, published_items[0]["assets"]["FRE_B3"]["href"])
    old = _user(catalog_settings, "bob", days=1)
    _age(catalog_settings, old, 1.01)
    r = httpx.get(href, headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401 and "expired" in r.json()["description"]
    refresh = httpx.post(guarded.url + "/auth/refresh", headers={"Authorization": f"Bearer {old}"})
    assert refresh.status_code == 401 and "expired" in refresh.json()["description"]
    with session(catalog_settings) as conn:
        live = issue_token(conn, "bob", 1)[0]
    assert httpx.head(href, headers={"Authorization": f"Bearer {live}"}).status_code == 200
    with session(catalog_settings) as conn:
        assert revoke_user(conn, "bob") == 1
        assert next(u for u in list_users(conn) if u["name"] == "bob")["revoked"] is not None
    r = httpx.head(href, headers={"Authorization": f"Bearer {live}"})
    assert r.status_code == 401
    with session(catalog_settings) as conn, pytest.raises(Exception, match="revoked"):
        issue_token(conn, "bob", 1)


def test_a_token_is_refreshed_once_in_its_second_half(catalog_settings, guarded, published_items):
    href = _on(guarded, published_items[0]["assets"]["FRE_B2"]["href"])
    token = _user(catalog_settings, "carol", days=10)
    auth = {"Authorization": f"Bearer {token}"}
    early = httpx.post(guarded.url + "/auth/refresh", headers=auth)
    assert early.status_code == 400 and "second half" in early.json()["description"]
    info = httpx.get(guarded.url + "/auth/token", headers=auth).json()
    assert info["refresh_from"] < info["expires"]
    _age(catalog_settings, token, 0.6)
    fresh = httpx.post(guarded.url + "/auth/refresh", headers=auth)
    assert fresh.status_code == 200, fresh.text
    new = fresh.json()["token"]
    assert new != token and fresh.headers["cache-control"] == "no-store"
    assert fresh.json()["expires"] > info["expires"], "a new token of the same lifetime, from now"
    assert httpx.head(href, headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert httpx.head(href, headers=auth).status_code == 200, "the old token lives until its own expiry"
    twice = httpx.post(guarded.url + "/auth/refresh", headers=auth)
    assert twice.status_code == 400 and "already refreshed" in twice.json()["description"]
    admin_like = httpx.post(guarded.url + "/auth/refresh", headers={"Authorization": "Bearer lsf_nope"})
    assert admin_like.status_code == 401


def test_a_user_over_its_rate_gets_429_with_retry_after(catalog_settings, guarded, published_items):
    href = _on(guarded, published_items[3]["assets"]["FRE_B4"]["href"])
    auth = {"Authorization": f"Bearer {_user(catalog_settings, 'dave')}"}
    other = {"Authorization": f"Bearer {_user(catalog_settings, 'erin')}"}
    with httpx.Client(headers=auth) as client:
        codes = [client.get(href) for _ in range(BURST + 6)]
    statuses = [r.status_code for r in codes]
    assert statuses[:BURST] == [200] * BURST, statuses
    limited = [r for r in codes if r.status_code == 429]
    assert limited, statuses
    for r in limited:
        assert 1 <= int(r.headers["retry-after"]) <= 2 and "requests per second" in r.json()["description"]
    assert httpx.head(href, headers=other).status_code == 200, "limits are per user"
    import time
    time.sleep(int(limited[-1].headers["retry-after"]) + 0.1)
    assert httpx.head(href, headers=auth).status_code == 200, "served again after Retry-After"


def test_limiter_caps_downloads_in_flight_per_user():
    limiter = DownloadLimiter(rate=1000, burst=1000, concurrency=2)
    assert limiter.admit("user:a", now=0) is None and limiter.admit("user:a", now=0) is None
    refused = limiter.admit("user:a", now=0)
    assert refused is not None and refused.retry_after == 1 and "already in progress" in refused.reason
    assert limiter.admit("user:b", now=0) is None, "another user is not held up"
    limiter.release("user:a")
    assert limiter.admit("user:a", now=0) is None
    slow = DownloadLimiter(rate=0.5, burst=1, concurrency=10)
    assert slow.admit("u", now=0) is None
    slow.release("u")
    late = slow.admit("u", now=0.5)
    assert late is not None and late.retry_after == 2

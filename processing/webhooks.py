"""Delivery of subscriptions' webhooks: a procrastinate periodic task POSTs to each receiver the items its saved
search matches that were published since its cursor, signed the Standard Webhooks way (catalog/webhooks.py).

Why a cursor *and* a set of sent keys: an item's `updated` is stamped before its publication commits, so items
do not become visible in `updated` order; a plain "updated > last one sent" cursor would skip an item whose commit
came late. So the search looks back from the cursor, and the keys (collection, id, updated) of items acknowledged
at or after the cursor are kept in `landsurf.webhook_sent` and never sent again. The cursor only moves after a
2xx (or when nothing was left to send), and never past `now - LANDSURF_WEBHOOK_SETTLE_S` nor past an item still
to send; sent keys older than the cursor are dropped. Delivery is at-least-once until a 2xx is recorded (a crash
between the receiver's 2xx and the commit sends the batch again, with the same `webhook-id`), exactly once after.

An item re-published with a new `updated` (a new version under the same id, a metadata update) is news: it is
delivered again. A failed attempt (no answer in the timeout, a non-2xx, a redirect — never followed — or an
address refused) counts a failure and waits `LANDSURF_WEBHOOK_BACKOFF_S` × 2^(failures − 1), at most
`LANDSURF_WEBHOOK_BACKOFF_MAX_S`; after `LANDSURF_WEBHOOK_MAX_ATTEMPTS` failures in a row the webhook is
`failing` (its subscription's JSON, /metrics) and is still tried at that pace: the first 2xx makes it `active`.

SSRF: every connection resolves the receiver's name, refuses it unless all its addresses are allowed, and connects
to a vetted address (`VettedBackend`): a name re-pointed to 127.0.0.1 after the subscription was checked is
refused at delivery. No proxy from the environment is used (it would connect for us, unchecked).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpcore
import httpx
import orjson
import psycopg

from catalog.database import connect, resolve_urls, session
from catalog.errors import LandsurfError
from catalog.logging import get_logger
from catalog.settings import CatalogSettings
from catalog.store import api_path
from catalog.subscriptions import parse_time
from catalog.webhooks import WebhookRefused, parse_url, resolve, sign, vet
from processing.queue import WEBHOOK_QUEUE

log = get_logger(__name__)

WEBHOOK_TASK = "processing.webhooks"
EVENT_TYPE = "landsurf.items.published"
SCAN = 1000            # item keys looked at per round, from the cursor on
ROUNDS = 5             # batches sent to one receiver per tick (more wait for the next tick)
DUE_PER_TICK = 500     # subscriptions looked at per tick
TICK_BUDGET_S = 60.0   # no new subscription is started after this long in one tick
ERROR_CHARS = 300
USER_AGENT = "landsurf-webhooks"


@dataclass
class Attempt:
    """What one round did for one subscription (for logs, the task's result and the tests)."""

    subscription: str
    outcome: str                        # delivered | nothing | failed | busy | not-due | gone
    items: list[str] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    more: bool = False                  # items were left for another round


# ------------------------------------------------------------------------------------------------ transport


class VettedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to addresses the webhook policy allows, resolved here (so the
    address checked is the address connected to; TLS still verifies and sends the URL's host name)."""

    def __init__(self, settings: CatalogSettings) -> None:
        super().__init__()
        self.settings = settings

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        addresses = vet(host, resolve(host, port), self.settings)
        last: Exception | None = None
        for ip in addresses:
            try:
                return super().connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                           socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


def client(settings: CatalogSettings) -> httpx.Client:
    """An httpx client for deliveries: vetted addresses, bounded phases, no redirects, no environment proxies."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # httpx offers no public hook for the network backend
        ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=4, max_keepalive_connections=0,
        network_backend=VettedBackend(settings))
    return httpx.Client(transport=transport, timeout=httpx.Timeout(settings.webhook_timeout_s),
                        follow_redirects=False, trust_env=False, headers={"user-agent": USER_AGENT})


# ------------------------------------------------------------------------------------------------ messages


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


Key = tuple[str, str, datetime]  # collection, item id, updated


def message_id(subscription: str, keys: list[Key]) -> str:
    """The same batch has the same id on every attempt (receivers may de-duplicate by it)."""
    digest = hashlib.sha256(subscription.encode())
    for collection, item_id, updated in keys:
        digest.update(f"|{collection}/{item_id}@{_iso(updated)}".encode())
    return "msg_" + digest.hexdigest()[:32]


def body_of(sub: dict[str, Any], keys: list[Key], features: list[dict[str, Any]], base: str,
            max_bytes: int) -> tuple[bytes, list[Key]]:
    """The JSON body and the keys it carries: ids and self links always, the full items when they fit in
    `max_bytes`; if even the references do not fit, fewer items (the rest go in the next batch)."""
    from catalog.stac import render_item

    full = {(f.get("collection"), f.get("id")): f for f in features}
    while True:
        refs = [{"id": i, "collection": c, "updated": _iso(u),
                 "href": base + api_path("collections", c, "items", i)} for c, i, u in keys]
        data: dict[str, Any] = {
            "subscription": {"id": sub["id"], "title": sub["title"],
                             "feed": f"{base}/subscriptions/{sub['id']}/feed.atom"},
            "items": refs}
        items = []
        for c, i, _ in keys:
            if (c, i) in full:
                item = render_item(orjson.loads(orjson.dumps(full[(c, i)])), base)
                item["links"] = [ln for ln in item.get("links") or [] if ln.get("rel") not in ("self", "collection")]
                item["links"] += [{"rel": "self", "type": "application/geo+json",
                                   "href": base + api_path("collections", c, "items", i)},
                                  {"rel": "collection", "type": "application/json",
                                   "href": base + api_path("collections", c)}]
                items.append(item)
        # the event's time — the newest item's `updated` — so a retried batch is the same bytes (only the headers'
        # webhook-timestamp, and so the signature, change)
        payload = {"type": EVENT_TYPE, "timestamp": _iso(max(u for _, _, u in keys)),
                   "data": {**data, "features": items}}
        body = orjson.dumps(payload)
        if len(body) <= max_bytes:
            return body, keys
        payload["data"] = {**data, "features_omitted": True}
        body = orjson.dumps(payload)
        if len(body) <= max_bytes or len(keys) == 1:
            return body, keys
        keys = keys[: len(keys) // 2]


def headers_for(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    stamp = int(time.time())
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, body)}


# ------------------------------------------------------------------------------------------------ one round


ROW = ("SELECT s.id, s.title, s.search, s.created, w.url, w.cursor, w.failures, now() AS now, k.secret "
       "FROM landsurf.webhooks w JOIN landsurf.subscriptions s ON s.id = w.subscription_id "
       "JOIN landsurf_secrets.webhook_secrets k ON k.subscription_id = s.id "
       "WHERE w.subscription_id = %s AND w.next_attempt <= now()")


def _pending(conn: psycopg.Connection, sub: dict[str, Any]) -> tuple[list[Key], bool, datetime | None]:
    """The keys of the matching items at or after the cursor not acknowledged yet, oldest first; whether the scan
    was cut at SCAN items, and the `updated` of the last one it saw."""
    since = {"op": ">=", "args": [{"property": "updated"}, {"timestamp": _iso(sub["cursor"])}]}
    search = sub["search"]
    flt = {"op": "and", "args": [search["filter"], since]} if "filter" in search else since
    probe = {**search, "filter": flt, "filter-lang": "cql2-json", "limit": SCAN,
             "fields": {"include": ["id", "collection", "properties.updated"]},
             "sortby": [{"field": "properties.updated", "direction": "asc"}, {"field": "id", "direction": "asc"}]}
    found = conn.execute("SELECT pgstac.search(%s::text::jsonb)", (orjson.dumps(probe).decode(),)).fetchone()[0]
    features = (found or {}).get("features") or []
    keys = []
    for f in features:
        updated = parse_time((f.get("properties") or {}).get("updated"))
        if updated is not None and isinstance(f.get("id"), str) and isinstance(f.get("collection"), str):
            keys.append((f["collection"], f["id"], updated))
    sent = {(c, i, u) for c, i, u in conn.execute(
        "SELECT collection, item_id, updated FROM landsurf.webhook_sent WHERE subscription_id = %s",
        (sub["id"],)).fetchall()}
    return [k for k in keys if k not in sent], len(features) >= SCAN, keys[-1][2] if keys else None


def _boundary(sub: dict[str, Any], settle_s: float, left: list[Key], truncated: bool,
              last_scanned: datetime | None) -> datetime:
    """How far the cursor may move: not past an item still to send, nor past what the scan did not see, nor past
    the settle horizon (an item stamped before it may still be committing)."""
    limits = [sub["now"] - timedelta(seconds=settle_s)]
    if left:
        limits.append(left[0][2])
    if truncated and last_scanned is not None:
        limits.append(last_scanned)
    return max(sub["cursor"], min(limits))


def _features(conn: psycopg.Connection, keys: list[Key]) -> list[dict[str, Any]]:
    search = {"collections": sorted({c for c, _, _ in keys}), "ids": sorted({i for _, i, _ in keys}),
              "limit": len(keys) * 2}
    found = conn.execute("SELECT pgstac.search(%s::text::jsonb)", (orjson.dumps(search).decode(),)).fetchone()[0]
    return list((found or {}).get("features") or [])


def _post(settings: CatalogSettings, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    """The receiver's status (None: no answer) and, unless 2xx, why the attempt failed (bounded, secret-free)."""
    try:
        with client(settings) as http, http.stream("POST", url, content=body, headers=headers) as response:
            excerpt = b""
            for chunk in response.iter_bytes():  # a bounded look at the answer, for the owner's diagnosis
                excerpt += chunk
                if len(excerpt) >= 200:
                    break
            status = response.status_code
            if 200 <= status < 300:
                return status, None
            if 300 <= status < 400:
                return status, f"HTTP {status}: redirects are not followed (Location: " \
                               f"{response.headers.get('location', '')[:120]})"
            text = excerpt[:200].decode("utf-8", "replace").replace("\n", " ").strip()
            return status, f"HTTP {status}" + (f": {text}" if text else "")
    except WebhookRefused as exc:
        return None, f"refused: {exc.problem}"
    except httpx.TimeoutException as exc:
        return None, f"no answer within {settings.webhook_timeout_s:g} s ({type(exc).__name__})"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _round(conn: psycopg.Connection, settings: CatalogSettings, sub_id: str) -> Attempt:
    row = conn.execute(ROW, (sub_id,)).fetchone()
    if row is None:
        return Attempt(sub_id, "not-due")
    sub = dict(zip(("id", "title", "search", "created", "url", "cursor", "failures", "now", "secret"), row))
    pending, truncated, last_scanned = _pending(conn, sub)
    batch = pending[: settings.webhook_max_items]
    if not batch:
        cursor = _boundary(sub, settings.webhook_settle_s, [], truncated, last_scanned)
        with conn.transaction():
            conn.execute("UPDATE landsurf.webhooks SET cursor = %s WHERE subscription_id = %s", (cursor, sub_id))
            conn.execute("DELETE FROM landsurf.webhook_sent WHERE subscription_id = %s AND updated < %s",
                         (sub_id, cursor))
        return Attempt(sub_id, "nothing")
    base = settings.base_url
    body, batch = body_of(sub, batch, _features(conn, batch), base, settings.webhook_max_body_bytes)
    msg_id = message_id(sub_id, batch)
    try:
        parse_url(sub["url"], settings)  # the policy may have tightened since the subscription was saved
        status, error = _post(settings, sub["url"], body, headers_for(sub["secret"], msg_id, body))
    except WebhookRefused as exc:
        status, error = None, f"refused: {exc.problem}"
    names = [f"{c}/{i}" for c, i, _ in batch]
    if error is None:
        left = pending[len(batch):]
        cursor = _boundary(sub, settings.webhook_settle_s, left, truncated, last_scanned)
        with conn.transaction():
            done = conn.execute(
                "UPDATE landsurf.webhooks SET cursor = greatest(cursor, %s), status = 'active', failures = 0, "
                "next_attempt = now(), last_attempt = now(), last_success = now(), last_status = %s, "
                "last_error = NULL, delivered = delivered + %s WHERE subscription_id = %s",
                (cursor, status, len(batch), sub_id)).rowcount
            if done:
                conn.execute(
                    "INSERT INTO landsurf.webhook_sent (subscription_id, collection, item_id, updated) "
                    "SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) ON CONFLICT DO NOTHING",
                    (sub_id, [c for c, _, _ in batch], [i for _, i, _ in batch], [u for _, _, u in batch]))
                conn.execute("DELETE FROM landsurf.webhook_sent WHERE subscription_id = %s AND updated < %s",
                             (sub_id, cursor))
        log.info("webhook delivered", subscription=sub_id, items=len(batch), status=status, webhook_id=msg_id)
        return Attempt(sub_id, "delivered" if done else "gone", names, status, more=bool(left) or truncated)
    error = error[:ERROR_CHARS]
    conn.execute(
        "UPDATE landsurf.webhooks SET failures = failures + 1, "
        "status = CASE WHEN failures + 1 >= %s THEN 'failing' ELSE 'retrying' END, "
        "next_attempt = now() + make_interval(secs => least(%s * power(2, failures), %s)), "
        "last_attempt = now(), last_status = %s, last_error = %s WHERE subscription_id = %s",
        (settings.webhook_max_attempts, settings.webhook_backoff_s, settings.webhook_backoff_max_s, status, error,
         sub_id))
    log.warning("webhook delivery failed", subscription=sub_id, items=len(batch), status=status, error=error,
                failures=sub["failures"] + 1, webhook_id=msg_id)
    return Attempt(sub_id, "failed", names, status, error)


def deliver(settings: CatalogSettings, sub_id: str) -> list[Attempt]:
    """The rounds of one subscription, one deliverer at a time (a session advisory lock), until nothing is left,
    a round fails, or ROUNDS rounds were made."""
    conn = connect(resolve_urls(settings).ingest, settings)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"webhook|{sub_id}",)).fetchone()
        if not got[0]:
            return [Attempt(sub_id, "busy")]
        out = []
        for _ in range(ROUNDS):
            out.append(_round(conn, settings, sub_id))
            if out[-1].outcome != "delivered" or not out[-1].more:
                break
        return out
    finally:
        conn.close()  # releases the advisory lock


def deliver_due(settings: CatalogSettings) -> list[Attempt]:
    """One tick: every webhook whose next attempt is due, `LANDSURF_WEBHOOK_CONCURRENCY` receivers at once."""
    with session(settings, "ingest") as conn:
        due = [r[0] for r in conn.execute(
            "SELECT subscription_id FROM landsurf.webhooks WHERE next_attempt <= now() ORDER BY next_attempt "
            "LIMIT %s", (DUE_PER_TICK,)).fetchall()]
    if not due:
        return []
    deadline = time.monotonic() + TICK_BUDGET_S

    def one(sub_id: str) -> list[Attempt]:
        if time.monotonic() > deadline:
            return []  # the next tick takes it
        try:
            return deliver(settings, sub_id)
        except (LandsurfError, psycopg.Error) as exc:  # one subscription's fault does not stop the others
            log.warning("webhook round failed", subscription=sub_id, error=str(exc)[:300])
            return [Attempt(sub_id, "failed", error=str(exc)[:ERROR_CHARS])]

    with ThreadPoolExecutor(max_workers=min(settings.webhook_concurrency, len(due)),
                            thread_name_prefix="webhook") as pool:
        return [a for attempts in pool.map(one, due) for a in attempts]


def register(app, settings: CatalogSettings) -> None:
    """The delivery task on `app` (processing/queue.py); `schedule` makes it periodic."""

    # a queueing lock (one tick waiting), no job lock: ticks of several workers may overlap — each subscription has
    # its advisory lock — and a worker killed mid-tick leaves no lock behind to block the next ones
    @app.task(name=WEBHOOK_TASK, queue=WEBHOOK_QUEUE, queueing_lock=WEBHOOK_TASK)
    def deliver_webhooks(timestamp: int) -> str:
        try:
            attempts = deliver_due(settings)
        except (LandsurfError, psycopg.Error) as exc:  # the next tick tries again; no failed job row per tick
            log.warning("webhook tick skipped", error=str(exc).strip()[:300])
            return "skipped: " + type(exc).__name__
        counts: dict[str, int] = {}
        for a in attempts:
            counts[a.outcome] = counts.get(a.outcome, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing due"


def schedule(app, settings: CatalogSettings) -> None:
    """Defer the delivery task every `LANDSURF_WEBHOOK_EVERY_S` seconds from this worker (procrastinate's periodic
    deferrer; several workers defer each tick once). Only long-running workers that drain the `webhooks` queue
    call it: a one-shot worker would leave a job nobody takes."""
    task = app.tasks[WEBHOOK_TASK]
    if not any(p.task is task for p in app.periodic_registry.periodic_tasks.values()):
        app.periodic(cron=f"* * * * * */{settings.webhook_every_s}", periodic_id="webhooks")(task)

"""`landsurf download`: every product a STAC search finds, fetched resumably and verified, from any STAC API whose
assets carry `file:checksum` (landsurf's, or another).

Why not only `stac-asset` (evaluated, docs/operations.md "Bulk download"): it downloads the assets of items it is
given, in parallel, with retries — but it has no search paging, no resume of a partial file (an interrupted
transfer starts again from byte 0), no checksum verification and no token refresh, which are the point here.
Searching pages through `rel=next` links (GET or POST, `merge`) is a few lines of httpx, already a dependency.

What a run does, per file: a complete file that the manifest vouches for (same size, mtime and checksum) is
skipped; a file on disk the manifest does not know, or `--verify-existing`, is hashed and kept only when it matches
(a corrupted file is fetched again); otherwise bytes go to `<name>.part` and an interrupted transfer goes on with
`Range: bytes=<have>-` (and `If-Range`, so a file that changed meanwhile is fetched whole), then the whole file is
hashed against `file:checksum` (or the server's RFC 9530 `Repr-Digest` when the item has none) before it takes
its final name. Errors of the network, 5xx and 429 are retried with exponential backoff (429/503 wait
`Retry-After`); a 401 refreshes the token once and retries. One failed file fails its product, not the batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

import httpx
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from catalog.errors import BadRequest

PAGE = 100
CHUNK = 1 << 20
MANIFEST = "manifest.jsonl"
MAX_WAIT_S = 60.0
USER_AGENT = "landsurf-download/1"
# multihash codes (https://github.com/multiformats/multicodec) → hashlib name, digest length
HASHES = {0x12: ("sha256", 32), 0x13: ("sha512", 64), 0x11: ("sha1", 20), 0xD5: ("md5", 16),
          0xB220: ("blake2b_256", 32)}


class DownloadError(BadRequest):
    """A download that cannot be done as asked (bad option, search refused)."""


class FileFailed(Exception):
    """One file could not be fetched and verified: the reason, for the report and the manifest."""


# -- what to fetch ---------------------------------------------------------------------------------------------

@dataclass
class Query:
    collections: list[str] = field(default_factory=list)
    tiles: list[str] = field(default_factory=list)
    bbox: str | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    ids: list[str] = field(default_factory=list)
    limit: int | None = None

    def body(self, page: int = PAGE) -> dict[str, Any]:
        """The POST /search body (STAC API item search + CQL2-JSON filter for cloud cover and tiles)."""
        body: dict[str, Any] = {"limit": page}
        if self.collections:
            body["collections"] = list(self.collections)
        if self.ids:
            body["ids"] = list(self.ids)
        if self.bbox:
            body["bbox"] = parse_bbox(self.bbox)
        if self.datetime:
            body["datetime"] = parse_datetime(self.datetime)
        if (cql := self.filter()) is not None:
            body["filter"], body["filter-lang"] = cql, "cql2-json"
        return body

    def filter(self) -> dict[str, Any] | None:
        parts: list[dict[str, Any]] = []
        if self.max_cloud is not None:
            parts.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, self.max_cloud]})
        if self.tiles:
            parts.append({"op": "in", "args": [{"property": "grid:code"}, [f"MGRS-{t}" for t in self.tile_codes()]]})
        return None if not parts else parts[0] if len(parts) == 1 else {"op": "and", "args": parts}

    def tile_codes(self) -> list[str]:
        codes = []
        for t in self.tiles:
            code = t.upper().removeprefix("MGRS-").removeprefix("T") if len(t) > 5 else t.upper()
            if not re.fullmatch(r"\d{1,2}[C-X][A-Z]{2}", code):
                raise DownloadError(f"--tile {t!r} is not an MGRS tile", "write it as 31TCH (zone, band, square)")
            codes.append(code.zfill(5))
        return codes

    def matches(self, item: dict[str, Any]) -> bool:
        """The filter applied again on the client: for APIs without the filter extension."""
        props = item.get("properties") or {}
        cloud = props.get("eo:cloud_cover")
        if self.max_cloud is not None and cloud is not None and cloud > self.max_cloud:
            return False
        if self.tiles:
            mgrs = f"{props.get('mgrs:utm_zone', '')}{props.get('mgrs:latitude_band', '')}" \
                   f"{props.get('mgrs:grid_square', '')}"
            found = {str(props.get("grid:code", "")).removeprefix("MGRS-"), str(props.get("s2:mgrs_tile", "")),
                     mgrs.zfill(5) if mgrs else ""}
            if not found & set(self.tile_codes()):
                return False
        return True


def parse_bbox(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not (-180 <= values[0] <= 180 and -90 <= values[1] < values[3] <= 90):
        raise DownloadError(f"--bbox {text!r} is not west,south,east,north in degrees", "e.g. --bbox 0.5,43,1.5,44")
    return values


def parse_datetime(text: str) -> str:
    """An RFC 3339 instant or interval; a bare date is a whole day (2024-06-01/2024-06-30 includes the 30th)."""
    ends = text.split("/")
    if len(ends) > 2:
        raise DownloadError(f"--datetime {text!r} has more than two ends", "write a/b, ../b or a/..")
    if len(ends) == 1 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        ends = [text, text]
    out = []
    for n, end in enumerate(ends):
        if end in ("", ".."):
            out.append("..")
            continue
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", end):
            end += "T23:59:59.999Z" if n == 1 else "T00:00:00Z"
        try:
            datetime.fromisoformat(end.replace("Z", "+00:00"))
        except ValueError:
            raise DownloadError(f"--datetime end {end!r} is not a date or RFC 3339 instant",
                                "e.g. 2024-06-01/2024-06-30 or 2024-06-03T10:00:00Z") from None
        out.append(end)
    return "/".join(out)


def parse_checksum(value: Any) -> tuple[str, str] | None:
    """(hashlib name, hex digest) of a `file:checksum` multihash; None when absent or of an unknown algorithm."""
    if not isinstance(value, str):
        return None
    try:
        raw = bytes.fromhex(value)
        code, i = _varint(raw, 0)
        length, i = _varint(raw, i)
    except (ValueError, IndexError):
        return None
    if code not in HASHES or HASHES[code][1] != length or len(raw) - i != length:
        return None
    return HASHES[code][0], raw[i:].hex()


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = raw[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def repr_digest(header: str | None) -> tuple[str, str] | None:
    """The sha-256 of an RFC 9530 `Repr-Digest` header, as (hashlib name, hex)."""
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                return "sha256", base64.b64decode(value[1:-1]).hex()
            except ValueError:
                return None
    return None


# -- tokens ----------------------------------------------------------------------------------------------------

class TokenSource:
    """The bearer token, sent to the API's origin only: from an option, a file (rewritten when refreshed) or a
    command. A landsurf token is refreshed in the second half of its life (`POST /auth/refresh`), and on a 401
    the command is run again (other APIs' token services) or the refresh tried."""

    def __init__(self, token: str | None = None, token_file: Path | None = None, command: str | None = None) -> None:
        self.token_file, self.command = token_file, command
        self.token = token or (token_file.read_text().strip() if token_file and token_file.exists() else None)
        self.refresh_from: datetime | None = None
        self.generation = 0
        self.refreshes = 0
        self._lock = threading.Lock()
        if self.token is None and command:
            self.token = self._from_command()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, client: httpx.Client, api: str) -> None:
        """Learn when the token may be refreshed (landsurf's `/auth/token`; other APIs: nothing to learn)."""
        if not self.token:
            return
        try:
            r = client.get(api + "/auth/token", headers=self.headers())
        except httpx.HTTPError:
            return
        if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get("refresh_from"):
            self.refresh_from = datetime.fromisoformat(r.json()["refresh_from"])

    def maybe_refresh(self, client: httpx.Client, api: str) -> None:
        if self.refresh_from is not None and datetime.now(timezone.utc) >= self.refresh_from:
            with self._lock:
                if self.refresh_from is not None and datetime.now(timezone.utc) >= self.refresh_from:
                    self.refresh_from = None  # one try: a refused refresh leaves the token as it is
                    self._refresh(client, api)

    def unauthorized(self, client: httpx.Client, api: str, generation: int) -> bool:
        """After a 401 with the token of `generation`: True when a new token is there to retry with."""
        with self._lock:
            if self.generation != generation:
                return True  # another worker refreshed it meanwhile
            if self.command:
                self.token = self._from_command()
                self.generation += 1
                return True
            return self._refresh(client, api)

    def _refresh(self, client: httpx.Client, api: str) -> bool:
        if not self.token:
            return False
        try:
            r = client.post(api + "/auth/refresh", headers=self.headers())
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        body = r.json()
        self.token, self.generation, self.refreshes = body["token"], self.generation + 1, self.refreshes + 1
        self.refresh_from = datetime.fromisoformat(body["refresh_from"]) if body.get("refresh_from") else None
        if self.token_file is not None:
            tmp = self.token_file.with_name(self.token_file.name + ".new")
            tmp.write_text(self.token + "\n")
            tmp.chmod(0o600)
            os.replace(tmp, self.token_file)
        return True

    def _from_command(self) -> str:
        done = subprocess.run(shlex.split(self.command or ""), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not done.stdout.strip():
            raise DownloadError(f"--token-command exited {done.returncode} without a token",
                                f"check the command: {done.stderr.strip()[:200]}")
        return done.stdout.strip().splitlines()[-1]


# -- the run ---------------------------------------------------------------------------------------------------

@dataclass
class DownloadOptions:
    parallel: int = 4
    retries: int = 5
    assets: list[str] = field(default_factory=list)
    verify_existing: bool = False
    progress: bool = True
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    page_size: int = PAGE


@dataclass
class FileJob:
    collection: str
    item: str
    key: str
    href: str
    dest: Path
    size: int | None
    checksum: str | None  # the raw multihash

    @property
    def digest(self) -> tuple[str, str] | None:
        return parse_checksum(self.checksum)


@dataclass
class Report:
    products: int = 0
    products_failed: list[str] = field(default_factory=list)
    files_fetched: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    corrupt_refetched: int = 0
    bytes_received: int = 0
    bytes_resumed: int = 0  # bytes a resumed file already had in its .part (not asked for again)
    token_refreshes: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.products_failed)

    def summary(self) -> str:
        ok = self.products - len(self.products_failed)
        text = (f"{ok}/{self.products} products complete and verified; files: {self.files_fetched} fetched, "
                f"{self.files_skipped} already there, {self.files_failed} failed; {self.bytes_received} bytes "
                f"received ({self.bytes_resumed} resumed from partial files, {self.corrupt_refetched} corrupted "
                f"file(s) fetched again) in {self.seconds:.1f} s")
        for f in self.failures[:20]:
            text += f"\n  FAILED {f['item']} {f['asset']}: {f['error']}"
        return text


class Manifest:
    """OUT/manifest.jsonl: one line per file outcome. A file whose last line says verified, with the same size,
    mtime and checksum as now, is not hashed again on the next run."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.known: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if rec.get("verified") and rec.get("status") in ("fetched", "verified"):
                    self.known[rec["path"]] = rec
                else:
                    self.known.pop(rec.get("path", ""), None)

    def vouches(self, job: FileJob, rel: str) -> bool:
        rec = self.known.get(rel)
        if rec is None or rec.get("checksum") != job.checksum:
            return False
        try:
            st = job.dest.stat()
        except OSError:
            return False
        return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns

    def record(self, job: FileJob, rel: str, status: str, verified: bool, received: int = 0,
               error: str | None = None) -> None:
        st = job.dest.stat() if job.dest.exists() else None
        rec = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "collection": job.collection,
               "item": job.item, "asset": job.key, "href": job.href, "path": rel, "status": status,
               "verified": verified, "checksum": job.checksum, "size": st.st_size if st else None,
               "mtime_ns": st.st_mtime_ns if st else None, "bytes_received": received}
        if error:
            rec["error"] = error
        with self._lock:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def _safe(name: str) -> str:
    name = unquote(name).replace("/", "_").replace("\\", "_").replace("\x00", "")
    return name if name not in ("", ".", "..") else "_"


def plan(item: dict[str, Any], out: Path, assets: list[str]) -> list[FileJob]:
    """The files of one item: OUT/<collection>/<item>/<file name of the href> (the asset key on a clash)."""
    collection = _safe(item.get("collection") or "_")
    folder = out / collection / _safe(item["id"])
    jobs, names = [], set()
    for key, asset in sorted((item.get("assets") or {}).items()):
        href = asset.get("href", "")
        if (assets and key not in assets) or urlsplit(href).scheme not in ("http", "https"):
            continue
        name = _safe(PurePosixPath(urlsplit(href).path).name or key)
        if name in names or name == f"{_safe(item['id'])}.json":
            name = f"{_safe(key)}-{name}"
        names.add(name)
        jobs.append(FileJob(collection, item["id"], key, href, folder / name,
                            asset.get("file:size") if isinstance(asset.get("file:size"), int) else None,
                            asset.get("file:checksum")))
    return jobs


class Downloader:
    """Shared by the worker threads: one HTTP client (keep-alive pool), the token, the counters."""

    def __init__(self, api: str, out: Path, options: DownloadOptions, auth: TokenSource, client: httpx.Client,
                 report: Report, advance: Callable[[int], None]) -> None:
        self.api, self.out, self.options, self.auth, self.client = api, out, options, auth, client
        self.report, self.advance = report, advance
        self.origin = _origin(api)
        self.manifest = Manifest(out)
        self._lock = threading.Lock()

    def _count(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                setattr(self.report, k, getattr(self.report, k) + v)

    def _headers(self, url: str) -> tuple[dict[str, str], int]:
        if _origin(url) != self.origin:
            return {}, self.auth.generation
        self.auth.maybe_refresh(self.client, self.api)
        return self.auth.headers(), self.auth.generation

    def _wait(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.options.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, MAX_WAIT_S))

    # -- search --

    def search(self, query: Query) -> Iterator[dict[str, Any]]:
        """Every item of the search, page after page (`rel=next`, GET or POST): no cap on the number."""
        body = query.body(self.options.page_size)
        url, method, seen_pages, seen = self.api + "/search", "POST", set(), set()
        local_filter = False
        while True:
            page = self._page(method, url, body)
            if page is None:  # the API refused the filter: search without it, filter here
                if local_filter or "filter" not in body:
                    raise DownloadError(f"the search at {url} was refused", "check the options and the API URL")
                local_filter = True
                body = {k: v for k, v in body.items() if k not in ("filter", "filter-lang")}
                continue
            features = page.get("features") or []
            for item in features:
                key = (item.get("collection"), item.get("id"))
                if key not in seen and query.matches(item):
                    seen.add(key)
                    yield item
            nxt = next((link for link in page.get("links") or [] if link.get("rel") == "next"), None)
            if nxt is None or not features:
                return
            method = nxt.get("method", "GET").upper()
            if method == "POST":
                body = {**body, **nxt.get("body", {})} if nxt.get("merge") else nxt.get("body", body)
            url = nxt["href"]
            marker = (url, json.dumps(body, sort_keys=True) if method == "POST" else "")
            if marker in seen_pages:
                return  # a server sending the same page again
            seen_pages.add(marker)

    def _page(self, method: str, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        for attempt in range(self.options.retries + 1):
            headers, generation = self._headers(url)
            try:
                r = self.client.request(method, url, json=body if method == "POST" else None, headers=headers)
            except httpx.TransportError as exc:
                if attempt == self.options.retries:
                    raise DownloadError(f"the search at {url} failed: {exc!r}", "check the API URL and the network")
                self._wait(attempt)
                continue
            if r.status_code == 401 and self.auth.unauthorized(self.client, self.api, generation):
                continue
            if r.status_code in (429, 503) or r.status_code >= 500:
                if attempt < self.options.retries:
                    self._wait(attempt, r.headers.get("retry-after"))
                    continue
            if r.status_code == 400 and "filter" in body:
                return None
            if r.status_code != 200:
                raise DownloadError(f"the search at {url} answered {r.status_code}: {r.text[:300]}",
                                    "check the options (collection, dates) and the token")
            return r.json()
        raise DownloadError(f"the search at {url} kept failing", "try again later")

    # -- one file --

    def fetch(self, job: FileJob) -> str:
        """Fetch and verify one file; returns what was done ("fetched" / "present"), raises FileFailed."""
        rel = job.dest.relative_to(self.out).as_posix()
        digest = job.digest
        if job.dest.exists():
            if not self.options.verify_existing and self.manifest.vouches(job, rel):
                self._count(files_skipped=1)
                self.advance(job.size or 0)
                return "present"
            if digest is not None and _hash(job.dest, digest[0]) == digest[1]:
                self.manifest.record(job, rel, "verified", True)
                self._count(files_skipped=1)
                self.advance(job.size or 0)
                return "present"
            if digest is not None:  # on disk but not what the catalog says: corrupted or changed
                job.dest.unlink()
                self._count(corrupt_refetched=1)
            elif job.size is not None and job.dest.stat().st_size == job.size:
                self._count(files_skipped=1)
                self.advance(job.size)
                return "present"
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        part = job.dest.with_name(job.dest.name + ".part")
        try:
            received = self._transfer(job, part, digest)
        except FileFailed as exc:
            self.manifest.record(job, rel, "failed", False, error=str(exc))
            raise
        os.replace(part, job.dest)
        _side(part).unlink(missing_ok=True)
        self.manifest.record(job, rel, "fetched", digest is not None or received[1], received[0])
        self._count(files_fetched=1)
        return "fetched"

    def _transfer(self, job: FileJob, part: Path, digest: tuple[str, str] | None) -> tuple[int, bool]:
        """Bytes into `part` until it is whole and verified; (bytes received, verified)."""
        side = _side(part)
        state = json.loads(side.read_text()) if side.exists() else {}
        if state.get("href") != job.href or state.get("checksum") != job.checksum:
            part.unlink(missing_ok=True)  # a part of another version of the file
            state = {"href": job.href, "checksum": job.checksum}
        received, attempt, auth_retries, verified_by = 0, 0, 0, digest
        first = True
        while True:
            have = part.stat().st_size if part.exists() else 0
            if job.size is not None and have > job.size:
                part.unlink()
                have = 0
            if first and have:
                self._count(bytes_resumed=have)
                self.advance(have)
            first = False
            try:
                if job.size is None or have < job.size:
                    got, server_digest, auth_failed = self._get(job, part, have, state)
                    received += got
                    if auth_failed:
                        auth_retries += 1
                        if auth_retries > 2:
                            raise FileFailed("401: the token was refused (expired or revoked?)")
                        continue
                    verified_by = digest or server_digest or verified_by
            except _Retry as retry:
                if attempt >= self.options.retries:
                    raise FileFailed(f"gave up after {attempt + 1} attempts: {retry.why}") from None
                self._wait(attempt, retry.retry_after)
                attempt += 1
                continue
            size = part.stat().st_size
            ok = job.size is None or size == job.size
            if ok and verified_by is not None:
                ok = _hash(part, verified_by[0]) == verified_by[1]
            if ok:
                return received, verified_by is not None
            part.unlink()
            side.unlink(missing_ok=True)
            state = {"href": job.href, "checksum": job.checksum}
            self._count(corrupt_refetched=1)
            if attempt >= self.options.retries:
                raise FileFailed(f"the file does not match its checksum after {attempt + 1} attempts")
            attempt += 1

    def _get(self, job: FileJob, part: Path, have: int, state: dict[str, Any]
             ) -> tuple[int, tuple[str, str] | None, bool]:
        """One request; appends to `part`. Returns (bytes received, Repr-Digest, refused by auth)."""
        headers, generation = self._headers(job.href)
        if have:
            headers["Range"] = f"bytes={have}-"
            if state.get("etag") and not state["etag"].startswith("W/"):
                headers["If-Range"] = state["etag"]
        got = 0
        try:
            with self.client.stream("GET", job.href, headers=headers) as r:
                if r.status_code == 401:
                    if not self.auth.unauthorized(self.client, self.api, generation):
                        raise FileFailed("401: the token was refused and could not be refreshed — ask for a new one")
                    return 0, None, True
                if r.status_code in (429, 503) or r.status_code >= 500:
                    raise _Retry(f"HTTP {r.status_code}", r.headers.get("retry-after"))
                if r.status_code == 416 and have:
                    part.unlink()  # the part is not a prefix of this file: start again
                    raise _Retry("HTTP 416 on resume", "0")
                if r.status_code == 206:
                    start = _content_range_start(r.headers.get("content-range"))
                    if start != have:
                        part.unlink(missing_ok=True)
                        raise _Retry(f"the server resumed at {start}, not at {have}", "0")
                    mode = "ab"
                elif r.status_code == 200:
                    mode = "wb"  # whole file: a server without Range, or the file changed (If-Range)
                    if have:
                        self.advance(-have)
                else:
                    r.read()
                    raise FileFailed(f"HTTP {r.status_code}: {r.text[:200]}")
                if etag := r.headers.get("etag"):
                    state["etag"] = etag
                    _side(part).write_text(json.dumps(state))
                with part.open(mode) as f:
                    for chunk in r.iter_bytes():  # as they come: an interruption loses nothing received
                        f.write(chunk)
                        got += len(chunk)
                        self._count(bytes_received=len(chunk))
                        self.advance(len(chunk))
                return got, repr_digest(r.headers.get("repr-digest")), False
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__} after {got} bytes") from None


class _Retry(Exception):
    def __init__(self, why: str, retry_after: str | None = None) -> None:
        super().__init__(why)
        self.why, self.retry_after = why, retry_after


def _side(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def run(api: str, query: Query, out: Path, options: DownloadOptions, auth: TokenSource,
        console: Console | None = None) -> Report:
    """Search, then fetch every file of every product with `options.parallel` workers; never raises for one
    product (its failure is in the report), raises DownloadError when the search itself cannot be done."""
    console = console or Console(stderr=True)
    query.body()  # a bad option is reported before anything starts
    api = api.rstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=options.parallel + 2, max_keepalive_connections=options.parallel + 2)
    with httpx.Client(timeout=httpx.Timeout(options.timeout_s, connect=10.0), limits=limits, follow_redirects=True,
                      headers={"User-Agent": USER_AGENT}) as client, \
            Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                     TimeRemainingColumn(), console=console, disable=not options.progress,
                     transient=False) as progress:
        auth.start(client, api)
        bar = progress.add_task("searching", total=None)
        lock = threading.Lock()

        def advance(n: int) -> None:
            with lock:
                progress.advance(bar, n)

        dl = Downloader(api, out, options, auth, client, report, advance)
        items: list[dict[str, Any]] = []
        for item in dl.search(query):
            items.append(item)
            progress.update(bar, description=f"searching: {len(items)} products")
            if query.limit and len(items) >= query.limit:
                break
        jobs = {item["id"]: plan(item, out, options.assets) for item in items}
        report.products = len(items)
        total = sum(j.size or 0 for js in jobs.values() for j in js)
        progress.update(bar, total=total, description=f"{len(items)} products")
        failed: dict[str, list[str]] = {}
        with ThreadPoolExecutor(max_workers=options.parallel) as pool:
            futures = {pool.submit(dl.fetch, job): job for js in jobs.values() for job in js}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    fut.result()
                except FileFailed as exc:
                    failed.setdefault(job.item, []).append(str(exc))
                    report.files_failed += 1
                    report.failures.append({"item": job.item, "asset": job.key, "error": str(exc)})
                    console.print(f"[red]failed[/red] {job.item} {job.key}: {exc}", highlight=False)
                except Exception as exc:  # noqa: BLE001 - one product's surprise must not stop the batch
                    failed.setdefault(job.item, []).append(repr(exc))
                    report.files_failed += 1
                    report.failures.append({"item": job.item, "asset": job.key, "error": repr(exc)})
                    console.print(f"[red]failed[/red] {job.item} {job.key}: {exc!r}", highlight=False)
        for item in items:
            if item["id"] in failed:
                report.products_failed.append(item["id"])
            elif jobs[item["id"]]:
                doc = jobs[item["id"]][0].dest.parent / f"{_safe(item['id'])}.json"
                doc.write_text(json.dumps(item, indent=1))
    report.token_refreshes = auth.refreshes
    report.seconds = time.monotonic() - started
    (out / "last-run.json").write_text(json.dumps(asdict(report), indent=1))
    return report

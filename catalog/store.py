"""The asset store: where published files live and the URLs clients read them from.

Layout `{collection}/{tile}/{yyyy}/{mm}/{product_id}/{file}` keeps every directory small at any
scale (MUSCATE distribution once stopped at 65,535 files in one directory).

The catalog stores where a file is, never the URL that reaches it today: an asset href is kept as
its store-relative path (`sentinel2-l2a/31TCH/2024/03/<id>/<file>.tif`) and a link into the API as
a root-relative path (`/collections/c/items/i`). Responses render both against the public URL in
force when they are served (`render_href`), so moving the box behind a proxy or to another port
breaks no link. Hrefs with a scheme (`https://`, `s3://`) are foreign and pass through untouched.
The tiler and downloads read store files directly, never over HTTP to their own process.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from catalog.errors import BadRequest, NotFound, StoreError
from catalog.settings import CatalogSettings

DOWNLOAD_PREFIX = "/download"


def is_foreign(href: str) -> bool:
    """An href with a scheme (`https://…`, `s3://…`): an asset that lives outside the store."""
    return "://" in href or href.startswith(("s3:", "gs:", "az:"))


def render_href(href: str, base_url: str) -> str:
    """The public URL of a stored href: store paths under `{base}/download/`, API paths under `{base}`."""
    if is_foreign(href):
        return href
    base = base_url.rstrip("/")
    if href.startswith("/"):
        return base + quote(href, safe="/:@!$&'()*+,;=-._~%")
    return f"{base}{DOWNLOAD_PREFIX}/{quote(href)}"


def api_path(*segments: str) -> str:
    """The stored form of a link into the API (`/collections/c/items/i`), rendered by `render_href`."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


def product_prefix(collection: str, tile: str, when: datetime, product_id: str) -> PurePosixPath:
    """Relative directory of one product in the store."""
    tile = tile.upper().removeprefix("T")
    return PurePosixPath(collection, tile, f"{when:%Y}", f"{when:%m}", product_id)


@dataclass(frozen=True)
class AssetStore:
    """A local directory holding published files, and the public URLs of those files."""

    root: Path
    public_url: str
    remote_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: CatalogSettings) -> "AssetStore":
        return cls(settings.store_dir, settings.base_url, tuple(settings.remote_asset_prefixes))

    @property
    def url_prefix(self) -> str:
        return f"{self.public_url}{DOWNLOAD_PREFIX}/"

    def href(self, relpath: PurePosixPath | str) -> str:
        """The stored form of an asset href: the file's path in the store (see `render_href`)."""
        rel = PurePosixPath(str(relpath))
        if rel.is_absolute() or ".." in rel.parts:
            raise StoreError(f"{relpath} is not a path inside the store")
        return str(rel)

    def path(self, relpath: PurePosixPath | str) -> Path:
        """Resolve a store-relative path, refusing anything that escapes the root."""
        rel = PurePosixPath(unquote(str(relpath)))
        if rel.is_absolute() or ".." in rel.parts:
            raise NotFound(f"{relpath} is not a path inside the store")
        return self.root.joinpath(*rel.parts)

    def published_file(self, relpath: str) -> Path:
        """A published file, resolved: a regular file whose real path is inside the store and that no hidden
        component (staging, leftovers) leads to. Anything else is "not found", symlinks out of the store
        included."""
        if "\x00" in relpath or len(relpath) > 4096:
            raise BadRequest("the path contains a NUL byte or is too long", "ask for a file named in an item")
        rel = PurePosixPath(relpath)
        if rel.is_absolute() or not rel.parts or any(p == ".." or p.startswith(".") for p in rel.parts):
            raise NotFound(f"{relpath[:200]} is not a published file", "use an asset href of an item")
        root = self.root.resolve()
        try:
            real = root.joinpath(*rel.parts).resolve(strict=True)
            st = real.stat()
        except (OSError, RuntimeError):  # missing, a loop of links, unreadable
            raise NotFound(f"no file {relpath[:200]} in the store", "check the asset href in the item") from None
        if not real.is_relative_to(root) or not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{relpath[:200]} is not a published file", "use an asset href of an item")
        return real

    def readable(self, href: str) -> str:
        """Where the tiler reads an asset: the real path of a published file, or a URL under an allowed
        remote prefix. Anything else is refused: no item makes the tiler fetch another host."""
        if not is_foreign(href) and not href.startswith("/"):
            return str(self.published_file(href))
        if href.startswith(self.url_prefix):
            return str(self.published_file(unquote(href[len(self.url_prefix):].split("?", 1)[0])))
        if any(href.startswith(prefix) for prefix in self.remote_prefixes):
            return href
        if DOWNLOAD_PREFIX + "/" in href and "://" in href:
            # an item published under an earlier public URL (before `landsurf catalog rebase`): still our file
            return str(self.published_file(unquote(href.split(DOWNLOAD_PREFIX + "/", 1)[1].split("?", 1)[0])))
        raise NotFound(f"asset {href[:200]} is neither in the store nor under an allowed remote prefix",
                       "an operator allows remote assets with LANDSURF_REMOTE_ASSET_PREFIXES")

    def stored_form(self, href: str, base_url: str) -> str:
        """What a client-written asset href is stored as: a store path. Our own download URLs (as this
        response base renders them) are taken back to their path; anything else is refused, so that no
        item makes the tiler or a downloader fetch another host or a file outside the store."""
        if not isinstance(href, str) or not href or "\x00" in href or len(href) > 2048:
            raise BadRequest("an asset href is empty, too long or not text", "give the file's path in the store")
        own = f"{base_url.rstrip('/')}{DOWNLOAD_PREFIX}/"
        if href.startswith(own):
            href = unquote(href[len(own):].split("?", 1)[0].split("#", 1)[0])
        elif is_foreign(href) or href.startswith("/"):
            raise BadRequest(f"asset href {href[:200]!r} is not in this catalog's store",
                             f"give a path inside the store, or a URL under {own}")
        rel = PurePosixPath(href)
        if ".." in rel.parts or any(part.startswith(".") for part in rel.parts) or "\\" in href:
            raise BadRequest(f"asset href {href[:200]!r} leaves the store or names a hidden file",
                             "give a plain path inside the store")
        return str(rel)

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the asset store {self.root}: {exc.strerror}",
                             "set LANDSURF_STORE to a writable directory") from exc

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

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from catalog.errors import NotFound, StoreError
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

    @classmethod
    def from_settings(cls, settings: CatalogSettings) -> "AssetStore":
        return cls(settings.store_dir, settings.public_url)

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

    def local_for_href(self, href: str) -> str | None:
        """The store path behind a stored href (or one of our own public URLs), or None for foreign URLs."""
        if not is_foreign(href) and not href.startswith("/"):
            return str(self.path(href))
        if href.startswith(self.url_prefix):
            return str(self.path(href[len(self.url_prefix):]))
        parts = urlsplit(href)
        if parts.scheme in ("", "file") and parts.path.startswith(str(self.root)):
            return parts.path
        return None

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the asset store {self.root}: {exc.strerror}",
                             "set LANDSURF_STORE to a writable directory") from exc

"""The asset store: where published files live and the URLs clients read them from.

Layout `{collection}/{tile}/{yyyy}/{mm}/{product_id}/{file}` keeps every directory small at any
scale (MUSCATE distribution once stopped at 65,535 files in one directory). Asset hrefs are
absolute HTTP URLs under the public base (`/download/…`), readable by GDAL, QGIS, odc-stac and
browsers; the tiler maps those URLs back to store paths and never calls its own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from catalog.errors import NotFound, StoreError
from catalog.settings import CatalogSettings

DOWNLOAD_PREFIX = "/download"


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
        return self.url_prefix + quote(str(relpath))

    def path(self, relpath: PurePosixPath | str) -> Path:
        """Resolve a store-relative path, refusing anything that escapes the root."""
        rel = PurePosixPath(unquote(str(relpath)))
        if rel.is_absolute() or ".." in rel.parts:
            raise NotFound(f"{relpath} is not a path inside the store")
        return self.root.joinpath(*rel.parts)

    def local_for_href(self, href: str) -> str | None:
        """The store path behind one of our own public URLs, or None for foreign URLs."""
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

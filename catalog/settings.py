"""Settings of the catalog package (environment variables prefixed `LANDSURF_`), split by concern as
stac-fastapi-pgstac splits its own: the database, the store, the HTTP face. `CatalogSettings` is all
three for code that needs more than one; a part that needs one takes only that class.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CONFIG = SettingsConfigDict(env_prefix="LANDSURF_", extra="ignore")


def checked_networks(entries: list[str]) -> list[str]:
    """Addresses or networks of a setting, each checked (a typo must stop the start, not open a hole)."""
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an address or network") from exc
    return entries


class HomeSettings(BaseSettings):
    """Where the embedded default keeps its database, store and logs."""

    model_config = CONFIG

    home: Path = Field(Path(".landsurf"), description="Working directory of the embedded default.")
    log_level: str = "INFO"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


class DatabaseSettings(HomeSettings):
    """Which PostgreSQL, and the bounds on every connection and statement."""

    database_url: str | None = Field(
        None, description="An external PostgreSQL; when set, nothing embedded is started."
    )
    database_ingest_url: str | None = Field(
        None, description="The ingest (writer) role's URL on an external PostgreSQL [LANDSURF_DATABASE_URL].")
    database_api_url: str | None = Field(
        None, description="The API (read-only) role's URL on an external PostgreSQL [LANDSURF_DATABASE_URL].")
    pg_port: int | None = Field(None, description="Port of the embedded PostgreSQL (default: a free one, kept).")
    pg_bindir: Path | None = Field(None, description="PostgreSQL server binaries (default: found).")
    pg_system_user: str = Field("landsurf-pg", description="System user that runs PostgreSQL when invoked as root.")
    pg_shared_buffers: str = "256MB"

    statement_timeout_ms: int = Field(10_000, ge=100, description="Bound on every SQL statement.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Bound on opening a database connection.")
    pool_timeout_s: float = Field(5.0, gt=0, description="Bound on waiting for a pooled connection.")
    db_min_conn: int = Field(1, ge=0)
    db_max_conn: int = Field(8, ge=1)

    @property
    def embedded(self) -> bool:
        return not self.database_url


class StoreSettings(HomeSettings):
    """Where published files live."""

    store: Path | None = Field(None, description="Asset store root (default: $LANDSURF_HOME/store).")
    remote_asset_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="URL prefixes of assets outside the store that the tiler may read "
                                          "(comma-separated, e.g. https://bucket.example.org/); none by default.")

    @field_validator("remote_asset_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, v: object) -> object:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @property
    def store_dir(self) -> Path:
        return (self.store or self.home_dir / "store").expanduser().resolve()


class HttpSettings(BaseSettings):
    """The public face of the API: its URL, whom it trusts, and the bound on everything a client may ask."""

    model_config = CONFIG

    public_url: str | None = Field(
        None, description="Base of every URL the API emits, path prefix included (https://host/landsurf). "
                          "Unset: http://{host}:{port} of `landsurf serve`.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    keep_alive_s: float = Field(
        75.0, gt=0, le=600, description="How long an idle client connection stays open. Longer than a client's or "
        "proxy's own pause between requests (nginx's default is 60–75 s): at uvicorn's 5 s a client sending on a "
        "connection the server is closing at that instant gets a reset, and a POST is not retried.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses (or networks) whose Forwarded / X-Forwarded-* headers are "
                                          "honoured; nobody by default.")
    metrics_scrape_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses (or networks) that may read /metrics without a token; "
                                          "everyone else needs an operator token.")
    accel_redirect: str | None = Field(
        None, description="Path prefix of an nginx `internal` location aliasing the store (/landsurf-store/): "
                          "downloads asked through a trusted proxy are answered with X-Accel-Redirect.")
    api_hydrate: bool = Field(True, description="Merge items with their collection base in Python, not in SQL.")
    # downloads (docs/operations.md, "Downloads" and "Users and tokens")
    downloads_require_token: bool = Field(
        False, description="Downloads (files, bundles) need a user token, or an admin/operator one; search and "
                           "tiles stay public.")
    download_rate: float = Field(50.0, gt=0, description="Download requests per second per user and process.")
    download_burst: int = Field(200, ge=1, description="Download requests a user may send at once before the rate "
                                                       "applies.")
    download_concurrency: int = Field(8, ge=1, description="Downloads in flight per user and process.")
    token_cache_s: float = Field(10.0, ge=0, description="How long a process trusts a token it looked up: a revoked "
                                                         "token stops within this time.")

    # every size-like input is bounded (docs/operations.md, "Limits")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body.")
    max_url_bytes: int = Field(16 << 10, ge=1024, description="Longest path + query string.")
    max_image_side: int = Field(2048, ge=64, description="Largest width, height or max_size of an image.")
    max_tile_size: int = Field(1024, ge=256, description="Largest tile (tilesize × @scale).")
    max_image_pixels: int = Field(2048 * 2048 * 4, description="Largest width × height × assets of one image.")
    max_assets: int = Field(16, ge=1, description="Most assets (or expressions) in one tiler request.")
    max_limit: int = Field(1000, ge=1, description="Largest page of a search or item list.")
    max_ids: int = Field(1000, ge=1, description="Most ids (or collections) in one search.")
    max_filter_bytes: int = Field(16 << 10, description="Longest CQL2 filter, query, intersects or expression.")
    max_filter_depth: int = Field(20, ge=2, description="Deepest nesting of a CQL2 filter.")
    max_concurrent_renders: int = Field(4, ge=1, description="Images rendered at once per process.")
    render_queue_s: float = Field(10.0, gt=0, description="Wait for a render slot before answering 503.")

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @field_validator("trusted_proxies", "metrics_scrape_addresses", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("trusted_proxies", "metrics_scrape_addresses")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return checked_networks(v)

    @property
    def base_url(self) -> str:
        """The public URL in force: the configured one, or that of the listening socket."""
        return self.public_url or f"http://{self.host}:{self.port}"


class WebhookSettings(BaseSettings):
    """Signed webhooks of subscriptions: where receivers may be (SSRF), and how deliveries are paced
    (catalog/webhooks.py, processing/webhooks.py; docs/operations.md, "Webhooks")."""

    model_config = CONFIG

    webhook_allow_http: bool = Field(False, description="Webhook receivers may be plain http:// URLs (default: "
                                                        "https only).")
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Networks a webhook receiver may be in although they are not public "
                                          "(loopback, private, link-local and the like are refused against SSRF), "
                                          "e.g. 10.1.2.0/24; comma-separated, none by default.")
    webhook_resolve_timeout_s: float = Field(5.0, gt=0, description="Bound on resolving a receiver's name.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Bound on each phase (connect, write, read) of a "
                                                             "delivery's POST.")
    webhook_every_s: int = Field(15, ge=1, le=59, description="How often the worker looks for due deliveries.")
    webhook_max_items: int = Field(50, ge=1, le=1000, description="Most items in one delivery; more go in the "
                                                                  "next ones.")
    webhook_max_body_bytes: int = Field(1 << 20, ge=4096, description="Largest delivery body: over it, the full "
                                                                      "items are left out (ids and links stay).")
    webhook_max_attempts: int = Field(8, ge=1, description="Failed attempts in a row after which a webhook is "
                                                           "marked failing (it is still tried, at the longest "
                                                           "backoff).")
    webhook_backoff_s: float = Field(30.0, gt=0, description="Wait after a first failure; doubled after each "
                                                             "further one.")
    webhook_backoff_max_s: float = Field(3600.0, gt=0, description="Longest wait between attempts.")
    webhook_settle_s: float = Field(600.0, ge=0, description="How long after its `updated` stamp an item may "
                                                             "still become visible (publication's commit, clock "
                                                             "skew between machines): items are looked for that "
                                                             "far back.")
    webhook_concurrency: int = Field(4, ge=1, le=64, description="Receivers posted to at once by one worker.")

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: object) -> object:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        return checked_networks(v)


class CatalogSettings(DatabaseSettings, StoreSettings, HttpSettings, WebhookSettings):
    """All of the catalog's settings, for the app factory and the CLI."""

    model_config = CONFIG

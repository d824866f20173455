"""Settings of the catalog package (environment variables prefixed `LANDSURF_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CatalogSettings(BaseSettings):
    """Everything the catalog needs to find its database, its store and its public face."""

    model_config = SettingsConfigDict(env_prefix="LANDSURF_", extra="ignore")

    home: Path = Field(Path(".landsurf"), description="Working directory of the embedded default.")
    database_url: str | None = Field(
        None, description="An external PostgreSQL; when set, nothing embedded is started."
    )
    pg_port: int | None = Field(None, description="Port of the embedded PostgreSQL (default: a free one, kept).")
    pg_bindir: Path | None = Field(None, description="PostgreSQL server binaries (default: found).")
    pg_system_user: str = Field("landsurf-pg", description="System user that runs PostgreSQL when invoked as root.")
    pg_shared_buffers: str = "256MB"

    public_url: str = Field("http://127.0.0.1:8000", description="Base of every public URL the API emits.")
    host: str = "127.0.0.1"
    port: int = 8000
    store: Path | None = Field(None, description="Asset store root (default: $LANDSURF_HOME/store).")

    statement_timeout_ms: int = Field(10_000, description="Bound on every SQL statement.")
    connect_timeout_s: float = Field(5.0, description="Bound on opening a database connection.")
    pool_timeout_s: float = Field(5.0, description="Bound on waiting for a pooled connection.")
    db_min_conn: int = 1
    db_max_conn: int = 8

    api_hydrate: bool = Field(True, description="Merge items with their collection base in Python, not in SQL.")
    api_read_only: bool = Field(True, description="Searches do not record themselves in pgSTAC (no write per read).")
    log_level: str = "INFO"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def store_dir(self) -> Path:
        return (self.store or self.home_dir / "store").expanduser().resolve()

    @property
    def embedded(self) -> bool:
        return not self.database_url

"""Settings of the ingest package (environment variables prefixed `LANDSURF_INGEST_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog.settings import CatalogSettings


class IngestSettings(BaseSettings):
    """Where deliveries arrive and wait, and how they are written."""

    model_config = SettingsConfigDict(env_prefix="LANDSURF_INGEST_", extra="ignore")

    inbox: Path | None = Field(None, description="Drop deliveries here (default $LANDSURF_HOME/inbox).")
    work: Path | None = Field(None, description="Deliveries being processed (default $LANDSURF_HOME/work).")
    quarantine: Path | None = Field(None, description="Bad deliveries and their reasons.")
    stable_seconds: float = Field(5.0, description="A zip or folder unchanged this long is complete.")
    poll_seconds: float = Field(2.0, description="Inbox scan period of `landsurf ingest watch`.")
    compress: str = Field("deflate", description="COG compression: deflate or zstd.")
    keep_deliveries: bool = Field(False, description="Keep published deliveries in work/done instead of deleting.")
    max_attempts: int = Field(5, description="Job attempts before a delivery is marked failed for good.")

    def _under_home(self, value: Path | None, name: str, catalog: CatalogSettings) -> Path:
        return (value or catalog.home_dir / name).expanduser().resolve()

    def inbox_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.inbox, "inbox", catalog)

    def work_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.work, "work", catalog)

    def quarantine_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.quarantine, "quarantine", catalog)

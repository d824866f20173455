"""Settings of the ingest package (environment variables prefixed `LANDSURF_INGEST_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog.settings import CatalogSettings

GB = 1_000_000_000


class IngestSettings(BaseSettings):
    """Where deliveries arrive and wait, how they are written, how big they may be, how jobs recover."""

    model_config = SettingsConfigDict(env_prefix="LANDSURF_INGEST_", extra="ignore")

    inbox: Path | None = Field(None, description="Drop deliveries here (default $LANDSURF_HOME/inbox).")
    work: Path | None = Field(None, description="Deliveries being processed (default $LANDSURF_HOME/work).")
    quarantine: Path | None = Field(None, description="Bad deliveries and their reasons.")
    stable_seconds: float = Field(10.0, ge=0, description="A zip or folder unchanged this long is complete; "
                                  "a delivery found corrupt is re-checked this long before it is quarantined.")
    poll_seconds: float = Field(2.0, gt=0, description="Inbox scan period of `landsurf ingest watch`.")
    compress: str = Field("deflate", description="COG compression: deflate or zstd.")
    keep_deliveries: bool = Field(False, description="Keep published deliveries in work/done instead of deleting.")

    # jobs: retries, heartbeats, recovery of a dead worker's delivery
    max_attempts: int = Field(5, ge=1, description="Attempts of a delivery (system faults, dead workers) before "
                              "its receipt is `failed` for good (`landsurf ingest retry` starts again).")
    retry_wait_seconds: int = Field(5, ge=0, description="Backoff after a system fault: this, plus "
                                    "retry_exponential ** attempt seconds.")
    retry_exponential: int = Field(3, ge=0, description="Base of the exponential part of the backoff.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="Period of a worker's heartbeat.")
    stalled_seconds: float = Field(30.0, gt=0, description="A worker silent this long is dead: its job is "
                                   "retried by another worker; a receipt without a job this long is queued again.")
    sweep_seconds: float = Field(10.0, gt=0, description="How often each worker and the watcher look for jobs of "
                                 "dead workers and receipts without a job.")

    # bounded deliveries (a delivery over a limit is quarantined naming the limit)
    max_unpacked_bytes: int = Field(12 * GB, ge=1, description="Largest unpacked size of a zip, or size of a "
                                    "folder (a full-size S2 L2A is ~3 GB).")
    max_entries: int = Field(5000, ge=1, description="Most files and folders in one delivery (an L2A has ~100).")
    max_entry_ratio: float = Field(1100.0, ge=1, description="Largest compression ratio of one zip entry "
                                   "(deflate cannot exceed ~1032: an all-zero mask approaches it).")
    max_total_ratio: float = Field(200.0, ge=1, description="Largest unpacked size over zip size "
                                   "(a real L2A is below ~10, even a mostly no-data one below ~150).")
    min_free_bytes: int = Field(1 * GB, ge=0, description="Free space kept on the work and store filesystems "
                                "(shared with the database): a delivery that would eat into it waits (retried).")

    def _under_home(self, value: Path | None, name: str, catalog: CatalogSettings) -> Path:
        return (value or catalog.home_dir / name).expanduser().resolve()

    def inbox_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.inbox, "inbox", catalog)

    def work_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.work, "work", catalog)

    def quarantine_dir(self, catalog: CatalogSettings) -> Path:
        return self._under_home(self.quarantine, "quarantine", catalog)

    @staticmethod
    def staging_dir(catalog: CatalogSettings) -> Path:
        """Products being written: inside the store root so that publication is a rename on one filesystem;
        hidden (`.staging`), and never served (downloads refuse hidden paths)."""
        return catalog.store_dir / ".staging"

"""Settings of the ingest package (environment variables prefixed `LANDSURF_INGEST_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANDSURF_INGEST_", extra="ignore")

    inbox: Path | None = None
    quarantine: Path | None = None
    stable_seconds: float = 5.0

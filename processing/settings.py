"""Settings of the processing package (environment variables prefixed `LANDSURF_PROCESSING_`)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANDSURF_PROCESSING_", extra="ignore")

    dask_scheduler: str | None = None
    workers: int = 1

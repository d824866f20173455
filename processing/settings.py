"""Settings of the processing package (environment variables prefixed `LANDSURF_PROCESSING_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANDSURF_PROCESSING_", extra="ignore")

    dask_scheduler: str | None = None
    workers: int = 1
    # Dask for chunked array work (SCD; see processing/raster_io.py `dask_client`)
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster started when no "
                              "scheduler address is set (one thread each: GDAL and the kernels are single-threaded "
                              "per task).")
    dask_min_work: int = Field(200_000_000, ge=0, description="Below this many pixel-dates a job runs in-process "
                               "(no cluster to start); at or above it, on the cluster.")
    dask_processes: bool = Field(True, description="LocalCluster workers are processes (the GIL-free default); "
                                 "false: threads of this process (where spawning processes is not allowed).")

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
    # derived products: orchestration by lineage (processing/plan.py, processing/derive.py)
    auto_derive: bool = Field(True, description="Derived products are planned with no human in the loop: a "
                              "published L2A queues its snow map, a complete (or late) L3A window its synthesis, a "
                              "changed input its dependants. false: only what is asked for is made.")
    l3a_deadline_days: int = Field(10, ge=0, description="An L3A is made this many days after the end of its "
                                   "±23-day window even when no later L2A of the tile has come (the worker's tick).")
    derive_lookback_days: int = Field(120, ge=1, description="How far back (acquisition dates) the worker's tick "
                                      "looks for L3A deadlines and L2As without a snow map.")
    derive_max_attempts: int = Field(5, ge=1, description="Attempts of a derived-product job after faults of the "
                                     "system (database down, disk full) before it is failed.")

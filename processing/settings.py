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
    # monthly mosaics' overviews (processing/mosaics.py; the tiler answers z <= this zoom from them)
    mosaic_overview_zoom: int = Field(7, ge=0, le=12, description="Zoom (WebMercatorQuad) of the overview COGs' "
                                      "pixels; tiles of a monthly mosaic at this zoom and below come from them.")
    mosaic_overview_max_pixels: int = Field(400_000_000, ge=65_536, description="Largest overview (width × "
                                            "height); a month spread wider fails with a message naming this.")
    mosaic_overview_resampling: str = Field("average", pattern="^(nearest|bilinear|cubic|average|mode)$",
                                            description="How items are resampled onto the overview's grid.")
    mosaic_debounce_s: float = Field(60.0, ge=0, description="An overview build waits this long after the L3A "
                                     "publication that asked for it; the publications meanwhile join that build.")
    # time-lapses (processing/timelapse.py, GET /timelapse, `landsurf timelapse`): every size a client can ask bounded
    timelapse_max_frames: int = Field(200, ge=1, description="Most frames (clear dates) of one time-lapse.")
    timelapse_max_items: int = Field(400, ge=1, description="Most items read for one time-lapse (several tiles "
                                     "of a date make one frame).")
    timelapse_max_size: int = Field(1024, ge=64, description="Largest frame side in pixels.")
    timelapse_default_size: int = Field(512, ge=16, description="Frame side when the client names none.")
    timelapse_max_pixels: int = Field(40_000_000, ge=1, description="Largest frames × width × height: what one "
                                      "render holds in memory (3 bytes a pixel at most).")
    timelapse_max_period_days: int = Field(1100, ge=1, description="Longest period (three years and a little).")
    timelapse_max_bbox_degrees: float = Field(10.0, gt=0, description="Largest side of the area, in degrees.")
    timelapse_concurrent: int = Field(1, ge=1, description="Time-lapses rendered at once per API process (each "
                                      "renders its frames one after the other in one thread).")
    timelapse_queue_s: float = Field(20.0, gt=0, description="Wait for a render slot before answering 503.")

"""Time-lapses: the clear-sky pictures of an area over a period, in date order, as one animation (GIF, WebP, MP4).

What the seeds did in five shell steps (search, download quicklooks, crop, label, ffmpeg) is one request here:

    GET /timelapse?bbox=W,S,E,N&datetime=A/B&collection=l2a&max_cloud=20&format=gif&size=512&fps=2

* **Items**: one pgSTAC search of the collection (current versions only) for the area and period, keeping items
  whose `eo:cloud_cover` is at most `max_cloud`, in date order.
* **Frames**: one per acquisition day (UTC). Each is read from the items' COGs (not the JPEG quicklook, which has
  no georeferencing) through rio-tiler `Reader.part`, reprojected onto one Web Mercator grid of the area: the
  collection's render recipe (`renders` of the collection or of its items: natural colour with the fixed 0–3000
  stretch of every quicklook, or the snow palette), several items of a day (tiles) painted clearest first, no data
  black. The day is written in a box at the top left (Pillow's bundled font: nothing is downloaded).
* **Encoding**: GIF and WebP by Pillow, MP4 (H.264, yuv420p) by PyAV, whose wheels bundle FFmpeg and libx264,
  with one encoder thread. Output goes to a spooled temporary file the response then streams.
* **Bounds** (ProcessingSettings `timelapse_*`, each named in the 400 that refuses it): frames, items, frame side,
  frames × pixels (what a render holds in memory: frames are kept until the encoder assembles them), period,
  area. Renders are few at a time (`timelapse_concurrent` per process, 503 + Retry-After when none frees up), in a
  worker thread, so that the API keeps answering.
* **Caching**: the weak ETag hashes the normalised parameters, the renderer's version and every item's id,
  version and `updated`: a republished product, or a new one in the period, changes it; If-None-Match is 304
  before anything is rendered.

A period with no clear item is a 404 that says what to widen (`format=json`, the plan, is then 200 with no frame).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from typing import IO, Any

import numpy as np
import orjson

from catalog.collections import COLLECTIONS, S2_L2A, S2_L3A, S2_SNOW
from catalog.errors import BadRequest, LimitExceeded, NotFound
from catalog.logging import get_logger
from processing import colormaps
from processing.settings import ProcessingSettings

log = get_logger(__name__)

RENDERER = "timelapse-2"  # changes whenever the same inputs would give other pictures
ALIASES = {"l2a": S2_L2A, S2_L2A: S2_L2A, "snow": S2_SNOW, S2_SNOW: S2_SNOW, "l3a": S2_L3A, S2_L3A: S2_L3A}
MEDIA = {"gif": "image/gif", "webp": "image/webp", "mp4": "video/mp4", "json": "application/json"}
MIN_SIDE = 16  # the short side of a very elongated area
MIN_SIZE = 64
MAX_FPS = 30
MAX_LAT = 85.0  # Web Mercator's domain
MERCATOR = "EPSG:3857"
NODATA = -10000


@dataclass(frozen=True)
class Recipe:
    """How a collection's item becomes RGB: three reflectance assets stretched, or one coded asset through a
    colormap."""

    assets: tuple[str, ...]
    rescale: tuple[float, float] | None = None
    colormap: str | None = None
    resampling: str = "bilinear"
    nodata: float | None = None


def _recipe(render: Mapping[str, Any]) -> Recipe:
    rescale = render.get("rescale")
    return Recipe(tuple(render["assets"]), tuple(rescale[0]) if rescale else None,  # type: ignore[arg-type]
                  render.get("colormap_name"), render.get("resampling", "bilinear"), render.get("nodata"))


def recipes() -> dict[str, Recipe]:
    """The collections a time-lapse can show, each through the render its items already advertise."""
    return {S2_L2A: _recipe({**COLLECTIONS[S2_L2A].renders["true-colour"], "nodata": NODATA}),
            S2_L3A: _recipe(colormaps.renders("l3a")["true-colour"]),
            S2_SNOW: _recipe(colormaps.renders("snow")["snow"])}


@dataclass(frozen=True)
class TimelapseRequest:
    collection: str
    bbox: tuple[float, float, float, float]
    start: datetime
    end: datetime
    max_cloud: float
    format: str
    size: int
    fps: int

    def key(self) -> dict[str, Any]:
        """The normalised parameters: what the ETag and the file name are made of."""
        return {"collection": self.collection, "bbox": [round(v, 7) for v in self.bbox],
                "datetime": f"{_iso(self.start)}/{_iso(self.end)}", "max_cloud": self.max_cloud,
                "format": self.format, "size": self.size, "fps": self.fps}

    def search(self, limit: int) -> dict[str, Any]:
        """The pgSTAC search of the clear items, oldest first."""
        return {"collections": [self.collection], "bbox": list(self.bbox),
                "datetime": f"{_iso(self.start)}/{_iso(self.end)}",
                "filter-lang": "cql2-json",
                "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, self.max_cloud]},
                "sortby": [{"field": "datetime", "direction": "asc"}, {"field": "id", "direction": "asc"}],
                "limit": limit}

    def filename(self) -> str:
        return f"timelapse-{self.collection}-{self.start:%Y%m%d}-{self.end:%Y%m%d}.{self.format}"


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _setting(name: str) -> str:
    return f"LANDSURF_PROCESSING_{name.upper()}"


def _number(name: str, raw: str, kind: type = float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"`{name}`={raw[:40]!r} is not a number", f"give `{name}` as a plain number") from None
    if not math.isfinite(value) or (kind is int and value != int(value)):
        raise BadRequest(f"`{name}`={raw[:40]!r} is not a{'n integer' if kind is int else ' finite number'}",
                         f"give `{name}` as a plain number")
    return value


def _instant(raw: str, end: bool) -> datetime:
    text = raw.strip()
    try:
        if len(text) == 10:  # a day: its first or last second
            day = date.fromisoformat(text)
            return datetime.combine(day, time(23, 59, 59) if end else time(0), timezone.utc)
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"`datetime` end {raw[:40]!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 instant",
                         "give a period such as 2024-06-01/2024-08-31") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_request(params: Mapping[str, str | None], settings: ProcessingSettings) -> TimelapseRequest:
    """The query parameters checked one by one; every refusal names the parameter, and a bound its setting."""
    raw_bbox = params.get("bbox")
    if not raw_bbox:
        raise BadRequest("`bbox` is missing", "give the area as bbox=west,south,east,north in degrees")
    parts = raw_bbox.split(",")
    if len(parts) != 4:
        raise BadRequest(f"`bbox` has {len(parts)} values", "give 4: west,south,east,north in degrees")
    west, south, east, north = (_number("bbox", p) for p in parts)
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -MAX_LAT <= south <= MAX_LAT
            and -MAX_LAT <= north <= MAX_LAT):
        raise BadRequest(f"`bbox` {raw_bbox[:80]} is outside longitudes -180…180 / latitudes -{MAX_LAT:g}…"
                         f"{MAX_LAT:g}", "give west,south,east,north in degrees (WGS84)")
    if west >= east or south >= north:
        raise BadRequest(f"`bbox` {raw_bbox[:80]} is empty or inverted (west ≥ east or south ≥ north)",
                         "give west,south,east,north with west < east and south < north (an area across the "
                         "antimeridian: two time-lapses)")
    side = max(east - west, north - south)
    if side > settings.timelapse_max_bbox_degrees:
        raise LimitExceeded(f"`bbox` is {side:g}° wide, over the maximum of "
                            f"{settings.timelapse_max_bbox_degrees:g}° ({_setting('timelapse_max_bbox_degrees')})",
                            "ask for a smaller area")
    raw_period = params.get("datetime")
    if not raw_period:
        raise BadRequest("`datetime` is missing", "give a period such as datetime=2024-06-01/2024-08-31")
    if raw_period.count("/") != 1:
        raise BadRequest(f"`datetime` {raw_period[:60]!r} is not a period", "give start/end, e.g. "
                         "2024-06-01/2024-08-31")
    first, last = raw_period.split("/")
    if first.strip() in ("", "..") or last.strip() in ("", ".."):
        raise BadRequest("`datetime` is open-ended", "give both ends of the period, e.g. 2024-06-01/2024-08-31")
    start, end = _instant(first, False), _instant(last, True)
    if end < start:
        raise BadRequest(f"`datetime` ends ({_iso(end)}) before it starts ({_iso(start)})",
                         "give start/end with the start first")
    days = (end - start).total_seconds() / 86400
    if days > settings.timelapse_max_period_days:
        raise LimitExceeded(f"the period is {days:.0f} days long, over the maximum of "
                            f"{settings.timelapse_max_period_days} ({_setting('timelapse_max_period_days')})",
                            "ask for a shorter period")
    name = (params.get("collection") or S2_L2A).strip()
    if name not in ALIASES:
        raise NotFound(f"no time-lapse of collection {name[:60]!r}",
                       f"use one of {', '.join(sorted(ALIASES))}")
    max_cloud = _number("max_cloud", params.get("max_cloud") or "20")
    if not 0 <= max_cloud <= 100:
        raise BadRequest(f"`max_cloud`={max_cloud:g} is outside 0…100", "give a percentage of cloud cover")
    fmt = (params.get("format") or "gif").strip().lower()
    if fmt not in MEDIA:
        raise BadRequest(f"`format`={fmt[:20]!r} is not offered", f"use one of {', '.join(MEDIA)}")
    size = int(_number("size", params.get("size") or str(settings.timelapse_default_size), int))
    if not MIN_SIZE <= size <= settings.timelapse_max_size:
        raise LimitExceeded(f"`size`={size} is outside {MIN_SIZE}…{settings.timelapse_max_size} pixels "
                            f"({_setting('timelapse_max_size')})", "ask for a smaller frame")
    fps = int(_number("fps", params.get("fps") or "2", int))
    if not 1 <= fps <= MAX_FPS:
        raise BadRequest(f"`fps`={fps} is outside 1…{MAX_FPS}", "give frames per second as an integer")
    return TimelapseRequest(ALIASES[name], (west, south, east, north), start, end, max_cloud, fmt, size, fps)


# --- the plan: frames, sizes, ETag -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameItem:
    id: str
    cloud_cover: float
    hrefs: tuple[str, ...]  # the recipe's assets, in its order
    version: str


@dataclass(frozen=True)
class Frame:
    day: date
    items: tuple[FrameItem, ...]  # clearest first: painted first, the others only fill what it left empty


@dataclass(frozen=True)
class Plan:
    request: TimelapseRequest
    frames: tuple[Frame, ...]
    width: int
    height: int
    bounds: tuple[float, float, float, float]  # of the frame grid, Web Mercator metres
    etag: str
    skipped: tuple[str, ...] = field(default=())  # items without the recipe's assets

    def describe(self) -> dict[str, Any]:
        """The plan as JSON (`format=json`): what an animation of these parameters would show."""
        return {"parameters": self.request.key(), "width": self.width, "height": self.height,
                "frames": [{"date": f.day.isoformat(),
                            "items": [{"id": i.id, "eo:cloud_cover": i.cloud_cover} for i in f.items]}
                           for f in self.frames],
                "skipped": list(self.skipped), "etag": self.etag}


def frame_shape(req: TimelapseRequest) -> tuple[int, int, tuple[float, float, float, float]]:
    """(width, height, Mercator bounds): the longest side `size`, both even (H.264's 4:2:0 needs it)."""
    from pyproj import Transformer

    to_merc = Transformer.from_crs("EPSG:4326", MERCATOR, always_xy=True)
    x0, y0, x1, y1 = to_merc.transform_bounds(*req.bbox, densify_pts=21)
    ratio = (x1 - x0) / (y1 - y0)
    if ratio >= 1:
        width, height = req.size, max(MIN_SIDE, round(req.size / ratio))
    else:
        width, height = max(MIN_SIDE, round(req.size * ratio)), req.size
    return width - width % 2, height - height % 2, (x0, y0, x1, y1)


def _day(item: Mapping[str, Any]) -> date | None:
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    if not isinstance(when, str):
        return None
    try:
        parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).date()


def make_plan(req: TimelapseRequest, items: Iterable[Mapping[str, Any]], settings: ProcessingSettings) -> Plan:
    """Items (as the search answers them) grouped into one frame per day; every bound checked before any
    pixel is read."""
    items = list(items)
    if len(items) > settings.timelapse_max_items:
        raise LimitExceeded(f"more than {settings.timelapse_max_items} clear items match "
                            f"({_setting('timelapse_max_items')})",
                            "ask for a smaller area, a shorter period or a lower max_cloud")
    recipe = recipes()[req.collection]
    days: dict[date, list[FrameItem]] = {}
    skipped: list[str] = []
    fingerprint: list[list[Any]] = []
    for item in items:
        props = item.get("properties") or {}
        assets = item.get("assets") or {}
        day, cloud = _day(item), props.get("eo:cloud_cover")
        hrefs = [(assets.get(k) or {}).get("href") for k in recipe.assets]
        if day is None or not isinstance(cloud, (int, float)) or not all(isinstance(h, str) for h in hrefs):
            skipped.append(str(item.get("id")))
            continue
        version = str(props.get("version", ""))
        fingerprint.append([item.get("id"), version, props.get("updated")])
        days.setdefault(day, []).append(FrameItem(str(item["id"]), float(cloud), tuple(hrefs), version))
    frames = tuple(Frame(d, tuple(sorted(v, key=lambda i: (i.cloud_cover, i.id)))) for d, v in sorted(days.items()))
    if len(frames) > settings.timelapse_max_frames:
        raise LimitExceeded(f"{len(frames)} clear dates, over the maximum of {settings.timelapse_max_frames} frames "
                            f"({_setting('timelapse_max_frames')})", "ask for a shorter period or a lower max_cloud")
    width, height, bounds = frame_shape(req)
    if len(frames) * width * height > settings.timelapse_max_pixels:
        # size² × short/long side ≤ max_pixels / frames
        fits = math.isqrt(settings.timelapse_max_pixels // len(frames) * max(width, height) // min(width, height))
        raise LimitExceeded(f"{len(frames)} frames of {width}×{height} px are over the maximum of "
                            f"{settings.timelapse_max_pixels} pixels ({_setting('timelapse_max_pixels')})",
                            f"ask for size ≤ {max(MIN_SIZE, fits)} or a shorter period")
    digest = hashlib.sha256(orjson.dumps({"r": RENDERER, "q": req.key(), "i": fingerprint})).hexdigest()[:32]
    return Plan(req, frames, width, height, bounds, f'W/"{digest}"', tuple(skipped))


# --- frames ---------------------------------------------------------------------------------------------------

def label_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Where the date is written: (left, top, right, bottom), a fixed box at the top left whatever the date."""
    font_px = max(8, round(min(width, height) * 0.07))
    pad = max(2, font_px // 4)
    return 0, 0, min(width, round(font_px * 6.2) + 2 * pad), min(height, round(font_px * 1.25) + 2 * pad)


def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=px)  # Pillow's bundled font (FreeType); no file is fetched


def write_label(rgb: np.ndarray, text: str) -> np.ndarray:
    """`text` white on black in `label_box` of the (rows, cols, 3) frame, in place; returns it."""
    from PIL import Image, ImageDraw

    height, width = rgb.shape[:2]
    left, top, right, bottom = label_box(width, height)
    font_px = max(8, round(min(width, height) * 0.07))
    box = Image.new("RGB", (right - left, bottom - top))
    draw = ImageDraw.Draw(box)
    draw.text((max(2, font_px // 4), max(2, font_px // 4) - font_px // 8), text, fill=(255, 255, 255),
              font=_font(font_px))
    rgb[top:bottom, left:right] = np.asarray(box)
    return rgb


def _read(recipe: Recipe, path: str, plan: Plan) -> np.ma.MaskedArray:
    """One band on the frame grid. rio-tiler warps at the source's resolution, then reduces to the frame with the
    recipe's resampling: the warp itself is nearest (measured 2–3× faster than bilinear for the same picture, a
    mean within 0.05 %), as titiler's tiles do."""
    from rio_tiler.io import Reader

    options = {"nodata": recipe.nodata} if recipe.nodata is not None else {}
    with Reader(path, options=options) as src:
        image = src.part(plan.bounds, dst_crs=MERCATOR, bounds_crs=MERCATOR, width=plan.width, height=plan.height,
                         indexes=1, resampling_method=recipe.resampling, reproject_method="nearest")
    return image.array[0]


def _item_rgb(recipe: Recipe, paths: list[str], plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols, 3) uint8 and the mask of pixels with data."""
    from ingest.drawing import stretch

    bands = [_read(recipe, p, plan) for p in paths]
    if recipe.colormap:
        codes = bands[0]
        rgba = colormaps.apply(recipe.colormap, np.asarray(codes.filled(colormaps.NODATA)).astype(np.int64))
        valid = (rgba[3] > 0) & ~np.ma.getmaskarray(codes)
        return np.moveaxis(rgba[:3], 0, -1), valid
    valid = ~np.logical_or.reduce([np.ma.getmaskarray(b) for b in bands])
    low, high = recipe.rescale or (0.0, 3000.0)
    rgb = stretch(np.stack([np.asarray(b.filled(0)) for b in bands]), ~valid, low, high)
    return np.moveaxis(rgb, 0, -1), valid


def render_frame(plan: Plan, frame: Frame, resolve: Callable[[str], str]) -> np.ndarray:
    """One frame: its items painted clearest first onto black, then its date. An item that cannot be read is
    left out (logged): the frame still shows the day."""
    from rasterio.errors import RasterioError
    from rio_tiler.errors import RioTilerError

    recipe = recipes()[plan.request.collection]
    canvas = np.zeros((plan.height, plan.width, 3), np.uint8)
    filled = np.zeros((plan.height, plan.width), bool)
    for item in frame.items:
        try:
            rgb, valid = _item_rgb(recipe, [resolve(h) for h in item.hrefs], plan)
        except (RasterioError, RioTilerError, NotFound, OSError) as exc:
            log.warning("time-lapse item unreadable", item=item.id, error=str(exc)[:200])
            continue
        take = valid & ~filled
        canvas[take] = rgb[take]
        filled |= valid
        if filled.all():
            break
    return write_label(canvas, frame.day.isoformat())


# --- encoding -------------------------------------------------------------------------------------------------

def render(plan: Plan, resolve: Callable[[str], str], out: IO[bytes],
           progress: Callable[[int, int], None] | None = None) -> None:
    """Every frame rendered in date order and encoded into `out` (a seekable binary file)."""
    import rasterio

    if not plan.frames:
        raise NotFound("no frame to render", "widen the area or the period, or raise max_cloud")
    total = len(plan.frames)

    def frames() -> Iterable[np.ndarray]:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_CACHEMAX=64):
            for n, frame in enumerate(plan.frames):
                yield render_frame(plan, frame, resolve)
                if progress:
                    progress(n + 1, total)

    fmt = plan.request.format
    if fmt == "mp4":
        _mp4(frames(), plan, out)
    else:
        _pillow(frames(), plan, out)


def _pillow(frames: Iterable[np.ndarray], plan: Plan, out: IO[bytes]) -> None:
    from PIL import Image

    images = []
    for rgb in frames:
        image = Image.fromarray(rgb)
        # GIF: quantised at once (1 byte a pixel held instead of 3); WebP keeps true colour
        images.append(image.quantize(256, method=Image.Quantize.MEDIANCUT) if plan.request.format == "gif"
                      else image)
    duration = round(1000 / plan.request.fps)
    if plan.request.format == "gif":
        images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       disposal=1, optimize=False)
    else:
        images[0].save(out, "WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       quality=80, method=4)


def _mp4(frames: Iterable[np.ndarray], plan: Plan, out: IO[bytes]) -> None:
    """H.264 in MP4, each frame encoded as it is rendered (nothing held), one encoder thread."""
    import av

    # fragmented: playable while it arrives, and written in one pass (faststart would reopen the file by name)
    with av.open(out, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) \
            as container:
        stream = container.add_stream("libx264", rate=plan.request.fps,
                                      options={"crf": "20", "preset": "veryfast", "tune": "stillimage"})
        stream.width, stream.height, stream.pix_fmt = plan.width, plan.height, "yuv420p"
        stream.codec_context.thread_count = 1
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

"""Time-lapses from the live server: L2As of tile 31TDH generated with chosen cloud covers and published by the real
pipeline; the animations decoded with Pillow and PyAV and held against the generator's ground truth (its cloud
percentages decide which dates are clear): one frame per clear date, in date order (each frame's date box matched
against the dates drawn alone), cropped to the area; bounds refused with a 400 naming them; the CLI writes a file.
The products are taken out of the catalog at the end, so that the other tests' catalog is what it was."""

from __future__ import annotations

import io
import threading
from datetime import date, datetime, timezone
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from catalog.collections import S2_L2A
from catalog.database import session
from processing.timelapse import label_box, write_label
from tests.conftest import ApiServer, env_for, free_port, run_cli

TILE = "31TDH"
# (acquisition, cloud cover asked of the generator): two acquisitions on 2023-05-11 make one frame
SCHEDULE = [(datetime(2023, 5, 1, 10, 40), 0.0), (datetime(2023, 5, 6, 10, 40), 1.0),
            (datetime(2023, 5, 11, 10, 40), 0.0), (datetime(2023, 5, 11, 13, 5), 0.02),
            (datetime(2023, 5, 21, 10, 40), 0.03), (datetime(2023, 5, 26, 10, 40), 0.0)]
PERIOD = "2023-04-28/2023-05-31"
MAX_CLOUD = 20


@pytest.fixture(scope="module")
def series(catalog_settings, api, tmp_path_factory):
    """The schedule generated and published; yields (products, clear days, bbox of the products)."""
    from ingest.generate import generate_l2a
    from ingest.inbox import take
    from ingest.pipeline import process
    from ingest.settings import IngestSettings
    from ingest.synthetic.grid import tile_grid
    from ingest.synthetic.landscape import build_landscape

    out = tmp_path_factory.mktemp("timelapse")
    ingest_settings = IngestSettings()
    land = build_landscape(tile_grid(TILE), 128, 5)
    products = []
    for when, cover in SCHEDULE:
        made = generate_l2a(out, TILE, when.replace(tzinfo=timezone.utc), size=256, seed=5, cloud_cover=cover,
                            swath_edge=False, landscape=land, truth_dir=out / "truth")
        outcome = process(catalog_settings, ingest_settings,
                          take(catalog_settings, ingest_settings, made.path).receipt_id)
        assert outcome.status == "published", outcome
        products.append(made)
    item = httpx.get(f"{api.url}/collections/{S2_L2A}/items/{products[0].product_id}", timeout=10).json()
    clear = sorted({p.acquired.date() for p in products if p.cloud_percent <= MAX_CLOUD})
    cloudy = {p.acquired.date() for p in products} - set(clear)
    assert len(clear) >= 3 and cloudy, [(p.acquired, p.cloud_percent) for p in products]  # the test means something
    yield products, clear, item["bbox"]
    with session(catalog_settings, "admin") as conn:
        for p in products:
            conn.execute("SELECT pgstac.delete_item(%s, %s)", (p.product_id, S2_L2A))


def _bbox(b) -> str:
    return ",".join(f"{v:.6f}" for v in b)


def _inner(b, shrink: float = 0.1) -> list[float]:
    dx, dy = (b[2] - b[0]) * shrink, (b[3] - b[1]) * shrink
    return [b[0] + dx, b[1] + dy, b[2] - dx, b[3] - dy]


def _get(api, **params) -> httpx.Response:
    return httpx.get(f"{api.url}/timelapse", params=params, timeout=120)


def _frames_pillow(data: bytes) -> list[np.ndarray]:
    image = Image.open(io.BytesIO(data))
    frames = []
    for n in range(image.n_frames):
        image.seek(n)
        frames.append(np.asarray(image.convert("RGB")).copy())
    return frames


def _frames_av(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _labels(days: list[date], shape: tuple[int, int]) -> list[np.ndarray]:
    """Each date drawn alone on black, cut to the label box: what a frame of that date shows there."""
    left, top, right, bottom = label_box(shape[1], shape[0])
    return [write_label(np.zeros((*shape, 3), np.uint8), d.isoformat())[top:bottom, left:right].astype(float)
            for d in days]


def _assert_dated_in_order(frames: list[np.ndarray], days: list[date]) -> None:
    assert len(frames) == len(days)
    shape = frames[0].shape[:2]
    left, top, right, bottom = label_box(shape[1], shape[0])
    expected = _labels(days, shape)
    boxes = [f[top:bottom, left:right].astype(float) for f in frames]
    for n, box in enumerate(boxes):
        distances = [float(np.abs(box - label).mean()) for label in expected]
        assert int(np.argmin(distances)) == n, (n, distances)  # frame n carries date n, and no other
    for a, b in zip(boxes, boxes[1:]):
        assert np.abs(a - b).mean() > 1.0  # the date region differs from one frame to the next


@pytest.mark.parametrize("fmt,decode", [("gif", _frames_pillow), ("webp", _frames_pillow), ("mp4", _frames_av)])
def test_one_frame_per_clear_date_in_date_order(api, series, fmt, decode):
    products, clear, bbox = series
    r = _get(api, bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=MAX_CLOUD, format=fmt, size=160)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith({"gif": "image/gif", "webp": "image/webp", "mp4": "video/mp4"}[fmt])
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["x-timelapse-frames"] == str(len(clear))
    frames = decode(r.content)
    assert max(frames[0].shape[:2]) == 160 and all(f.shape == frames[0].shape for f in frames)
    _assert_dated_in_order(frames, clear)


def test_the_plan_lists_the_clear_dates_and_their_items(api, series):
    products, clear, bbox = series
    r = _get(api, bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=MAX_CLOUD, format="json")
    assert r.status_code == 200, r.text
    plan = r.json()
    assert [f["date"] for f in plan["frames"]] == [d.isoformat() for d in clear]
    expected = {p.product_id for p in products if p.cloud_percent <= MAX_CLOUD}
    listed = [i for f in plan["frames"] for i in f["items"]]
    assert {i["id"] for i in listed} == expected
    same_day = next(f for f in plan["frames"] if f["date"] == "2023-05-11")["items"]
    assert len(same_day) == 2 and same_day[0]["eo:cloud_cover"] <= same_day[1]["eo:cloud_cover"]  # clearest first
    assert r.headers["etag"] == plan["etag"]
    # stricter: fewer dates; max_cloud 100: every date
    strict = _get(api, bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=0, format="json").json()
    assert [f["date"] for f in strict["frames"]] == sorted(
        {p.acquired.date().isoformat() for p in products if p.cloud_percent == 0})
    every = _get(api, bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=100, format="json").json()
    assert len(every["frames"]) == len({p.acquired.date() for p in products})


def test_frames_are_cropped_to_the_area(api, series):
    """An area twice as wide as the product, to the east: the eastern half of every frame is no data (black),
    the western half is the product (no swath edge was generated)."""
    _, clear, bbox = series
    wide = [bbox[0], bbox[1], bbox[2] + (bbox[2] - bbox[0]), bbox[3]]
    r = _get(api, bbox=_bbox(wide), datetime=PERIOD, max_cloud=MAX_CLOUD, format="webp", size=200)
    assert r.status_code == 200, r.text
    frames = _frames_pillow(r.content)
    assert len(frames) == len(clear)
    for frame in frames:
        height, width = frame.shape[:2]
        _, _, _, label_bottom = label_box(width, height)
        west, east = frame[label_bottom:, : int(width * 0.45)], frame[:, int(width * 0.55):]
        assert (east.max(axis=2) <= 8).mean() > 0.97  # black beyond the product (WebP's lossy edges aside)
        assert (west.max(axis=2) > 8).mean() > 0.97  # the product's pixels


def test_etag_answers_304_and_follows_the_parameters(api, series):
    _, _, bbox = series
    params = dict(bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=MAX_CLOUD, format="gif", size=96)
    first = _get(api, **params)
    assert first.status_code == 200 and first.headers["etag"].startswith('W/"')
    assert "public" in first.headers["cache-control"]
    again = httpx.get(f"{api.url}/timelapse", params=params, headers={"If-None-Match": first.headers["etag"]},
                      timeout=60)
    assert again.status_code == 304 and again.content == b""
    other = _get(api, **(params | {"fps": 4}))
    assert other.status_code == 200 and other.headers["etag"] != first.headers["etag"]
    assert _get(api, **params).content == first.content  # same parameters, same items: same bytes


@pytest.mark.parametrize("params,status,needle", [
    ({"size": "5000"}, 400, "LANDSURF_PROCESSING_TIMELAPSE_MAX_SIZE"),
    ({"size": "12"}, 400, "size"),
    ({"datetime": "2015-01-01/2024-01-01"}, 400, "LANDSURF_PROCESSING_TIMELAPSE_MAX_PERIOD_DAYS"),
    ({"datetime": "2023-06-01/2023-05-01"}, 400, "before it starts"),
    ({"datetime": "2023-05-01/.."}, 400, "open-ended"),
    ({"datetime": "yesterday/today"}, 400, "datetime"),
    ({"bbox": "1,2,3"}, 400, "bbox"),
    ({"bbox": "2,44,1,45"}, 400, "inverted"),
    ({"bbox": "0,0,40,40"}, 400, "LANDSURF_PROCESSING_TIMELAPSE_MAX_BBOX_DEGREES"),
    ({"bbox": "0,89,1,90"}, 400, "latitudes"),
    ({"bbox": "nan,1,2,3"}, 400, "bbox"),
    ({"collection": "sentinel2-snow-duration"}, 404, "collection"),
    ({"max_cloud": "101"}, 400, "max_cloud"),
    ({"format": "avi"}, 400, "format"),
    ({"fps": "0"}, 400, "fps"),
    ({"fps": "1e308"}, 400, "fps"),
])
def test_bad_or_oversized_requests_are_named(api, series, params, status, needle):
    _, _, bbox = series
    base = dict(bbox=_bbox(_inner(bbox)), datetime=PERIOD, format="gif")
    r = _get(api, **(base | params))
    assert r.status_code == status, r.text
    assert needle in r.json()["description"]


def test_nothing_clear_is_a_404_and_an_empty_plan(api, series):
    _, _, bbox = series
    empty = dict(bbox=_bbox(_inner(bbox)), datetime="2023-05-06/2023-05-07", max_cloud=MAX_CLOUD)
    r = _get(api, **empty)
    assert r.status_code == 404 and "max_cloud" in r.json()["description"]
    plan = _get(api, **(empty | {"format": "json"}))
    assert plan.status_code == 200 and plan.json()["frames"] == []
    assert _get(api, **(empty | {"collection": "snow"})).status_code == 404  # snow maps: none made here
    # without parameters: what the route takes (the landing page links there)
    about = httpx.get(f"{api.url}/timelapse", timeout=10)
    assert about.status_code == 200 and "bbox" in about.json()["parameters"]
    links = httpx.get(api.url + "/", timeout=10).json()["links"]
    assert any(ln["href"] == f"{api.url}/timelapse" for ln in links)


def test_frame_and_memory_bounds_and_busy_slots(catalog_settings, series):
    """Another server with small bounds: too many frames, too many pixels, and one render slot."""
    products, clear, bbox = series
    days = len({p.acquired.date() for p in products})
    server = ApiServer(catalog_settings, free_port()).start(
        LANDSURF_PUBLIC_URL="", LANDSURF_PROCESSING_TIMELAPSE_MAX_FRAMES=str(days - 1),
        LANDSURF_PROCESSING_TIMELAPSE_MAX_PIXELS=str(len(clear) * 100 * 100),
        LANDSURF_PROCESSING_TIMELAPSE_QUEUE_S="0.05")
    try:
        base = dict(bbox=_bbox(_inner(bbox)), datetime=PERIOD, max_cloud=100, size=64)
        r = _get(server, **base)
        assert r.status_code == 400 and "LANDSURF_PROCESSING_TIMELAPSE_MAX_FRAMES" in r.json()["description"]
        base["max_cloud"] = MAX_CLOUD  # the clear dates only: within the frame bound
        r = _get(server, **(base | {"size": 400}))
        assert r.status_code == 400 and "LANDSURF_PROCESSING_TIMELAPSE_MAX_PIXELS" in r.json()["description"]
        answers: list[httpx.Response] = []

        def ask() -> None:
            answers.append(_get(server, **(base | {"size": 100, "format": "mp4"})))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes  # one slot, 50 ms of patience
        assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    finally:
        server.stop()


def test_cli_writes_the_animation(catalog_settings, api, series, tmp_path):
    _, clear, bbox = series
    target = tmp_path / "out" / "khumbu.mp4"
    done = run_cli("timelapse", "--api", api.url, "--bbox", _bbox(_inner(bbox)), "--datetime", PERIOD,
                   "--max-cloud", str(MAX_CLOUD), "--size", "96", "--out", str(target),
                   env=env_for(catalog_settings))
    assert done.returncode == 0, done.stderr
    assert f"{len(clear)} frames" in done.stdout
    assert len(_frames_av(target.read_bytes())) == len(clear)
    assert not list(target.parent.glob("*.part"))
    refused = run_cli("timelapse", "--api", api.url, "--bbox", _bbox(_inner(bbox)), "--datetime",
                      "2023-05-06/2023-05-07", "--out", str(tmp_path / "none.gif"), env=env_for(catalog_settings))
    assert refused.returncode == 4 and "max-cloud" in refused.stderr and not (tmp_path / "none.gif").exists()

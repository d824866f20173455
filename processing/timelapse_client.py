"""`landsurf timelapse`: a client of any landsurf API's GET /timelapse (the one on this machine by default).

Why a client and not the library: the animation is then made where the data and its bounds are, the same for a
remote box as for this one, and the CLI needs no database. It asks for the plan first (`format=json`: which dates,
how many frames), then the animation, shown as a rich progress bar (rendering on the server, then the bytes), and
writes it to `OUT.part` renamed to OUT once complete, so a file named OUT is never half an animation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TransferSpeedColumn)

from catalog.errors import BadRequest, Busy, LandsurfError, NotFound

FORMATS = ("gif", "webp", "mp4")
TIMEOUT = httpx.Timeout(10.0, read=600.0)  # the server renders before it sends a byte


@dataclass(frozen=True)
class Fetched:
    path: Path
    frames: int
    dates: list[str]
    bytes: int


def format_for(out: Path, given: str | None) -> str:
    """The format asked for, else the one the file name ends with, else GIF."""
    if given:
        if given.lower() not in FORMATS:
            raise BadRequest(f"--format {given!r} is not offered", f"use one of {', '.join(FORMATS)}")
        return given.lower()
    suffix = out.suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "gif"


def _refusal(response: httpx.Response) -> LandsurfError:
    try:
        body = response.json()
        text = body.get("description") or body.get("detail") or response.text
    except ValueError:
        text = response.text
    text = str(text)[:500]
    problem, _, fix = text.partition(" — ")
    if response.status_code == 404:
        return NotFound(problem, fix or None)
    if response.status_code == 503:
        return Busy(f"the API is busy: {problem}", fix or "retry shortly")
    if 400 <= response.status_code < 500:
        return BadRequest(problem, fix or None)
    return LandsurfError(f"the API answered {response.status_code}: {problem}", fix or "retry, or see its log")


def fetch(api: str, params: dict[str, Any], out: Path, *, console: Console | None = None,
          progress: bool = True) -> Fetched:
    """The plan, then the animation, written to `out`."""
    base = api.rstrip("/") + "/timelapse"
    query = {k: str(v) for k, v in params.items() if v is not None}
    part = out.with_name(out.name + ".part")
    try:
        with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
            answer = client.get(base, params=query | {"format": "json"})
            if answer.status_code != 200:
                raise _refusal(answer)
            plan = answer.json()
            dates = [f["date"] for f in plan.get("frames", [])]
            if not dates:
                raise NotFound(f"no clear item of {plan['parameters']['collection']} in the area and period",
                               "widen --bbox or --datetime, or raise --max-cloud")
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
                task = bar.add_task(f"rendering {len(dates)} frames ({dates[0]} … {dates[-1]}) on the server",
                                    total=None)
                with client.stream("GET", base, params=query) as response:
                    if response.status_code != 200:
                        response.read()
                        raise _refusal(response)
                    total = int(response.headers.get("content-length", 0)) or None
                    bar.update(task, description=f"{len(dates)} frames", total=total)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with part.open("wb") as fh:
                        for chunk in response.iter_bytes(1 << 16):
                            fh.write(chunk)
                            bar.advance(task, len(chunk))
                    frames = int(response.headers.get("x-timelapse-frames", len(dates)))
            os.replace(part, out)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise LandsurfError(f"cannot get the time-lapse from {base}: {exc}",
                            "is the API running (`landsurf serve`)? Give its URL with --api or LANDSURF_API") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Fetched(out, frames, dates, out.stat().st_size)

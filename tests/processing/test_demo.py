"""`landsurf demo` (the README's first command), scaled down: two mountain tiles over one L3A month, from an empty
home to snow maps and monthly syntheses with lineage, made by the queue's own planning, and the viewer served."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from datetime import date

import httpx
import morecantile

from catalog.database import session
from processing.demo import demo_plan
from tests.conftest import ROOT, env_for, free_port, make_home, run_cli, settings_for


def test_demo_plan_takes_the_last_months_whose_l3a_is_due():
    plan = demo_plan(date(2026, 12, 2), months=3, every_days=10)
    # October's window ends on 7 November, + the 10-day deadline < 2 December; November's is not due yet
    assert plan.months == ("2026-08", "2026-09", "2026-10")
    assert plan.first == date(2026, 7, 23) and plan.last == date(2026, 11, 7)
    assert plan.deliveries == 3 * 11
    assert demo_plan(date(2027, 1, 20), months=1).months == ("2026-12",)


def test_demo_publishes_l2a_snow_and_l3a_unattended_then_serves_the_viewer():
    settings = settings_for(make_home("landsurf-demo-"))
    port = free_port()
    env = env_for(settings, LANDSURF_PROCESSING_AUTO_DERIVE="true")
    proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "demo", "--tiles", "31TCH,31TDH",
                             "--months", "1", "--size", "256", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("viewer: "):
                break
        viewer = next((ln.split()[1] for ln in lines if ln.startswith("viewer: ")), None)
        assert viewer == f"http://127.0.0.1:{port}/viewer/?month=latest", "".join(lines)[-3000:]
        published = next(ln for ln in lines if ln.startswith("published: "))
        counts = {c: int(n) for n, c in re.findall(r"(\d+) ([a-z0-9-]+)", published)}
        with session(settings) as conn:
            l2a = {r[0] for r in conn.execute("SELECT id FROM pgstac.items WHERE collection = 'sentinel2-l2a'")}
            snow = conn.execute("SELECT content FROM pgstac.items WHERE collection = 'sentinel2-snow'").fetchall()
            l3a = conn.execute("SELECT content FROM pgstac.items WHERE collection = 'sentinel2-l3a'").fetchall()
        plan = demo_plan(date.today(), tiles=("31TCH", "31TDH"), months=1)
        assert len(l2a) == plan.deliveries == counts["sentinel2-l2a"]
        assert counts["dem"] == 2
        # one snow map per L2A, derived from it (and the tile's DEM: pass 2 ran)
        assert len(snow) == len(l2a) == counts["sentinel2-snow"]
        for (content,) in snow:
            sources = [ln["href"].rsplit("/", 1)[-1] for ln in content["links"] if ln["rel"] == "derived_from"]
            assert any(s in l2a for s in sources) and any(s.startswith("dem-") or "DEM" in s.upper() for s in sources)
        # the month asked for, per tile, from the L2As of its window
        month = plan.months[0]
        done = {(c["properties"]["grid:code"], c["properties"]["datetime"][:7]) for (c,) in l3a}
        assert {("MGRS-31TCH", month), ("MGRS-31TDH", month)} <= done
        for (content,) in l3a:
            assert [ln for ln in content["links"] if ln["rel"] == "derived_from"]
        for _ in range(120):  # the server starts after the summary is printed
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        # the month's mosaic is registered and its overview built by the job its L3As planned
        assert f"sentinel2-l3a {month}" in next(ln for ln in lines if ln.startswith("monthly mosaics"))
        mosaic = httpx.get(f"http://127.0.0.1:{port}/raster/mosaics/sentinel2-l3a/{month}", timeout=10).json()
        assert mosaic["overview"] and mosaic["overview"]["max_zoom"] == 7
        west, south, east, north = l3a[0][0]["bbox"]
        tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, 6)
        url = (mosaic["tiles"] if isinstance(mosaic["tiles"], str) else mosaic["tiles"][0])
        url = url.format(z=tile.z, x=tile.x, y=tile.y)
        r = httpx.get(url, params={"assets": ["FRC_B4", "FRC_B3", "FRC_B2"], "rescale": "0,3000"}, timeout=30)
        assert r.status_code == 200 and r.headers.get("x-landsurf-source") == "overview", (r.status_code, r.text[:300])
        page = httpx.get(viewer, timeout=10)
        assert page.status_code == 200 and "maplibre" in page.text.lower()
        landing = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
        assert any(ln["href"].endswith("/viewer/") for ln in landing["links"])
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        run_cli("db", "stop", env=env)
        shutil.rmtree(settings.home, ignore_errors=True)

"""`pytest -m bench`: the catalog benchmark's quick run, end to end (figures: `python -m bench.catalog_bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_home


@pytest.mark.bench
def test_catalog_bench_quick_run_produces_ratios():
    home = make_home("landsurf-bench-quick-")
    proc = subprocess.run([sys.executable, "-m", "bench.catalog_bench", "--quick", "--home", str(home)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((Path(ROOT) / "bench" / "out" / "catalog.json").read_text())
    assert result["load"]["items"] > 10_000 and result["load"]["items_per_s"] > 0
    for key in ("a", "b", "c"):
        assert result["latency"][key]["landsurf"]["n_returned_median"] == result["latency"][key]["peer"]["n_returned_median"]
    assert all(r["landsurf"]["errors"] == 0 for r in result["throughput"].values())

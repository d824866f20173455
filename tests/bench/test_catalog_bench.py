"""The catalog benchmark: its arithmetic and its items in the default suite (no database, well under a second),
and `pytest -m bench`: its quick run end to end (figures: `python -m bench.catalog_bench`)."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from datetime import date

import pytest

from bench import items as gen
from bench.catalog_bench import GOALS, LANDSURF, PEER, SERVERS_OF, STORED, TUNED, goals, ratios, rotate, summarise
from bench.catalog_sql import tile_params
from bench.queries import QUERIES, Scope
from catalog.store import render_href
from tests.conftest import ROOT, make_home


def test_stored_and_rendered_hrefs_are_the_same_urls():
    """The two databases hold the same items: what landsurf renders from a store path is, byte for byte, the
    absolute href the stored-href build kept, for every asset of every collection."""
    tiles = gen.tiles(3)
    base = "http://127.0.0.1:8123"
    for make in (gen.l2a_items, gen.snow_items):
        rel = list(make(tiles, date(2024, 6, 1), date(2024, 6, 20)))
        absolute = list(make(tiles, date(2024, 6, 1), date(2024, 6, 20), base_url=base))
        assert rel and len(rel) == len(absolute)
        for r, a in zip(rel, absolute):
            for key, asset in r["assets"].items():
                assert "://" not in asset["href"] and asset["href"].startswith(r["collection"] + "/")
                assert render_href(asset["href"], base) == a["assets"][key]["href"]


def test_query_a_by_plain_sql_takes_the_body_apart():
    scope = Scope(codes=("31TCJ", "32ULU"))
    body = QUERIES["a"](scope)(random.Random(3))
    params = tile_params(body)
    assert params["code"] == body["filter"]["args"][1] and params["code"].removeprefix("MGRS-") in scope.codes
    assert f"{params['start']}/{params['end']}" == body["datetime"] and params["limit"] == body["limit"]


def test_every_server_takes_every_position_once_in_as_many_rounds():
    names = SERVERS_OF["a"]
    orders = [rotate(names, r) for r in range(len(names))]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert all(sorted(o[i] for o in orders) == sorted(names) for i in range(len(names)))


def _round(rng: random.Random) -> dict:
    def lat() -> dict:
        return {"p50_ms": rng.uniform(10, 50), "p95_ms": rng.uniform(50, 90), "n_returned_median": 7}

    def tp() -> dict:
        return {"req_per_s": rng.uniform(20, 100), "p50_ms": rng.uniform(10, 50), "p95_ms": rng.uniform(50, 90),
                "errors": 0}

    return {"latency": {k: {n: lat() for n in SERVERS_OF[k]} for k in "abc"},
            "throughput": {k: {n: tp() for n in SERVERS_OF[k]} for k in "abc"}}


def test_ratios_are_taken_within_rounds_and_summarised_over_them():
    rng = random.Random(7)
    rounds = [_round(rng) for _ in range(3)]
    per_round = [rd["throughput"]["b"][LANDSURF]["req_per_s"] / rd["throughput"]["b"][TUNED]["req_per_s"]
                 for rd in rounds]
    r = ratios(rounds, LANDSURF, TUNED, "abc")
    assert set(r) == {"a", "b", "c"}
    assert r["b"]["throughput"]["median"] == round(statistics.median(per_round), 2)
    assert r["b"]["throughput"]["min"] == round(min(per_round), 2)
    s = summarise(rounds)
    p95 = [rd["latency"]["c"][PEER]["p95_ms"] for rd in rounds]
    assert s["latency"]["c"][PEER]["p95_ms"]["max"] == round(max(p95), 2)
    assert set(s["throughput"]["a"]) == set(SERVERS_OF["a"]) and set(s["latency"]["b"]) == set(SERVERS_OF["b"])
    judged = goals(rounds)
    assert len(judged) == sum(len(keys) for *_, keys in GOALS)
    for g in judged:
        assert g["throughput_met"] == (g["throughput_ratio"]["median"] >= g["throughput_goal"])
        assert g["p95_met"] == (g["p95_ratio"]["median"] <= g["p95_goal"])
    assert {g["query"] for g in judged if g["reference"] == STORED} == {"a"}


@pytest.mark.bench
def test_catalog_bench_quick_run_checks_and_measures_every_server(tmp_path):
    home = make_home("landsurf-bench-quick-")
    out = tmp_path / "catalog.json"
    proc = subprocess.run([sys.executable, "-m", "bench.catalog_bench", "--quick", "--home", str(home),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not home.exists()  # cluster destroyed, home removed
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "landsurf-c738a65" not in worktrees
    for db in ("landsurf", "landsurf_abs"):
        assert result["load"][db]["items"] > 10_000
    assert result["load"]["landsurf"]["per_collection"] == result["load"]["landsurf_abs"]["per_collection"]
    assert result["pgstac_settings"]["context"] == "on"
    for key in ("a", "b", "c"):
        check = result["check"][key]
        assert check["identical_ids_in_order"] and check["numberMatched_on_every_page"]
        assert set(SERVERS_OF[key]) <= set(check["servers"])
    assert result["sql_plan_a"]["scans"] and all("Index" in s["Node Type"] for s in result["sql_plan_a"]["scans"])
    assert len(result["rounds"]) == 2
    for key, row in result["summary"]["throughput"].items():
        assert all(fig["errors"] == 0 and fig["req_per_s"]["median"] > 0 for fig in row.values()), key
    assert {(g["reference"], g["query"]) for g in result["goals"]} == {
        (ref, k) for _, ref, _, _, keys in GOALS for k in keys}

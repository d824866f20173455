"""Publishers racing into a partition pgSTAC has not created yet (the CI failure of stop 15: two ingest workers
publishing the first products of a year; one got `relation "_items_1_2022" does not exist`)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import PurePosixPath

import pytest

from catalog.collections import HISTORY_SUFFIX
from catalog.database import session
from catalog.publish import publish_product
from ingest.settings import IngestSettings

WRITERS = 6


def _collection(cid: str) -> dict:
    return {"type": "Collection", "stac_version": "1.1.0", "id": cid, "description": "partition race", "license": "other",
            "links": [], "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                    "temporal": {"interval": [[None, None]]}}}


def _item(cid: str, n: int) -> dict:
    lon = 1.0 + n * 0.01
    return {"type": "Feature", "stac_version": "1.1.0", "id": f"race-{n}", "collection": cid, "links": [],
            "geometry": {"type": "Point", "coordinates": [lon, 43.0]}, "bbox": [lon, 43.0, lon, 43.0],
            "properties": {"datetime": f"2031-0{1 + n % 6}-1{n % 9}T10:00:00Z", "grid:code": f"MGRS-31TC{n}"},
            "assets": {}}


@pytest.fixture
def year_collection(catalog_settings):
    """A fresh collection and its history, partitioned by year, none created yet: removed after the test."""
    cid = f"race-{uuid.uuid4().hex[:8]}"
    with session(catalog_settings, "admin") as conn:
        for name in (cid, cid + HISTORY_SUFFIX):
            conn.execute("SELECT pgstac.create_collection(%s::jsonb)", (json.dumps(_collection(name)),))
            conn.execute("UPDATE pgstac.collections SET partition_trunc = 'year' WHERE id = %s", (name,))
    try:
        yield cid
    finally:
        with session(catalog_settings, "admin") as conn:
            for name in (cid, cid + HISTORY_SUFFIX):
                conn.execute("SELECT pgstac.delete_collection(%s)", (name,))


def test_concurrent_first_publications_of_a_year_all_commit(catalog_settings, year_collection):
    cid = year_collection
    staging_root = IngestSettings.staging_dir(catalog_settings)
    barrier = threading.Barrier(WRITERS)
    outcomes: dict[int, object] = {}

    def publish(n: int) -> None:
        staging = staging_root / f"race-{cid}-{n}"
        staging.mkdir(parents=True)
        (staging / "f.txt").write_text(str(n))
        barrier.wait()
        try:
            outcomes[n] = publish_product(catalog_settings, _item(cid, n), staging,
                                          PurePosixPath(cid, str(n), f"race-{n}")).outcome
        except Exception as exc:  # noqa: BLE001 - the failure is the assertion
            outcomes[n] = exc

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes == {n: "published" for n in range(WRITERS)}
    with session(catalog_settings) as conn:
        count = conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (cid,)).fetchone()[0]
    assert count == WRITERS


def test_concurrent_first_api_writes_of_a_year_all_commit(catalog_settings, api, admin_token, year_collection):
    """The same race through the STAC transactions API: admin POSTs of the first items of a year (5 of 6 answered
    500 before the API took the publishers' partition locks)."""
    import asyncio

    import httpx

    cid = year_collection
    headers = {"Authorization": f"Bearer {admin_token}"}

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=60) as client:
            answers = await asyncio.gather(*(client.post(f"/collections/{cid}/items", json=_item(cid, n))
                                             for n in range(WRITERS)))
        return [r.status_code for r in answers]

    statuses = asyncio.run(post_all())
    assert statuses == [201] * WRITERS, statuses
    with session(catalog_settings, "admin") as conn:
        n = conn.execute("SELECT count(*) FROM pgstac.items WHERE collection = %s", (cid,)).fetchone()[0]
    assert n == WRITERS

"""`landsurf catalog rebase`: a catalog whose items still hold absolute hrefs of an old public URL (as items
were written before store-relative hrefs) is migrated by one command, counted first, idempotent, safe to
interrupt; until then such items are still searched and drawn."""

from __future__ import annotations

import copy
import json
import re

import httpx
import pytest
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods

from catalog.collections import COLLECTIONS, S2_L2A
from catalog.database import bounded_url, resolve_urls, session
from catalog.rebase import BATCH, rebase
from tests.conftest import env_for, run_cli

OLD = "http://old-box.example:8000"
TEST_COLLECTION = "rebase-test"
# Size is not what is tested (rebase reads by keyset, BATCH rows at a time): enough items for several full
# batches, an interrupted run that stops after the first and items (1200…) that it has not reached.
COUNT = 2_000


def _old_form(item: dict, n: int, base: str) -> dict:
    """A copy of a served item as the old code would have stored it: hrefs absolute under OLD."""
    old = copy.deepcopy(item)
    old["id"] = f"{item['id']}-{n:05d}"
    old["collection"] = TEST_COLLECTION
    for asset in old["assets"].values():
        asset["href"] = asset["href"].replace(base, OLD)
    old["links"] = [{"rel": "latest-version", "href": f"{OLD}/collections/{S2_L2A}/items/{item['id']}",
                     "type": "application/geo+json"},
                    {"rel": "license", "href": "https://www.etalab.gouv.fr/licence-ouverte-open-licence"}]
    return old


@pytest.fixture(scope="module")
def old_catalog(catalog_settings, published_items, api):
    assert COUNT >= 4 * BATCH and COUNT > 1210, "too few items for several batches and an unreached one"
    spec = COLLECTIONS[S2_L2A].to_dict() | {"id": TEST_COLLECTION, "title": "rebase test"}
    template = published_items[0]
    with session(catalog_settings, "admin") as conn:
        conn.execute("SELECT pgstac.create_collection(%s::jsonb)", (json.dumps(spec),))
    foreign = _old_form(template, COUNT, api.url)
    foreign["assets"] = {"FRE_B4": {**foreign["assets"]["FRE_B4"], "href": "https://bucket.example/b4.tif"}}
    items = [_old_form(template, n, api.url) for n in range(COUNT)] + [foreign]
    db = PgstacDB(dsn=bounded_url(resolve_urls(catalog_settings).admin, catalog_settings, 600_000))
    try:  # pypgstac's bulk loader (COPY), as a catalog of that size was loaded
        Loader(db=db).load_items(iter(items), insert_mode=Methods.insert)
    finally:
        db.close()
    yield
    with session(catalog_settings, "admin") as conn:
        conn.execute("SELECT pgstac.delete_collection(%s)", (TEST_COLLECTION,))


def _stored(settings, item_id: str) -> dict:
    with session(settings, "admin") as conn:
        return conn.execute("SELECT content FROM pgstac.items WHERE collection = %s AND id = %s",
                            (TEST_COLLECTION, item_id)).fetchone()[0]


def test_rebase_counts_rewrites_and_is_idempotent(catalog_settings, published_items, old_catalog, api):
    first = f"{published_items[0]['id']}-00000"
    # before the migration: served (hrefs of the old URL) and drawn (the tiler finds the store file)
    served = httpx.get(f"{api.url}/collections/{TEST_COLLECTION}/items/{first}").json()
    assert served["assets"]["FRE_B4"]["href"].startswith(OLD + "/download/")
    preview = httpx.get(f"{api.url}/raster/collections/{TEST_COLLECTION}/items/{first}/preview.png"
                        "?assets=FRE_B4&rescale=0,3000&max_size=64", timeout=30)
    assert preview.status_code == 200, preview.text[:300]

    env = env_for(catalog_settings)
    dry = run_cli("catalog", "rebase", "--from", OLD + "/", "--dry-run", env=env, timeout=600)
    assert dry.returncode == 0, dry.stderr
    # every asset and the latest-version link of each old item, and the link of the one with a foreign asset
    hrefs, items = COUNT * (len(published_items[0]["assets"]) + 1) + 1, COUNT + 1
    assert re.search(rf"would rewrite {hrefs} hrefs in {items} items", dry.stdout), dry.stdout
    assert _stored(catalog_settings, first)["assets"]["FRE_B4"]["href"].startswith(OLD)

    done = run_cli("catalog", "rebase", "--from", OLD, env=env, timeout=600)
    assert done.returncode == 0 and f"rewrote {hrefs} hrefs in {items} items" in done.stdout, done.stdout
    stored = _stored(catalog_settings, first)
    assert stored["assets"]["FRE_B4"]["href"].startswith(f"{S2_L2A}/31TCH/2024/06/")
    assert {link["href"] for link in stored["links"]} == {
        f"/collections/{S2_L2A}/items/{published_items[0]['id']}",
        "https://www.etalab.gouv.fr/licence-ouverte-open-licence"}
    foreign = _stored(catalog_settings, f"{published_items[0]['id']}-{COUNT:05d}")
    assert foreign["assets"]["FRE_B4"]["href"] == "https://bucket.example/b4.tif"  # not ours: untouched

    served = httpx.get(f"{api.url}/collections/{TEST_COLLECTION}/items/{first}").json()
    assert served["assets"]["FRE_B4"]["href"] == published_items[0]["assets"]["FRE_B4"]["href"]
    again = run_cli("catalog", "rebase", "--from", OLD, env=env, timeout=600)
    assert "rewrote 0 hrefs in 0 items" in again.stdout


def test_rebase_is_safe_to_interrupt(catalog_settings, published_items, old_catalog, api):
    with session(catalog_settings, "admin") as conn:  # put a few items back in the old form
        for n in [*range(0, 10), *range(1200, 1210)]:
            item = _old_form(published_items[0], n, api.url)
            conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", (json.dumps(item),))

    def stop_after_first_batch(report):
        if report.examined >= 500:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebase(catalog_settings, OLD, progress=stop_after_first_batch)
    ident = published_items[0]["id"]
    assert not _stored(catalog_settings, f"{ident}-00000")["assets"]["FRE_B4"]["href"].startswith(OLD)  # committed
    assert _stored(catalog_settings, f"{ident}-01200")["assets"]["FRE_B4"]["href"].startswith(OLD)  # not reached
    finished = rebase(catalog_settings, OLD)
    assert finished.items == 10  # the ones the interrupted run had not reached
    assert rebase(catalog_settings, OLD).items == 0

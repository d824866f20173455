"""STAC transactions that keep the catalog's promise: an item written through the API points its
assets at this store only. Our own download URLs are stored back as store paths (so they follow the
public URL later); any other href is refused with 400, so that no item makes the tiler or a
downloader fetch another host or a file outside the store.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from stac_fastapi.pgstac.config import Settings as StacSettings
from stac_fastapi.pgstac.models.extensions import Extensions
from stac_fastapi.pgstac.transactions import BulkTransactionsClient, TransactionsClient
from stac_fastapi.api.models import JSONResponse
from stac_fastapi.extensions import BulkTransactionExtension, TransactionExtension

from catalog.store import AssetStore


class _StoreAssets:
    store: AssetStore

    def _store_hrefs(self, request: Request, obj: dict[str, Any]) -> None:
        base = str(request.base_url)
        for asset in (obj.get("assets") or {}).values():
            if isinstance(asset, dict) and "href" in asset:
                asset["href"] = self.store.stored_form(asset["href"], base)

    def _validate_item(self, request, item, collection_id, expected_item_id=None):  # type: ignore[override]
        super()._validate_item(request, item, collection_id, expected_item_id)  # type: ignore[misc]
        self._store_hrefs(request, item)

    def _validate_collection(self, request, collection):  # type: ignore[override]
        super()._validate_collection(request, collection)  # type: ignore[misc]
        self._store_hrefs(request, collection)


def landsurf_extensions(settings: StacSettings, store: AssetStore) -> Extensions:
    """stac-fastapi-pgstac's extensions, with transaction clients that keep assets in the store."""

    class StoreTransactions(_StoreAssets, TransactionsClient):
        pass

    class StoreBulkTransactions(_StoreAssets, BulkTransactionsClient):
        pass

    StoreTransactions.store = StoreBulkTransactions.store = store

    class LandsurfExtensions(Extensions):
        @property
        def transaction(self):  # type: ignore[override]
            return [
                TransactionExtension(client=StoreTransactions(), settings=self.settings,
                                     response_class=JSONResponse),
                BulkTransactionExtension(client=StoreBulkTransactions()),
            ]

    return LandsurfExtensions(settings=settings)

"""One delivery, from receipt to searchable: extract → read and validate → write COGs → build item → publish.

A fault of the delivery moves it to quarantine with its reason; a fault of the system (disk full,
database down) raises `TransientIngestError` so the job is retried, with the delivery kept in work/.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from catalog.collections import S2_L2A
from catalog.errors import DatabaseUnavailable
from catalog.logging import get_logger
from catalog.publish import PublishConflict, publish_product
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, product_prefix
from ingest import receipts
from ingest.errors import InvalidDelivery, TransientIngestError
from ingest.settings import IngestSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    receipt_id: int
    status: str              # published | duplicate | quarantined
    product_id: str | None = None
    collection: str | None = None
    reason: str | None = None


def quarantine(catalog: CatalogSettings, settings: IngestSettings, receipt_id: int, path: Path, reason: str) -> Path:
    """Move the delivery aside with a JSON note of the reason beside it."""
    qdir = settings.quarantine_dir(catalog)
    qdir.mkdir(parents=True, exist_ok=True)
    target = qdir / f"{receipt_id}-{path.name}"
    if path.exists():
        shutil.move(str(path), target)
        _remove_receipt_dir(path)
    (qdir / f"{target.name}.reason.json").write_text(json.dumps({"receipt": receipt_id, "reason": reason}, indent=2))
    return target


def process(catalog: CatalogSettings, settings: IngestSettings, receipt_id: int) -> Outcome:
    """Run every stage for one receipt. Idempotent: re-running a published delivery reports a duplicate."""
    from ingest.cog import write_cogs
    from ingest.item import build_item
    from ingest.muscate import extract, read_l2a
    from ingest.model import Delivery

    rec = receipts.get(catalog, receipt_id)
    if rec.status in ("published", "duplicate", "quarantined"):
        return Outcome(receipt_id, rec.status, rec.product_id, rec.collection, rec.reason)
    receipts.start(catalog, receipt_id)
    path = Path(rec.path)
    earlier = receipts.published_with_checksum(catalog, rec.checksum, exclude=receipt_id)
    if earlier is not None:
        reason = f"same bytes as delivery {earlier.id} ({earlier.name}), already published as {earlier.product_id}"
        receipts.finish(catalog, receipt_id, "duplicate", reason=reason, product_id=earlier.product_id,
                        collection=earlier.collection)
        _discard(path)
        return Outcome(receipt_id, "duplicate", earlier.product_id, earlier.collection, reason)

    store = AssetStore.from_settings(catalog)
    work = settings.work_dir(catalog) / f"{receipt_id}.extract"
    staging = store.root / ".staging" / str(receipt_id)
    delivery = Delivery(path=path, name=rec.name, checksum=rec.checksum, size=0, receipt_id=receipt_id)
    try:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        root = extract(delivery, work)
        product = read_l2a(root)
        staging.parent.mkdir(parents=True, exist_ok=True)
        cogs = write_cogs(product, staging, compress=settings.compress)
        rel = product_prefix(S2_L2A, product.tile, product.acquired, product.product_id)
        item = build_item(product, cogs, lambda key: store.href(rel / cogs.files[key].path.relative_to(staging)),
                          collection_href=f"{store.public_url}/collections/{S2_L2A}")
        published = publish_product(catalog, item.to_dict(include_self_link=False, transform_hrefs=False),
                                    staging, rel)
    except (InvalidDelivery, PublishConflict) as exc:
        reason = str(exc)
        quarantine(catalog, settings, receipt_id, path, reason)
        receipts.finish(catalog, receipt_id, "quarantined", reason=reason)
        log.warning("delivery quarantined", receipt=receipt_id, delivery=rec.name, reason=reason)
        return Outcome(receipt_id, "quarantined", reason=reason)
    except (TransientIngestError, DatabaseUnavailable, OSError) as exc:
        reason = str(exc)
        _record_failure(catalog, receipt_id, reason)
        log.warning("delivery failed, will be retried", receipt=receipt_id, delivery=rec.name, reason=reason)
        raise TransientIngestError(f"{rec.name}: {reason}", "the job is retried with backoff") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)

    status = "duplicate" if published.outcome == "duplicate" else "published"
    reason = None
    if published.outcome == "history":
        reason = "an older version than the current one: published as history"
    elif published.superseded:
        reason = f"supersedes {published.superseded}"
    receipts.finish(catalog, receipt_id, status, reason=reason, product_id=published.item_id,
                    collection=published.collection)
    _discard(path, keep=settings.keep_deliveries)
    log.info("delivery published", receipt=receipt_id, product=published.item_id, collection=published.collection,
             outcome=published.outcome)
    return Outcome(receipt_id, status, published.item_id, published.collection, reason)


def _record_failure(catalog: CatalogSettings, receipt_id: int, reason: str) -> None:
    try:
        receipts.finish(catalog, receipt_id, "failed", reason=reason)
    except DatabaseUnavailable:
        pass  # the receipt says "processing"; the retry will update it


def _discard(path: Path, keep: bool = False) -> None:
    if keep:
        done = path.parent.parent / "done"
        done.mkdir(exist_ok=True)
        shutil.move(str(path), done / f"{path.parent.name}-{path.name}")
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _remove_receipt_dir(path)


def _remove_receipt_dir(path: Path) -> None:
    """work/<receipt>/ is removed once its delivery has left it."""
    if path.parent.name.isdigit():
        try:
            path.parent.rmdir()
        except OSError:
            pass

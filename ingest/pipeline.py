"""One delivery, from receipt to searchable: extract → read and validate → write COGs → build item → publish.

Every exception out of a stage ends in exactly one of three outcomes (ingest/faults.py):
- the delivery's fault → quarantine with its reason (never retried) — unless the delivery changed since it was
  taken from the inbox (an upload that stalled longer than the stable window): then it goes back to the inbox;
- the system's fault (disk full, I/O error, database down) → receipt `retrying`, `TransientIngestError` raised so
  that the queue retries the job with backoff, the delivery kept in work/; after `max_attempts` → `failed`;
- anything else → receipt `failed` with the error, `IngestFailed` raised (not retried automatically).

A receipt is processed under its receipt lock (one live session at a time); each attempt first removes what a
dead attempt left (`work/<receipt>.extract`, `<store>/.staging/<receipt>`, a directory set aside at publication).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from catalog.collections import S2_L2A
from catalog.errors import DatabaseUnavailable
from catalog.logging import get_logger
from catalog.publish import PublishConflict, aside_dir, publish_product
from catalog.settings import CatalogSettings
from catalog.store import AssetStore, api_path, product_prefix
from ingest import receipts
from ingest.errors import DeliveryError, IngestFailed, InvalidDelivery, ReceiptBusy, TransientIngestError
from ingest.faults import is_system_fault
from ingest.settings import IngestSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    receipt_id: int
    status: str              # published | duplicate | quarantined | returned | failed
    product_id: str | None = None
    collection: str | None = None
    reason: str | None = None


PublishedHook = Callable[[CatalogSettings, Outcome], object]
_PUBLISHED_HOOKS: list[PublishedHook] = []


def on_published(hook: PublishedHook) -> None:
    """Call `hook(catalog, outcome)` after each L2A this process publishes (processing registers its planning
    of derived products here: ingest never imports processing). A failing hook is logged; it changes no outcome."""
    if hook not in _PUBLISHED_HOOKS:
        _PUBLISHED_HOOKS.append(hook)


def _published_hooks(catalog: CatalogSettings, outcome: Outcome) -> None:
    for hook in list(_PUBLISHED_HOOKS):
        try:
            hook(catalog, outcome)
        except Exception as exc:  # noqa: BLE001 - the delivery is published whatever a hook does
            log.warning("a publication hook failed", product=outcome.product_id, error=str(exc)[:300])


def write_reason(qdir: Path, name: str, receipt_id: int, reason: str) -> None:
    (qdir / f"{name}.reason.json").write_text(json.dumps({"receipt": receipt_id, "reason": reason}, indent=2))


def quarantine(catalog: CatalogSettings, settings: IngestSettings, receipt_id: int, path: Path, reason: str) -> Path:
    """Move the delivery aside with a JSON note of the reason beside it (idempotent: a second call after a crash
    finds it moved already)."""
    qdir = settings.quarantine_dir(catalog)
    qdir.mkdir(parents=True, exist_ok=True)
    target = qdir / f"{receipt_id}-{path.name}"
    write_reason(qdir, target.name, receipt_id, reason)  # first: a delivery in quarantine always has its reason
    if os.path.lexists(path) and _in_work(settings, catalog, path):
        shutil.move(str(path), target)
        _remove_receipt_dir(path)
    return target


def process(catalog: CatalogSettings, settings: IngestSettings, receipt_id: int) -> Outcome:
    """Run every stage for one receipt. Idempotent: a receipt already decided is reported, not processed again.

    Raises `ReceiptBusy` (another live process has it), `TransientIngestError` (retry later) or `IngestFailed`.
    """
    with receipts.claim(catalog, receipt_id) as claim:
        return _process(catalog, settings, receipt_id, claim)


def _process(catalog: CatalogSettings, settings: IngestSettings, receipt_id: int,
             claim: receipts.Claim) -> Outcome:
    from ingest.inbox import resume_take

    rec = receipts.get(catalog, receipt_id)
    if rec.status not in receipts.OPEN:
        return Outcome(receipt_id, rec.status, rec.product_id, rec.collection, rec.reason)
    work = settings.work_dir(catalog) / f"{receipt_id}.extract"
    staging = settings.staging_dir(catalog) / str(receipt_id)
    _clean(work, staging, aside_dir(staging))  # leftovers of an attempt that died
    if rec.attempts >= settings.max_attempts:
        last = rec.reason or "the worker stopped while processing it (killed, out of memory, power loss?)"
        reason = (f"gave up after {rec.attempts} attempts; the last: {last} — fix the cause, then "
                  f"`landsurf ingest retry {receipt_id}`")
        receipts.finish(catalog, receipt_id, "failed", reason=reason)
        log.error("delivery failed", receipt=receipt_id, delivery=rec.name, reason=reason)
        return Outcome(receipt_id, "failed", reason=reason)
    if Path(rec.path).parent != settings.work_dir(catalog) / str(receipt_id) or not os.path.lexists(rec.path):
        rec = resume_take(catalog, settings, rec)  # a crash between receipt and rename, copy or quarantine
        if rec.status not in receipts.OPEN:
            return Outcome(receipt_id, rec.status, reason=rec.reason)
    receipts.start(catalog, receipt_id)
    rec = receipts.get(catalog, receipt_id)
    store = AssetStore.from_settings(catalog)
    path = Path(rec.path)
    try:
        earlier = receipts.published_with_checksum(catalog, rec.checksum, exclude=receipt_id)
        if earlier is not None:
            reason = f"same bytes as delivery {earlier.id} ({earlier.name}), already published as {earlier.product_id}"
            receipts.finish(catalog, receipt_id, "duplicate", reason=reason, product_id=earlier.product_id,
                            collection=earlier.collection)
            _discard(catalog, settings, path)
            return Outcome(receipt_id, "duplicate", earlier.product_id, earlier.collection, reason)
        published = _stages(catalog, settings, rec, path, work, staging, store, claim)
    except ReceiptBusy:
        raise  # another live process owns the receipt now: touch nothing
    except (InvalidDelivery, PublishConflict) as exc:
        claim.check()
        return _refuse(catalog, settings, rec, path, str(exc))
    except Exception as exc:  # noqa: BLE001 - every exception is classified, none escapes unrecorded
        if is_system_fault(exc):
            raise _retry_later(catalog, settings, rec, exc) from exc
        raise _fail(catalog, rec, exc) from exc
    finally:
        _clean(work, staging)

    status, reason = "published", None
    if published.outcome == "duplicate":
        other = receipts.publisher_of(catalog, published.item_id, exclude=receipt_id)
        if other is not None:
            status, reason = "duplicate", f"{published.reason} (delivery {other.id}, {other.name})"
        else:
            reason = "its item was committed by an earlier attempt of this receipt, stopped before recording it"
    elif published.outcome == "history":
        reason = "an older version than the current one: published as history"
    elif published.superseded:
        reason = f"supersedes {published.superseded}"
    receipts.finish(catalog, receipt_id, status, reason=reason, product_id=published.item_id,
                    collection=published.collection)
    _discard(catalog, settings, path, keep=settings.keep_deliveries)
    log.info("delivery published" if status == "published" else "delivery is a duplicate", receipt=receipt_id,
             product=published.item_id, collection=published.collection, outcome=published.outcome)
    outcome = Outcome(receipt_id, status, published.item_id, published.collection, reason)
    if status == "published":
        _published_hooks(catalog, outcome)
    return outcome


def _stages(catalog: CatalogSettings, settings: IngestSettings, rec: receipts.Receipt, path: Path, work: Path,
            staging: Path, store: AssetStore, claim: receipts.Claim):
    from ingest.cog import write_cogs
    from ingest.item import build_item
    from ingest.model import Delivery
    from ingest.muscate import check_delivery_name, extract, read_l2a

    delivery = Delivery(path=path, name=rec.name, checksum=rec.checksum, size=0, receipt_id=rec.id)
    root = extract(delivery, work, settings)
    product = read_l2a(root)
    check_delivery_name(rec.name, product)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cogs = write_cogs(product, staging, compress=settings.compress, settings=settings)  # type: ignore[arg-type]
    rel = product_prefix(S2_L2A, product.tile, product.acquired, product.product_id)
    item = build_item(product, cogs, lambda key: store.href(rel / cogs.files[key].path.relative_to(staging)),
                      collection_href=api_path("collections", S2_L2A))
    claim.check()  # nothing irreversible unless the receipt is still ours
    return publish_product(catalog, item.to_dict(include_self_link=False, transform_hrefs=False), staging, rel)


def _refuse(catalog: CatalogSettings, settings: IngestSettings, rec: receipts.Receipt, path: Path,
            reason: str) -> Outcome:
    """Quarantine — unless the delivery is still being written (then it goes back to the inbox)."""
    if _still_being_written(catalog, settings, rec, path):
        back = settings.inbox_dir(catalog) / rec.name
        if not os.path.lexists(back):
            os.rename(path, back)
            _remove_receipt_dir(path)
            note = ("the delivery changed after it was taken (an upload still in progress): returned to the inbox, "
                    f"it is taken again once complete (it was refused as: {reason})")
            receipts.finish(catalog, rec.id, "returned", reason=note, path=str(back))
            log.warning("delivery returned to the inbox", receipt=rec.id, delivery=rec.name)
            return Outcome(rec.id, "returned", reason=note)
    quarantine(catalog, settings, rec.id, path, reason)
    receipts.finish(catalog, rec.id, "quarantined", reason=reason)
    log.warning("delivery quarantined", receipt=rec.id, delivery=rec.name, reason=reason)
    return Outcome(rec.id, "quarantined", reason=reason)


def _still_being_written(catalog: CatalogSettings, settings: IngestSettings, rec: receipts.Receipt,
                         path: Path) -> bool:
    """Has a delivery taken from the inbox changed since (size, mtime; a folder's tree)? Asked again after
    one more stable window, so that an upload that stalled longer than the window is not quarantined."""
    from ingest.inbox import signature

    if not rec.signature or not rec.source or Path(rec.source).parent != settings.inbox_dir(catalog):
        return False  # copies made by a one-shot ingest never change
    try:
        if signature(path) != rec.signature:
            return True
        time.sleep(settings.stable_seconds)
        return signature(path) != rec.signature
    except OSError:
        return False


def _retry_later(catalog: CatalogSettings, settings: IngestSettings, rec: receipts.Receipt,
                 exc: BaseException) -> DeliveryError:
    attempts = rec.attempts  # counted by start()
    what = str(exc) or type(exc).__name__
    if attempts >= settings.max_attempts:
        reason = (f"system fault, gave up after {attempts} attempts: {what} — fix the cause, then "
                  f"`landsurf ingest retry {rec.id}`")
        _record(catalog, rec.id, "failed", reason)
        log.error("delivery failed", receipt=rec.id, delivery=rec.name, reason=reason)
        return IngestFailed(f"{rec.name}: {reason}")
    reason = f"{what} (attempt {attempts} of {settings.max_attempts}; retried automatically)"
    _record(catalog, rec.id, "retrying", reason)
    log.warning("delivery failed, will be retried", receipt=rec.id, delivery=rec.name, reason=what)
    return TransientIngestError(f"{rec.name}: {what}", "the job is retried with backoff")


def _fail(catalog: CatalogSettings, rec: receipts.Receipt, exc: BaseException) -> IngestFailed:
    reason = (f"unexpected error ({type(exc).__name__}): {exc} — not retried automatically; once the cause is "
              f"fixed: `landsurf ingest retry {rec.id}`")
    _record(catalog, rec.id, "failed", reason)
    log.error("delivery failed", receipt=rec.id, delivery=rec.name, reason=reason, exc_info=exc)
    return IngestFailed(f"{rec.name}: {reason}")


def _record(catalog: CatalogSettings, receipt_id: int, status: str, reason: str) -> None:
    try:
        receipts.finish(catalog, receipt_id, status, reason=reason)
    except DatabaseUnavailable:
        pass  # the receipt says "processing"; the queue's sweep finds it and the retry updates it


def _clean(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def _in_work(settings: IngestSettings, catalog: CatalogSettings, path: Path) -> bool:
    """Only landsurf's own copies in work/ are ever moved or deleted, never a caller's files."""
    return Path(path).absolute().is_relative_to(settings.work_dir(catalog))


def _discard(catalog: CatalogSettings, settings: IngestSettings, path: Path, keep: bool = False) -> None:
    """The delivery is decided: its copy in work/ goes (or to work/done). A failure here changes no outcome."""
    try:
        _discard_now(catalog, settings, path, keep)
    except OSError as exc:
        log.warning("delivery left in work/", path=str(path), error=str(exc))


def _discard_now(catalog: CatalogSettings, settings: IngestSettings, path: Path, keep: bool) -> None:
    if not _in_work(settings, catalog, path) or not os.path.lexists(path):
        return
    if keep:
        done = settings.work_dir(catalog) / "done"
        done.mkdir(exist_ok=True)
        shutil.move(str(path), done / f"{path.parent.name}-{path.name}")
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _remove_receipt_dir(path)


def _remove_receipt_dir(path: Path) -> None:
    """work/<receipt>/ is removed once its delivery has left it."""
    if path.parent.name.isdigit():
        shutil.rmtree(path.parent, ignore_errors=True)


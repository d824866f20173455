"""Errors of ingest, by who is at fault — which decides what happens to the delivery.

- the delivery (`InvalidDelivery`, `LimitExceeded`): quarantined with the reason, never retried;
- the system (`TransientIngestError`: disk full, I/O error, database down): the job is retried with backoff,
  the delivery kept, until `LANDSURF_INGEST_MAX_ATTEMPTS`; then the receipt is `failed`;
- anything else (`IngestFailed`, a bug or an unforeseen fault): the receipt is `failed` with the error, at once;
  `landsurf ingest retry` starts it again once the cause is fixed.
"""

from __future__ import annotations

from pathlib import Path

from catalog.errors import LandsurfError


class DeliveryError(LandsurfError):
    """Base of ingest errors."""


class InvalidDelivery(DeliveryError):
    """The delivery itself is wrong: it goes to quarantine with this reason and is never retried."""

    exit_code = 6

    def __init__(self, path: Path | str, reason: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{Path(path).name}: {reason}", fix)


class LimitExceeded(InvalidDelivery):
    """The delivery is larger (or more compressed, or has more entries) than a configured limit allows."""

    def __init__(self, path: Path | str, what: str, value: str, setting: str, limit: str) -> None:
        self.setting = setting
        super().__init__(path, f"{what} {value} exceeds the limit {setting}={limit}",
                         "ask the producer what the delivery holds; raise the limit only for a known product")


class TransientIngestError(DeliveryError):
    """The system failed (disk full, I/O error, database down): the job is retried, the delivery is kept."""

    exit_code = 7


class ReceiptBusy(TransientIngestError):
    """Another live process is working on this receipt: this attempt backs off without touching it."""


class IngestFailed(DeliveryError):
    """An error that is neither the delivery's nor a known system fault: recorded as `failed`, not retried."""

    exit_code = 8

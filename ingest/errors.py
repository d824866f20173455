"""Errors of ingest: the delivery's fault (quarantine) or the system's (retry)."""

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


class TransientIngestError(DeliveryError):
    """The system failed (disk full, database down): the job is retried, the delivery is kept."""

    exit_code = 7

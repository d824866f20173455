"""Per-user download limits: a request rate (GCRA, one float per user) and a cap on downloads in flight.

State is kept only for principals that a valid token identified (`catalog.users`): an invented token is
refused before it reaches the limiter, so an attacker cannot grow it. The table is also bounded (LRU): past
`size` users the least recently seen one loses its state, which can only make that user's next request more
welcome. Limits hold per process (a deployment with N workers allows up to N× the rate; documented in
docs/operations.md, "Downloads").
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a request waits: `retry_after` seconds (≥ 1, as the `Retry-After` header wants whole seconds)."""

    reason: str
    retry_after: int


class DownloadLimiter:
    """`rate` requests per second with bursts of `burst`, and at most `concurrency` responses in flight, per key."""

    def __init__(self, rate: float, burst: int, concurrency: int, size: int = 100_000) -> None:
        self.interval = 1.0 / rate
        self.tolerance = self.interval * max(burst - 1, 0)
        self.concurrency, self.size = concurrency, size
        self._tat: OrderedDict[str, float] = OrderedDict()  # GCRA: theoretical arrival time of the next request
        self._active: dict[str, int] = {}

    def admit(self, key: str, now: float | None = None) -> Refusal | None:
        """Count one request of `key`; None when it may go on (then `release` must follow), else why not."""
        now = time.monotonic() if now is None else now
        if self._active.get(key, 0) >= self.concurrency:
            return Refusal(f"{self.concurrency} downloads of this user are already in progress", 1)
        tat = max(self._tat.get(key, now), now)
        if tat - now > self.tolerance:
            wait = tat - self.tolerance - now
            return Refusal(f"over {1 / self.interval:g} requests per second (bursts of "
                           f"{round(self.tolerance / self.interval) + 1})", max(1, math.ceil(wait)))
        self._tat[key] = tat + self.interval
        self._tat.move_to_end(key)
        if len(self._tat) > self.size:
            self._tat.popitem(last=False)
        self._active[key] = self._active.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        left = self._active.get(key, 0) - 1
        if left > 0:
            self._active[key] = left
        else:
            self._active.pop(key, None)

    def __len__(self) -> int:
        return len(self._tat)

"""How busy the machine was while a measure ran: the load average, and the share of the CPUs used by
processes other than the benchmark's own (servers, PostgreSQL and this process, with their children), so a
noisy measure can be told from a slow server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import TracebackType

from bench.queries import _descendants

_TICKS = os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _busy_ticks() -> int:
    """CPU ticks spent busy by the whole machine (all CPUs) since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def _tree_ticks(roots: list[int]) -> int:
    """CPU ticks of the trees under `roots`, reaped children included (a closed PostgreSQL backend's time is
    added to the postmaster's cutime/cstime)."""
    total = 0
    for pid in {p for root in roots for p in _descendants(root)}:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total


@dataclass
class CpuShare:
    """`with CpuShare([pids], parts) as c: ...` then `c.result()`: seconds, load average at start and end, CPU%
    used by our process trees and by everything else (100% = one core), and the CPU seconds of each named part
    (e.g. {"server": [its pid], "db": [the postmaster]}), for CPU per request."""

    roots: list[int]
    parts: dict[str, list[int]] = field(default_factory=dict)
    _start: tuple = field(default=(), repr=False)
    _end: tuple = field(default=(), repr=False)

    def _snap(self) -> tuple:
        import time

        parts = {name: _tree_ticks(pids) for name, pids in self.parts.items()}
        return time.monotonic(), _busy_ticks(), _tree_ticks(self.roots + [os.getpid()]), loadavg(), parts

    def __enter__(self) -> CpuShare:
        self._start = self._snap()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._end = self._snap()

    def result(self) -> dict[str, float]:
        (t0, busy0, ours0, load0, parts0), (t1, busy1, ours1, load1, parts1) = self._start, self._end
        seconds = max(t1 - t0, 1e-9)
        ours = (ours1 - ours0) / _TICKS / seconds * 100
        busy = (busy1 - busy0) / _TICKS / seconds * 100
        out = {"seconds": round(seconds, 1), "load1_start": load0, "load1_end": load1,
               "cpu_ours_pct": round(ours), "cpu_others_pct": round(max(busy - ours, 0))}
        for name in parts0:
            out[f"cpu_s_{name}"] = round((parts1[name] - parts0[name]) / _TICKS, 2)
        return out

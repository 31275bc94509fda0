"""Memory readings of this process and of its children, from Linux's ``/proc`` and ``wait4``.

The study runner records each stage's peak with them; the benchmarks (``tools/bench``) take their
readings with them too. Where the kernel does not report a figure, the reading is NaN.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path


def _status_kib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return math.nan


def rss_mib() -> float:
    """Resident memory of this process now."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """Highest resident memory of this process so far (or since ``reset_peak_rss``)."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Start the peak-RSS reading again from the current RSS (Linux ``clear_refs`` 5); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_peak_rss_mib(rusage: resource.struct_rusage) -> float:
    """``ru_maxrss`` of one waited-for child (kilobytes on Linux)."""
    return rusage.ru_maxrss / 1024


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process ``/proc`` shows."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants now, summed (pages shared between them count once
    per process, as RSS does)."""
    tree, total, todo = _children(), 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += float(line.split()[1]) / 1024
                    break
        except OSError:
            pass
        todo += tree.get(p, [])
    return total


class TreePeak:
    """The highest summed RSS of this process and its descendants while the ``with`` block runs, polled
    every ``interval`` seconds on a thread (a peak shorter than that can be missed; the per-process peaks
    the kernel keeps are lower bounds to compare with)."""

    def __init__(self, interval: float = 0.25):
        import os
        import threading

        self.interval, self.pid, self.peak_mib = interval, os.getpid(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, tree_rss_mib(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, tree_rss_mib(self.pid))

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

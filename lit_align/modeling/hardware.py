"""What the machine can do fast: bf16 on this CPU or not."""

from __future__ import annotations

import warnings
from pathlib import Path

# /proc/cpuinfo flags of CPUs with bf16 arithmetic: x86 AVX-512 BF16 or AMX, Arm's BF16 extension
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of this CPU (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True if this CPU has bf16 instructions.

    >>> cpu_has_bf16("flags\\t: fpu sse avx2 avx512f avx512_bf16")
    True
    >>> cpu_has_bf16("flags\\t: fpu sse avx2 fma")
    False
    """
    return bool(cpu_flags(cpuinfo) & BF16_FLAGS)


def warn_if_slow_bf16(trainer) -> bool:
    """Warn when a run asks for bf16 precision on a CPU without bf16 units; True if it warned.

    Such CPUs emulate bf16: a bf16 matrix product ran about 300x slower than float32 on one
    (AVX2, no AVX-512 BF16), so CPU runs should use ``precision: 32-true``.
    """
    if trainer is None:
        return False
    from lightning.pytorch.accelerators import CPUAccelerator

    if "bf16" in str(trainer.precision) and isinstance(trainer.accelerator, CPUAccelerator) and not cpu_has_bf16():
        warnings.warn(
            f"precision {trainer.precision!r} on a CPU without bf16 instructions: it runs far slower than "
            "float32 here (a bf16 matmul measured ~300x slower on one such CPU); use precision 32-true on CPU",
            stacklevel=2,
        )
        return True
    return False

"""What the machine can do fast (bf16 on this CPU or not), and the thread settings a run's digits hang on."""

from __future__ import annotations

import os
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


# Values of OMP_DYNAMIC that turn dynamic thread teams on (GNU OpenMP reads true/false, others also 1/yes/on).
_TRUE = {"true", "1", "yes", "on"}


def thread_settings(env=None) -> str:
    """One line naming what a CPU run's digits depend on besides the seed: torch's thread counts, the cores
    this process may use, and the OpenMP variables that set them.

    On CPU, a sum whose terms are split across threads (a reduction, a matrix product split along its
    inner dimension) adds in an order set by the thread count, so 1 and 2 threads give different last bits;
    the count is fixed when torch starts, from ``OMP_NUM_THREADS`` or the cores it may use, not from load.
    """
    import torch

    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    named = ", ".join(f"{k}={env[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC") if k in env)
    return (f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op; "
            f"{cores} cores usable; {named or 'OMP_NUM_THREADS unset'}")


def load_dependent_threads(env=None) -> str | None:
    """Why this run's digits could change with the machine's load, or None.

    With ``OMP_DYNAMIC=true`` GNU OpenMP (torch's) sizes each thread team by the load average: on a busy
    2-core machine a 2-thread sum ran on 1 thread and gave the 1-thread sum's last bits.

    >>> load_dependent_threads({"OMP_DYNAMIC": "TRUE"}) is not None
    True
    >>> load_dependent_threads({"OMP_DYNAMIC": "false"}) is None and load_dependent_threads({}) is None
    True
    """
    env = os.environ if env is None else env
    if env.get("OMP_DYNAMIC", "").strip().lower() in _TRUE:
        return ("OMP_DYNAMIC is on: OpenMP sizes its thread teams by the machine's load, so sums split "
                "across threads can end in other digits when other jobs run; unset it for repeatable runs")
    return None

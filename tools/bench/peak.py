"""This machine's matmul peak, measured: the denominator of the RL benchmark's MFU.

    python -m tools.bench.peak --threads 2

Square matmuls of a few sizes with torch's current thread count; the best GFLOP/s of any size is the
peak. float32 always; bfloat16 where the hardware has units for it (a CUDA device, or a CPU whose
/proc/cpuinfo lists avx512_bf16 or amx_bf16: elsewhere bf16 matmuls are emulated and no peak of note).
The orchestrator (``run.py``) runs it in a child with the contenders' thread settings before any run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SIZES = (512, 1024, 2048, 4096)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def bf16_units(device: str) -> bool:
    if device == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(n: int, dtype: torch.dtype, device: str, seconds: float = 1.0) -> float:
    """Best GFLOP/s of ``n x n @ n x n`` over repeats filling about ``seconds`` (one warm-up first)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    _sync(device)
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        a @ b
        _sync(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * n**3 / best / 1e9


def measure(device: str = "cpu", sizes=SIZES, seconds: float = 1.0) -> dict:
    """``{"threads", "device", "<dtype>": {"gflops": best, "by_size": {n: GFLOP/s}} or None}``."""
    out = {"threads": torch.get_num_threads(), "device": device}
    for name, dtype in DTYPES.items():
        if name != "float32" and not bf16_units(device):
            out[name] = None
            continue
        by_size = {n: matmul_gflops(n, dtype, device, seconds) for n in sizes}
        out[name] = {"gflops": max(by_size.values()), "by_size": by_size}
    return out


def peak_gflops(peak: dict | None, precision: str) -> float | None:
    """The peak a run of ``precision`` ("32" or "bf16-mixed") is held against; None if not measured."""
    entry = (peak or {}).get("bfloat16" if precision == "bf16-mixed" else "float32")
    return entry["gflops"] if entry else None


def describe(peak: dict) -> str:
    """One line for the top of a report."""
    parts = []
    for name in DTYPES:
        entry = peak.get(name)
        if entry is None:
            parts.append(f"{name} not measured (no bf16 units)")
        else:
            sizes = ", ".join(f"{n}: {g:.0f}" for n, g in entry["by_size"].items())
            parts.append(f"{name} {entry['gflops']:.1f} GFLOP/s (square matmuls, n: GFLOP/s {sizes})")
    return f"matmul peak on {peak['device']}, {peak['threads']} threads: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=1.0, help="time spent per size and dtype")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.device, args.sizes, args.seconds)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

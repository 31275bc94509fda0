"""One benchmark run in its own process: ``python -m tools.bench.worker '<spec json>'``.

The orchestrator (``run.py``) reads the process's peak RSS when it exits; the worker prints one
``BENCH_RESULT {...}`` line with its step times, tokens and its own memory readings.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
import warnings

from .common import Spec, emit, set_threads


def family(contender: str) -> str:
    """Which module runs a contender: ``lit``, ``trl_contenders`` or ``bare``."""
    if contender.startswith("lit_align"):
        return "lit"
    if contender.startswith("trl"):
        return "trl_contenders"
    return "bare"


def main(raw: str) -> int:
    spec = Spec.from_json(raw)
    set_threads(spec.settings.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        module = importlib.import_module(f".{family(spec.contender)}", __package__)
        result = module.run(spec)
    except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the other runs
        traceback.print_exc()
        emit({"error": f"{type(e).__name__}: {e}"[:500]})
        return 1
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

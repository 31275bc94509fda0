"""One benchmark run in its own process: ``python -m tools.bench.worker '<spec json>'``.

The orchestrator (``run.py``) reads the process's peak RSS when it exits; the worker prints one
``BENCH_RESULT {...}`` line with its step times, tokens and its own memory readings, and which
``lit_align`` it imported. A spec whose ``extra`` names a ``lit_align_checkout`` (``--baseline``)
imports ``lit_align`` from that checkout, and the rest (this module, the contenders) from this tree.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
import warnings
from pathlib import Path

from .baseline import import_first, provenance
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
    checkout = spec.extra.get("lit_align_checkout")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        import_first(checkout)  # before anything imports lit_align; this package is already this tree's
        set_threads(spec.settings.threads)
        module = importlib.import_module(f".{family(spec.contender)}", __package__)
        provenance(checkout)  # refuses a lit_align from anywhere else before any time is spent
        result = module.run(spec) | provenance(checkout) | {"tools_path": str(Path(__file__).resolve().parents[2])}
    except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the other runs
        traceback.print_exc()
        emit({"error": f"{type(e).__name__}: {e}"[:500]} | _provenance_if_known())
        return 1
    emit(result)
    return 0


def _provenance_if_known() -> dict:
    try:
        return provenance()
    except Exception:  # noqa: BLE001 - a failed run's row keeps its error, whatever else fails
        return {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

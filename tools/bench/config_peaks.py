"""Peak RSS of the embedded configs, each run for a few optimiser steps in a process of its own.

    python -m tools.bench.config_peaks                       # every configs/**/*embedded*.yaml, 3 steps each
    python -m tools.bench.config_peaks --configs configs/dpo/embedded.yaml --steps 2

A config's peak comes from its steady state (one optimiser step's sampling, scoring and learning, and
its held-out evaluation), so a few steps show it; the step count changes how long it runs, not what one
step holds. Each run is a child process; its peak is read from ``wait4``'s resource usage, so runs do
not mix. That figure is at least this process's RSS at the spawn, so this tool imports nothing heavy
(about 15 MiB): run it on its own, not from inside a process that holds a model. Configs are run in an order that lets later ones read earlier outputs: the pairs before
the DPO that learns from them, the Countdown RM before the RLOO it rewards. Prints a markdown table,
and writes the raw figures as JSON lines with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..study.memory import child_peak_rss_mib

ROOT = Path(__file__).resolve().parents[2]
# producers first: what later configs read (pairs → DPO, RM → RLOO rewarded by it)
ORDER = ["configs/pairs/countdown_embedded.yaml", "configs/rm/embedded.yaml"]


def command(config: str, steps: int, prompts: int) -> list[str]:
    """The command line that runs ``config`` for ``steps`` optimiser steps (``prompts`` prompts for the pairs tool)."""
    if "/pairs/" in config:
        return [sys.executable, "-m", "lit_align.pairs", "--config", config, "--limit", str(prompts)]
    verb = "test" if "/eval/" in config else "fit"
    args = [sys.executable, "-m", "lit_align", verb, "--config", config]
    if verb == "fit":
        args += [f"--trainer.max_steps={steps}", "--trainer.max_time=null", "--trainer.max_epochs=-1"]
    else:
        args += ["--trainer.limit_test_batches=1"]
    return args


def run(config: str, steps: int, prompts: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(command(config, steps, prompts), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return {"config": config, "steps": steps, "exit_code": code, "peak_rss_mib": child_peak_rss_mib(usage),
            "seconds": time.perf_counter() - start, "error": err.strip().splitlines()[-1] if code and err.strip() else None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", help="configs to run (default: every configs/**/*embedded*.yaml)")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per fit config")
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the pairs tool")
    parser.add_argument("--out", help="append the raw figures here (JSON lines)")
    args = parser.parse_args(argv)
    configs = args.configs or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*embedded*.yaml"))
    configs = sorted(configs, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c))
    rows = []
    print("| config | steps | peak RSS (MiB) | wall (s) | exit |\n|---|---|---|---|---|")
    for config in configs:
        row = run(config, args.steps, args.prompts)
        rows.append(row)
        print(f"| {config} | {row['steps']} | {row['peak_rss_mib']:,.0f} | {row['seconds']:.0f} | {row['exit_code']}"
              + (f": {row['error']}" if row["error"] else "") + " |", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()

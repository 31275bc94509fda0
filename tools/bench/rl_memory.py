"""Peak RSS of online RL against the samples per optimiser step.

    python -m tools.bench.rl_memory                                   # 16, 64, 256 samples; micro-batches of 8
    python -m tools.bench.rl_memory --samples 64 --micro-batch 0      # 0: the whole step in one pass (the old way)

Each row is a fresh process running ``configs/grpo/countdown_embedded.yaml`` for ``--steps`` optimiser
steps with the data batch set to samples / k prompts (k = 8), no dynamic sampling (every step samples
exactly that many), no held-out evaluation or export; peak RSS is ``/usr/bin/time -v``'s maximum resident
set size of the process, and the wall time (model start included) is printed beside it. The policy is ``--model`` (default: the quickstart's export when
it exists, else the embedded SmolLM2-135M-Instruct), LoRA r16, at most 160 new tokens, float32 on CPU.
The first row is the baseline the others are reported against.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "grpo" / "countdown_embedded.yaml"


def run(samples: int, micro_batch: int, steps: int, model: str, k: int, folder: Path, engine: list[str],
        extra: list[str]) -> dict:
    args = [sys.executable, "-m", "lit_align", "fit", "--config", str(CONFIG), *engine, *extra,
            "--model.init_args.model", model, "--model.init_args.num_generations", str(k),
            "--model.init_args.dynamic_sampling", "false", "--model.init_args.log_completions_every_n_steps", "0",
            "--model.init_args.micro_batch_size", str(micro_batch) if micro_batch else "null",
            "--data.batch_size", str(samples // k), "--trainer.max_steps", str(steps),
            "--trainer.callbacks", "[]", "--trainer.logger.init_args.save_dir", str(folder)]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({samples} samples):\n{proc.stderr[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"samples": samples, "micro_batch": micro_batch or samples, "steps": steps, "wall_s": round(wall, 1),
            "peak_rss_gb": round(rss_kib * 1024 / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per backward pass (0: the whole step)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--model", default=None)
    parser.add_argument("--engine", nargs="*", default=[], help="extra --config files, e.g. configs/rollout/vllm.yaml")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further command-line settings, e.g. model.init_args.gradient_checkpointing=true")
    args = parser.parse_args()
    quickstart = ROOT / "outputs" / "quickstart" / "export"
    model = args.model or (str(quickstart) if quickstart.is_dir() else "embedded:smollm2-135m-instruct")
    engine = [a for c in args.engine for a in ("--config", str(Path(c).resolve()))]
    rows = []
    for samples in args.samples:
        with tempfile.TemporaryDirectory() as tmp:
            extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
            rows.append(run(samples, args.micro_batch, args.steps, model, args.k, Path(tmp), engine, extra))
        base = rows[0]
        row = rows[-1]
        print(f"{row['samples']:>4} samples/step, micro-batch {row['micro_batch']:>3}: peak RSS {row['peak_rss_gb']:.2f} GB "
              f"({row['peak_rss_gb'] / base['peak_rss_gb']:.2f} x {base['samples']}), wall {row['wall_s']:.0f} s "
              f"for {row['steps']} step(s) incl. start", flush=True)
    print(f"model {model}, {os.cpu_count()} CPUs, settings {' '.join(args.set) or 'as configured'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""What Lightning's uncached autocast costs a step run as several forwards, and what ``logprobs.cast_weights_once`` wins back.

    python -m tools.bench.autocast_cache --threads 1

Forward + backward of ``logprobs.model_token_logprobs`` on SmolLM2 for 4 rows of 120, 180, 300 and 480
tokens (regrouped into several forwards on CPU), under bf16 autocast, in three settings, each in its
own process so that its peak RSS is its own:

- ``uncached``: autocast with the weight cache off, as Lightning 2.6 enters it, and ``cast_weights_once``
  switched off: every forward casts every weight again;
- ``uncached+cast_once``: the same autocast, with lit_align's ``cast_weights_once`` (the default);
- ``cached``: plain ``torch.autocast`` (cache on), as the bare loop uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from unittest import mock

SETTINGS = ("uncached", "uncached+cast_once", "cached")


def measure(setting: str, steps: int, threads: int) -> dict:
    import torch

    from lit_align.objectives import logprobs
    from lit_align.modeling import models

    torch.set_num_threads(threads)
    name = os.environ.get("LIT_ALIGN_BENCH_POLICY", "embedded:smollm2-135m-instruct")
    model = models.load_causal_lm(name).train()
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(0)
    lengths = [120, 300, 180, 480]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(100, model.config.vocab_size, (n,), generator=generator)
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :40] = -100
    seconds = []
    no_cast_once = mock.patch.object(forward, "cast_weights_once", lambda device: contextlib.nullcontext())
    with no_cast_once if setting == "uncached" else contextlib.nullcontext():
        for _ in range(steps):
            seconds.append(_step(model, ids, mask, labels, cached=setting == "cached"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"setting": setting, "step_s": seconds, "peak_rss_mib": peak}


def _step(model, ids, mask, labels, cached: bool) -> float:
    import torch

    from lit_align.objectives import logprobs

    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cached):
        logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels)
    (-logps.sum() / 1000).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.threads)))
        return
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for setting in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--worker", setting, "--steps", str(args.steps),
                              "--threads", str(args.threads)], env=env, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| setting | s/step (each step) | best s/step | peak RSS MiB |")
    print("|---|---|---|---|")
    for row in rows:
        steps = ", ".join(f"{s:.2f}" for s in row["step_s"])
        print(f"| {row['setting']} | {steps} | {min(row['step_s']):.2f} | {row['peak_rss_mib']:,.0f} |")


if __name__ == "__main__":
    main()

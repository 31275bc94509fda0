"""Output head only: ``logprobs.model_token_logprobs`` (chunked) vs full-vocabulary logits, as positions grow.

    python -m tools.bench.logits --rows 1024 4096 8192

The transformer body is cut away: a stand-in model hands ``logprobs.model_token_logprobs`` fixed hidden
states, so the time and memory measured are those of the output head (SmolLM2-135M's, 49,152 words),
its log-softmax, and their backward. Each (rows, path) point runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from types import SimpleNamespace


from ..study.memory import peak_rss_mib, reset_peak_rss, rss_mib
from .common import POLICY, set_threads


class HeadOnly:
    """Quacks like a causal LM to ``model_token_logprobs``: returns given hidden states, owns the real head."""

    def __init__(self, hidden, head):
        self.hidden, self.head = hidden, head

    def __call__(self, **kwargs):
        return SimpleNamespace(hidden_states=[self.hidden])

    def get_output_embeddings(self):
        return self.head


def measure(rows: int, path: str, steps: int) -> dict:
    import torch

    from lit_align.objectives import logprobs
    from lit_align.modeling import models

    head = models.load_causal_lm(POLICY).get_output_embeddings()
    torch.manual_seed(0)
    hidden = torch.randn(1, rows + 1, head.in_features, requires_grad=True)
    labels = torch.randint(0, head.out_features, (1, rows + 1))
    head.weight.data.add_(0)  # page the mmapped weights in before the baseline reading
    base = rss_mib()
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if path == "chunked":
            logps, _ = logprobs.model_token_logprobs(HeadOnly(hidden, head), labels, None, labels)
        else:
            logits = head(hidden[:, :-1]).float()
            logps = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:, None]).squeeze(-1)
        (-logps.sum()).backward()
        hidden.grad = None
        head.weight.grad = None
        times.append(time.perf_counter() - start)
    return {"rows": rows, "path": path, "step_s": min(times), "extra_peak_mib": peak_rss_mib() - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: ROWS PATH, run in this process
    args = p.parse_args()
    if args.one:
        set_threads(args.threads)
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.steps)))
        return
    print("| positions | path | s (fwd+bwd, best of steps) | peak RSS above start, MiB |\n|---|---|---|---|")
    for rows in args.rows:
        for path in ("chunked", "full"):
            cmd = [sys.executable, "-m", __spec__.name, "--one", str(rows), path, "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()
            r = json.loads(out[-1]) if out else {"step_s": float("nan"), "extra_peak_mib": float("nan")}
            print(f"| {rows} | {path} | {r['step_s']:.2f} | {r['extra_peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Scaling curve: lit_align SFT time and memory per step as sequence length and batch grow.

    python -m tools.bench.scaling --lengths 128 256 512 1024 --batches 1 2 4 --steps 2

Every row is exactly ``length`` tokens (long records cut at max_length), each point is its own
process (peak RSS from ``wait4``), and the plot goes to ``docs/benchmarks_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


from .common import Settings, Spec
from .data import write_data
from .report import machine
from .run import run_one


def point(length: int, batch: int, args: argparse.Namespace) -> dict:
    # sigma 0: every prompt has 4 words and every response `length` words, so each row is cut to `length` tokens
    s = Settings(steps=args.steps, warmup=args.warmup, threads=args.threads, sft_batch=batch, sft_max_length=length,
                 sft_prompt_words=4, sft_completion_words=length, sigma=0.0)
    folder = args.out / f"T{length}-B{batch}"
    result = run_one(Spec("sft", args.contender, s, str(write_data(s, folder / "data"))), folder / "run.log", args.timeout)
    if "error" in result:
        return {"length": length, "batch": batch, "error": result["error"]}
    step = statistics.median(result["step_s"])
    return {"length": length, "batch": batch, "step_s": step, "tokens_per_s": length * batch / step,
            "peak_rss_mib": result["process_peak_rss_mib"]}


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for batch in sorted({p["batch"] for p in points}):
        ok = sorted((p for p in points if p["batch"] == batch and "error" not in p), key=lambda p: p["length"])
        lengths = [p["length"] for p in ok]
        ax_t.plot(lengths, [p["step_s"] for p in ok], marker="o", label=f"batch {batch}")
        ax_m.plot(lengths, [p["peak_rss_mib"] / 1024 for p in ok], marker="o", label=f"batch {batch}")
    for ax, label in ((ax_t, "seconds per optimiser step"), (ax_m, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens per row)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contender", default="lit_align", help="lit_align or bare (the same maths without Lightning)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/scaling"))
    p.add_argument("--plot", type=Path, default=Path("docs/benchmarks_scaling.png"))
    args = p.parse_args(argv)
    info = machine()
    points = []
    for batch in args.batches:
        for length in args.lengths:
            points.append(point(length, batch, args))
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"machine": info, "points": points}, indent=1))
    plot(points, args.plot, f"{args.contender} SFT, SmolLM2-135M fp32, {args.threads} thread(s), {info['cpu']}")
    print("| batch | length | s/step | tokens/s | peak RSS MiB |\n|---|---|---|---|---|")
    for q in points:
        if "error" in q:
            print(f"| {q['batch']} | {q['length']} | failed: {q['error']} | | |")
        else:
            print(f"| {q['batch']} | {q['length']} | {q['step_s']:.2f} | {q['tokens_per_s']:.0f} | {q['peak_rss_mib']:.0f} |")
    return points


if __name__ == "__main__":
    main()

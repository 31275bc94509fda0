"""Which prompts a step tries, measured at one sample budget: uniform, dynamic sampling, the curriculum.

    python -m tools.curriculum_compare --start outputs/reproduce/embedded/countdown_sft_most/export --draws 10

Every arm is ``configs/grpo/countdown_curriculum_embedded.yaml`` from the same start and seed, for the
same number of draws of 32 samples (``trainer.limit_train_batches``: one epoch of ``--draws`` batches, so
every arm spends the same samples; dynamic sampling turns some draws into no optimiser step), with no
evaluation, checkpoint or export, and one change:

- ``uniform``: shuffled problems, k = 8 for each (``curriculum.strategy: uniform``, no dynamic sampling);
- ``dynamic``: the same, with dynamic sampling (groups without signal set aside, up to 2 draws a step);
- ``curriculum``: the self-paced draw of problems, k = 8 for each;
- ``curriculum_k``: the self-paced draw with samples per prompt chosen before generating (4-16, step 4).

The curriculum's bookkeeping runs in every arm (the uniform ones only book, never choose), so each logs
the same figures: groups drawn and how many carried signal, samples drawn and their mean reward. Writes
``<out>/<arm>/`` (config, logs) and ``<out>/compare.json``, and prints the table: share of drawn groups
with signal, samples spent per group with signal, optimiser steps, and the slope of the drawn samples'
mean reward per draw with its t interval (``stats.slope_estimate``). The reward of the curriculum's arms
is that of the problems it chose, not of the problem pool: their levels are not comparable with the
uniform arm's, and a slope says at most that the chosen problems' rewards moved.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "grpo" / "countdown_curriculum_embedded.yaml"

UNIFORM = {"class_path": "lit_align.data.curriculum.SelfPaced", "init_args": {"strategy": "uniform"}}
# name -> (model.init_args changes, data.curriculum)
ARMS = {
    "uniform": ({"dynamic_sampling": False}, UNIFORM),
    "dynamic": ({"dynamic_sampling": True, "max_draws": 2}, UNIFORM),
    "curriculum": ({"dynamic_sampling": False}, "base_fixed_k"),
    "curriculum_k": ({"dynamic_sampling": False}, "base"),
}


def arm_config(name: str, start: str, draws: int, out: Path) -> Path:
    config = yaml.safe_load(BASE.read_text())
    model_change, curriculum = ARMS[name]
    folder = out / name
    config["trainer"].update(max_time=None, limit_train_batches=draws, max_epochs=1, enable_checkpointing=False,
                             callbacks=[])
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder)
    config["model"]["init_args"].update(model=start, log_completions_every_n_steps=0, **model_change)
    if curriculum == "base_fixed_k":
        config["data"]["curriculum"]["init_args"]["adaptive_k"] = False
    elif curriculum != "base":
        config["data"]["curriculum"] = copy.deepcopy(curriculum)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def summarise(rows: list[dict]) -> dict:
    """The figures of one arm from its logged rows (one per optimiser step that logged the curriculum)."""
    from lit_align.evaluation.stats import slope_estimate

    steps = [r for r in rows if r.get("curriculum/groups_drawn") not in (None, "")]
    groups = sum(float(r["curriculum/groups_drawn"]) for r in steps)
    signal = sum(float(r["curriculum/signal_share"]) * float(r["curriculum/groups_drawn"]) for r in steps)
    samples = sum(float(r["curriculum/samples_drawn"]) for r in steps)
    out = {"optimiser_steps": len(steps), "groups": groups, "signal_groups": round(signal), "samples": samples,
           "signal_share": signal / groups if groups else None,
           "samples_per_signal_group": samples / signal if signal else None,
           "reward_drawn": [float(r["curriculum/reward_drawn"]) for r in steps]}
    if len(steps) >= 5:
        e = slope_estimate(out["reward_drawn"])
        out["reward_slope"] = {"value": e.value, "low": e.low, "high": e.high}
    return out


def _rows(folder: Path) -> list[dict]:
    logs = sorted((folder / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    with open(logs[-1], newline="") as f:
        return list(csv.DictReader(f))


def table(results: dict) -> str:
    lines = ["| arm | optimiser steps | groups drawn | with signal | share with signal | samples per group with signal | "
             "reward of drawn samples, slope per step [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        slope = r.get("reward_slope")
        slope_text = f"{slope['value']:+.4f} [{slope['low']:+.4f}, {slope['high']:+.4f}]" if slope else "fewer than 5 steps"
        share = "n/a" if r["signal_share"] is None else f"{r['signal_share']:.2f}"
        per = "n/a" if r["samples_per_signal_group"] is None else f"{r['samples_per_signal_group']:.1f}"
        lines.append(f"| {name} | {r['optimiser_steps']} | {r['groups']:.0f} | {r['signal_groups']} | {share} | {per} | {slope_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", required=True, help="the start model (an HF export)")
    parser.add_argument("--draws", type=int, default=10, help="draws of 32 samples per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="outputs/curriculum_compare")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = json.loads((out / "compare.json").read_text()) if (out / "compare.json").exists() else {}
    for name in args.arms:
        config = arm_config(name, args.start, args.draws, out)
        began = time.time()
        subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(config)], check=True, cwd=ROOT)
        results[name] = summarise(_rows(out / name)) | {"wall_s": round(time.time() - began, 1), "draws": args.draws}
        (out / "compare.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()

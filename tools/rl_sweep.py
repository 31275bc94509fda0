"""Choose the learning run's RL settings on the 32 Countdown validation problems, never the test problems.

    python -m tools.rl_sweep --start outputs/reproduce/embedded/countdown_sft_most/export --steps 3

Each candidate is ``configs/grpo/countdown_learning_embedded.yaml`` with a few settings changed, run
from the same start for ``--steps`` optimiser steps (same seed, same training prompts), then scored
greedily on the validation problems (``CountdownSource`` seed 4321, the study's validation seed: none
of them is among the 128 held-out test problems, seed 1234, or the training problems, seed 5). The
candidate with the highest mean validation score wins (ties: the earlier one). The start model is
scored once, with the first candidate. Writes ``<out>/sweep.json`` with every candidate's settings,
validation score and accuracy, and wall time, and prints the table.

``--learn``: then the learning run itself, with the chosen settings: the same config, its 30-minute
budget and its held-out evaluation (128 test problems, before and after) and export, from ``--start``,
under ``/usr/bin/time -v`` (peak RSS), into ``<out>/learning`` (``config.yaml``, logs, ``time.txt``).

With a handful of steps per candidate, the differences between candidates are mostly noise: the
sweep says what was best on validation at this budget, not which setting is better in general.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "grpo" / "countdown_learning_embedded.yaml"
VALIDATION = {"num_problems": 32, "seed": 4321, "with_traces": False}

# name -> model.init_args changes (optimizer lr is nested)
CANDIDATES = {
    "grpo_lr1e-4": {},
    "grpo_lr3e-4": {"optimizer": {"init_args": {"lr": 3e-4}}},
    "dr_grpo_lr1e-4": {"loss_type": "dr_grpo", "scale_rewards": "none"},
}


def merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def candidate_config(name: str, change: dict, start: str, steps: int, out: Path, score_start: bool) -> Path:
    config = yaml.safe_load(BASE.read_text())
    folder = out / name
    config["trainer"].update(max_steps=steps, max_time=None)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder)
    evaluation = {"class_path": "lit_align.evaluation.verifier.VerifierEval", "init_args": {
        "source": {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": dict(VALIDATION)},
        "verifier": {"class_path": "lit_align.tasks.countdown.CountdownVerifier"},
        "num_prompts": VALIDATION["num_problems"], "batch_size": VALIDATION["num_problems"], "before": score_start,
        "generation": {"max_new_tokens": 160, "temperature": 0.0}, "output": str(folder / "validation.json")}}
    config["trainer"]["callbacks"] = [evaluation]  # no export: the sweep keeps no weights
    # the learning run's schedule is cosine over 1000 steps, within 1 % of its peak for its ~15 steps: a
    # constant lr here is the same lr (the default schedule would decay over the sweep's few max_steps)
    constant = {"class_path": "torch.optim.lr_scheduler.ConstantLR", "init_args": {"factor": 1.0}}
    config["model"]["init_args"] = merge(config["model"]["init_args"], change) | {"model": start, "scheduler": constant}
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the SFT export every candidate starts from")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per candidate")
    parser.add_argument("--out", default="outputs/rl_sweep")
    parser.add_argument("--only", nargs="*", default=None, help="run only these candidates")
    parser.add_argument("--learn", action="store_true", help="then the 30-minute learning run with the chosen settings")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for i, (name, change) in enumerate(CANDIDATES.items()):
        if args.only and name not in args.only:
            continue
        config = candidate_config(name, change, args.start, args.steps, out, score_start=i == 0)
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(config)],
                              capture_output=True, text=True, cwd=ROOT)
        (out / name / "log.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"candidate {name} failed:\n{proc.stderr[-3000:]}")
        result = json.loads((out / name / "validation.json").read_text())
        row = {"name": name, "change": change, "steps": args.steps, "wall_s": round(time.perf_counter() - began, 1),
               "score": result["after"]["score"], "accuracy": result["after"]["accuracy"]}
        if "before" in result:
            row["start_score"], row["start_accuracy"] = result["before"]["score"], result["before"]["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: (r["score"], -rows.index(r)))
    (out / "sweep.json").write_text(json.dumps({"validation": VALIDATION, "rows": rows, "chosen": best["name"]}, indent=2))
    print("| candidate | validation score | validation accuracy | wall s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['score']:.3f} | {r['accuracy']:.3f} | {r['wall_s']} |")
    print(f"chosen: {best['name']}")
    if args.learn:
        learn(best["name"], args.start, out / "learning")


def learn(name: str, start: str, folder: Path) -> None:
    """The 30-minute learning run of the base config with candidate ``name``'s settings, from ``start``."""
    config = yaml.safe_load(BASE.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder)
    for callback in config["trainer"]["callbacks"]:
        init = callback.setdefault("init_args", {})
        if "output" in init:
            init["output"] = str(folder / Path(init["output"]).name)
        if "dirpath" in init:
            init["dirpath"] = str(folder / "export")
    config["model"]["init_args"] = merge(config["model"]["init_args"], CANDIDATES[name]) | {"model": start}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with open(folder / "time.txt", "w") as timing, open(folder / "log.txt", "w") as log:
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "lit_align", "fit", "--config", str(path)],
                              stdout=log, stderr=timing, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the learning run failed: see {folder / 'time.txt'}")


if __name__ == "__main__":
    main()

"""Turn the stage folders of a reproduction into a results section (tables and plots).

The section sits between ``<!-- reproduce:PROFILE:begin -->`` and ``<!-- reproduce:PROFILE:end -->``
in the results file; it is replaced on every run, and the rest of the file is left alone.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

from study.plan import Stage

log = logging.getLogger(__name__)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def metric_rows(folder: Path) -> list[dict]:
    """Rows of the newest CSV log of a stage (``logs/version_N/metrics.csv``)."""
    files = sorted(folder.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        return []
    with open(files[-1], newline="") as f:
        return list(csv.DictReader(f))


def _instruction_table(stages: list[Stage], out: Path) -> list[str]:
    lines = ["| stage | prompt-level adherence | instruction-level adherence | win rate vs base (RM judge) | mean RM reward | mean tokens |",
             "|---|---|---|---|---|---|"]
    for stage in stages:
        if stage.name.startswith("instruction_eval_"):
            m = _json(out / stage.name / "metrics.json")
            win = m.get("win_rate", 0.5 if stage.name.endswith("_base") else None)  # the base against itself
            lines.append(f"| {stage.label} | {_fmt(m.get('adherence_prompt_level'))} | {_fmt(m.get('adherence_instruction_level'))} "
                         f"| {_fmt(win)} | {_fmt(m.get('reward_mean'))} | {_fmt(m.get('mean_tokens'))} |")
    return lines


def _countdown_table(stages: list[Stage], out: Path) -> list[str]:
    """Verifier figures before the first Countdown fit stage and after each one the profile ran."""
    lines = ["| stage | verifier score | accuracy |", "|---|---|---|"]
    first = _json(out / "countdown_sft" / "eval.json")
    rows = [("base model", first.get("before", {}))]
    rows += [(s.label, _json(out / s.name / "eval.json").get("after", {})) for s in stages
             if s.name.startswith("countdown_") and s.command == "fit"]
    for label, r in rows:
        lines.append(f"| {label} | {_fmt(r.get('score'))} | {_fmt(r.get('accuracy'))} |")
    return lines


def _best_of_n_table(out: Path) -> list[str]:
    path = out / "countdown_best_of_n" / "best_of_n.csv"
    if not path.is_file():
        return ["(best-of-N did not run)"]
    lines = ["| N | best-of-N accuracy | pass@N | majority@N |", "|---|---|---|---|"]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            lines.append(f"| {r['n']} | {float(r['best_of_n']):.3f} | {float(r['pass_at_n']):.3f} | {float(r['majority_at_n']):.3f} |")
    return lines


def _curves(stages: list[Stage], out: Path, image: Path) -> bool:
    """Training curves of every fit stage: the loss, and the mean reward for RLOO."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no training-curve plot")
        return False
    panels = []
    for stage in stages:
        rows = metric_rows(out / stage.name)
        key = "train/reward_mean" if "rloo" in stage.name else "train/loss"
        points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if points:
            panels.append((stage, key, points))
    if not panels:
        return False
    cols = 3
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4 * cols, 2.8 * ((len(panels) + cols - 1) // cols)), squeeze=False)
    for ax, (stage, key, points) in zip(axes.flat, panels):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        ax.set_title(stage.name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(key, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(image, dpi=100)
    plt.close(fig)
    return True


def section(profile: str, stages: list[Stage], out: Path, results: Path) -> str:
    """The markdown of one profile's results section; plots are written next to ``results``."""
    seconds = {s.name: _json(out / s.name / "done.json").get("seconds") for s in stages}
    total = sum(v for v in seconds.values() if v)
    samples = _json(out / "instruction_samples" / "pairs.counts.json")
    lines = [f"<!-- reproduce:{profile}:begin -->", f"### Profile `{profile}` (written by `python tools/reproduce.py --profile {profile}`)", "",
             f"Outputs: `{out}`. Total wall time of the stages: {total / 60:.1f} min.", ""]
    if samples:
        lines += [(f"Base-model samples: {samples.get('prompts')} prompts × their samples = {samples.get('completions')} completions; "
                  f"{samples.get('sft_records', 0)} verified responses (SFT data), {samples.get('pairs')} preference pairs "
                  f"({samples.get('skipped_equal_scores')} prompts skipped: all samples scored the same)."), ""]
    lines += ["**Instruction following** (held-out constraint prompts, greedy):", "", *_instruction_table(stages, out), "",
              "**Countdown** (held-out problems, greedy):", "", *_countdown_table(stages, out), "",
              "**Best-of-N** (verifier selects):", "", *_best_of_n_table(out), ""]
    stem = f"reproduce_{profile}"
    if _curves(stages, out, results.parent / f"{stem}_curves.png"):
        lines += [f"![training curves]({stem}_curves.png)", ""]
    bon_png = out / "countdown_best_of_n" / "best_of_n.png"
    if bon_png.is_file():
        shutil.copyfile(bon_png, results.parent / f"{stem}_best_of_n.png")
        lines += [f"![accuracy vs N]({stem}_best_of_n.png)", ""]
    lines += ["| stage | wall time (s) |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in seconds.items()]
    lines.append(f"<!-- reproduce:{profile}:end -->")
    return "\n".join(lines) + "\n"


def write_results(profile: str, stages: list[Stage], out: Path, results: Path) -> None:
    """Replace (or append) the profile's section of ``results``."""
    results.parent.mkdir(parents=True, exist_ok=True)
    text = results.read_text() if results.is_file() else "# Results\n\n"
    new = section(profile, stages, out, results)
    begin, end = f"<!-- reproduce:{profile}:begin -->", f"<!-- reproduce:{profile}:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin)] + new.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    results.write_text(text)
    print(f"[reproduce] wrote the {profile} results to {results}")

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

from lit_align.evaluation.stats import Comparison, compare
from study.plan import Stage

log = logging.getLogger(__name__)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _with_interval(values: dict, key: str) -> str:
    """``value [low, high]`` when the figure carries its interval (``key_low``/``key_high``), else the value."""
    value, low, high = values.get(key), values.get(f"{key}_low"), values.get(f"{key}_high")
    if value is None or low is None or high is None:
        return _fmt(value)
    return f"{float(value):.3f} [{float(low):.3f}, {float(high):.3f}]"


def verdict(comparison: Comparison, alpha: float = 0.05) -> str:
    """``better`` / ``worse`` when the paired interval excludes 0 on that side and the test's p is
    below ``alpha``; ``inconclusive`` otherwise."""
    if comparison.p_value < alpha and comparison.low > 0:
        return "better"
    if comparison.p_value < alpha and comparison.high < 0:
        return "worse"
    return "inconclusive"


def _against(base: dict, stage: dict, key: str) -> str:
    """The paired difference of a stage's per-problem figures against the base's, with its verdict."""
    a, b = base.get(key), stage.get(key)
    if not a or not b or len(a) != len(b):
        return "–"
    c = compare(a, b, test="bootstrap" if key == "problem_scores" else "auto")
    return f"{c.diff:+.3f} [{c.low:.3f}, {c.high:.3f}], {c.test} p={c.p_value:.3f}: {verdict(c)}"


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
            if "win_rate" not in m and stage.name.endswith("_base"):
                m = {**m, "win_rate": 0.5}  # the base against itself
            lines.append(f"| {stage.label} | {_with_interval(m, 'adherence_prompt_level')} "
                         f"| {_with_interval(m, 'adherence_instruction_level')} | {_with_interval(m, 'win_rate')} "
                         f"| {_with_interval(m, 'reward_mean')} | {_fmt(m.get('mean_tokens'))} |")
    return lines


def _eval_with_intervals(r: dict) -> dict:
    """An eval.json stage entry with ``score_low`` etc. spelled out from its ``*_interval`` lists."""
    flat = dict(r)
    for key in ("score", "accuracy"):
        if isinstance(r.get(f"{key}_interval"), list):
            flat[f"{key}_low"], flat[f"{key}_high"] = r[f"{key}_interval"]
    return flat


def _countdown_table(stages: list[Stage], out: Path) -> list[str]:
    """Verifier figures before the first Countdown fit stage and after each one the profile ran, each
    with its 95 % interval, and each stage against the base model on the same problems (paired)."""
    lines = ["| stage | verifier score | accuracy | score vs base (paired) | accuracy vs base (paired) |",
             "|---|---|---|---|---|"]
    first = _json(out / "countdown_sft" / "eval.json")
    base = first.get("before", {})
    rows = [("base model", base)]
    rows += [(s.label, _json(out / s.name / "eval.json").get("after", {})) for s in stages
             if s.name.startswith("countdown_") and s.command == "fit"]
    for i, (label, r) in enumerate(rows):
        flat = _eval_with_intervals(r)
        vs_score = _against(base, r, "problem_scores") if i else "–"
        vs_accuracy = _against(base, r, "problem_correct") if i else "–"
        lines.append(f"| {label} | {_with_interval(flat, 'score')} | {_with_interval(flat, 'accuracy')} "
                     f"| {vs_score} | {vs_accuracy} |")
    return lines


def _best_of_n_table(out: Path) -> list[str]:
    path = out / "countdown_best_of_n" / "best_of_n.csv"
    if not path.is_file():
        return ["(best-of-N did not run)"]
    lines = ["| N | best-of-N accuracy | pass@N | majority@N |", "|---|---|---|---|"]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            lines.append(f"| {r['n']} | {_with_interval(r, 'best_of_n')} | {_with_interval(r, 'pass_at_n')} "
                         f"| {_with_interval(r, 'majority_at_n')} |")
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

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

from lit_align.evaluation.stats import Comparison, compare, holm, with_interval
from lit_align.tasks.constraints.reward import FOUR
import yaml

from .plan import Stage, choose_temperature

log = logging.getLogger(__name__)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def verdict(comparison: Comparison, adjusted_p: float, alpha: float = 0.05) -> str:
    """``better`` / ``worse`` when the paired interval excludes 0 on that side and ``adjusted_p`` is below
    ``alpha``; ``inconclusive`` otherwise. ``adjusted_p`` is the comparison's p after Holm's correction over
    the comparisons reported beside it (``holm``; for a lone comparison, ``holm([p])`` is p itself). It has
    no default, so no verdict word on the page rests on a raw p; one below the raw p is refused (an
    adjustment never lowers a p-value, so such a number is not the comparison's adjusted p)."""
    if adjusted_p < comparison.p_value - 1e-12:
        raise ValueError(f"adjusted p {adjusted_p} is below the comparison's raw p {comparison.p_value}: "
                         "pass the comparison's own Holm-adjusted p")
    if adjusted_p < alpha and comparison.low > 0:
        return "better"
    if adjusted_p < alpha and comparison.high < 0:
        return "worse"
    return "inconclusive"


def _against(base: dict, stage: dict, key: str) -> Comparison | None:
    """The paired comparison of a stage's per-problem figures against the base's (None: not comparable)."""
    a, b = base.get(key), stage.get(key)
    if not a or not b or len(a) != len(b):
        return None
    return compare(a, b, test="bootstrap" if key == "problem_scores" else "auto")


def newest_log(folder: Path) -> Path | None:
    """The CSV log of a stage's newest run, ``logs/version_N/metrics.csv`` with the largest N compared as a
    number (``version_10`` is newer than ``version_9``): the one the report reads and the runner copies."""
    files = [p for p in folder.glob("logs/version_*/metrics.csv") if p.parent.name.removeprefix("version_").isdigit()]
    return max(files, key=lambda p: int(p.parent.name.removeprefix("version_")), default=None)


def metric_rows(folder: Path) -> list[dict]:
    """Rows of the newest CSV log of a stage (``newest_log``)."""
    path = newest_log(folder)
    if path is None:
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _instruction_table(stages: list[Stage], out: Path) -> list[str]:
    lines = ["| stage | IFEval prompt-level strict | instruction-level strict | prompt-level loose | instruction-level loose "
             "| win rate vs base (judge RM) | mean judge reward | mean tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        if stage.name.startswith("instruction_eval_"):
            m = _json(out / stage.name / "metrics.json")
            if "win_rate" not in m and stage.name.endswith("_base"):
                m = {**m, "win_rate": 0.5}  # the base against itself
            four = " | ".join(with_interval(m, f"ifeval_{k}") for k in FOUR)
            lines.append(f"| {stage.label} | {four} | {with_interval(m, 'win_rate')} "
                         f"| {with_interval(m, 'reward_mean')} | {_fmt(m.get('mean_tokens'))} |")
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
    with its 95 % interval, and each stage against the base model on the same problems (paired), with
    Holm's adjusted p over all of the table's comparisons and the verdict taken on it."""
    lines = ["| stage | verifier score | accuracy | score vs base (paired; Holm p over the table) "
             "| accuracy vs base (paired; Holm p over the table) |", "|---|---|---|---|---|"]
    first = _json(out / "countdown_sft" / "eval.json")
    base = first.get("before", {})
    rows = [("base model", base)]
    rows += [(s.label, _json(out / s.name / "eval.json").get("after", {})) for s in stages
             if s.name.startswith("countdown_") and s.command == "fit"]
    keys = ("problem_scores", "problem_correct")
    comparisons = {(i, key): _against(base, r, key) for i, (_, r) in enumerate(rows) if i for key in keys}
    tested = [k for k, c in comparisons.items() if c is not None]
    adjusted = dict(zip(tested, holm([comparisons[k].p_value for k in tested])))
    for i, (label, r) in enumerate(rows):
        flat = _eval_with_intervals(r)
        cells = []
        for key in keys:
            c = comparisons.get((i, key))
            cells.append("–" if c is None else f"{c.diff:+.3f} [{c.low:.3f}, {c.high:.3f}], {c.test} p={c.p_value:.3f}, "
                                               f"Holm p={adjusted[i, key]:.3f}: {verdict(c, adjusted[i, key])}")
        lines.append(f"| {label} | {with_interval(flat, 'score')} | {with_interval(flat, 'accuracy')} "
                     f"| {cells[0]} | {cells[1]} |")
    return lines


def _best_of_n_table(out: Path) -> list[str]:
    path = out / "countdown_best_of_n" / "best_of_n.csv"
    if not path.is_file():
        return ["(best-of-N did not run)"]
    lines = ["| N | best-of-N accuracy | pass@N | majority@N |", "|---|---|---|---|"]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            lines.append(f"| {r['n']} | {with_interval(r, 'best_of_n')} | {with_interval(r, 'pass_at_n')} "
                         f"| {with_interval(r, 'majority_at_n')} |")
    return lines


# ----------------------------------------------------------------------------- the study's claims

CLAIM_VERDICTS = {"better": "reproduced", "worse": "not reproduced (the opposite holds)", "inconclusive": "inconclusive"}


def _after(out: Path, name: str) -> dict:
    return _json(out / name / "eval.json").get("after", {})


def _responses(out: Path, name: str) -> list[dict]:
    path = out / name / "responses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _per_problem_best_of_n(out: Path, name: str, selector: str = "best_of") -> dict[int, list[int]]:
    """``{N: per-problem hits}`` of ``selector`` (``best_of``: the verifier picks; ``majority_at``: the most
    common answer, no verifier) from ``best_of_n_per_problem.csv`` (problems in test order)."""
    path = out / name / "best_of_n_per_problem.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ns = sorted(int(k.removeprefix(f"{selector}_")) for k in rows[0] if k.startswith(f"{selector}_")) if rows else []
    return {n: [int(float(r[f"{selector}_{n}"])) for r in rows] for n in ns}


def _figure(values: list[float], binary: bool) -> str:
    """A stage's mean over problems with its 95 % interval (Wilson for 0/1 outcomes, else bootstrap)."""
    from lit_align.evaluation.stats import mean_estimate, proportion_estimate

    e = proportion_estimate(int(sum(values)), len(values)) if binary else mean_estimate(values)
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


FAMILIES = {
    "countdown": "Countdown: SFT against the base, more data, best-of-N and majority vote against greedy, RLOO and GRPO "
                 "against SFT and against each other, LoRA against full fine-tuning",
    "instruction": "instruction following: each policy against the base (IFEval prompt-level strict, win rate) and against SFT",
}


def _claim(family: str, claim: str, measured: str, before, after, test: str = "auto", label_verdicts: dict | None = None) -> dict:
    """One claim of ``family``: the figures and the paired test of ``after − before`` (None: not run)."""
    ran = bool(before) and bool(after) and len(before) == len(after)
    return {"family": family, "claim": claim, "measured": measured, "labels": label_verdicts or CLAIM_VERDICTS,
            "comparison": compare(before, after, test=test) if ran else None}


def _claim_rows(claims: list[dict]) -> list[str]:
    """The claims as table rows, with Holm's adjusted p within each family and the verdict taken on it."""
    adjusted: dict[int, float] = {}
    for family in FAMILIES:
        tested = [i for i, c in enumerate(claims) if c["family"] == family and c["comparison"] is not None]
        for i, p in zip(tested, holm([claims[i]["comparison"].p_value for i in tested])):
            adjusted[i] = p
    rows = []
    for i, c in enumerate(claims):
        comp = c["comparison"]
        if comp is None:
            rows.append(f"| {c['claim']} | {c['measured'] or '–'} | – | – | not run |")
            continue
        word = c["labels"][verdict(comp, adjusted[i])]
        rows.append(f"| {c['claim']} | {c['measured']} | {comp.diff:+.3f} [{comp.low:.3f}, {comp.high:.3f}], {comp.test} "
                    f"p={comp.p_value:.3f} (n={comp.n}) | {adjusted[i]:.3f} | {word} |")
    return rows


def temperature_choice(stages: list[Stage], out: Path) -> dict | None:
    """The best-of-N test's sampling temperature (from the config it ran with), the validation figures it
    was chosen from and whether they tied (``{"temperature": t, "validation": {t: figures}, "tied": bool}``:
    tied when another temperature had the same best-of-N accuracy and pass@N, so the rule's last tie-break,
    the lower temperature, chose, not the data); None if not run."""
    config = out / "countdown_best_of_n" / "config.yaml"
    val = {s.overrides["model"]["init_args"]["generation"]["temperature"]: out / s.name
           for s in stages if s.name.startswith("countdown_best_of_n_val_")}
    if not config.is_file() or not val or not all((folder / "best_of_n.csv").is_file() for folder in val.values()):
        return None
    used = yaml.safe_load(config.read_text())["model"]["init_args"]["generation"]["temperature"]
    best, figures = choose_temperature(val)
    if best != used:
        log.warning("best-of-N ran at temperature %s, but the validation results choose %s", used, best)
    ranks = [(f["best_of_n"], f["pass_at_n"]) for f in figures.values()]
    return {"temperature": used, "validation": figures, "tied": ranks.count((figures[best]["best_of_n"], figures[best]["pass_at_n"])) > 1}


def claims_table(stages: list[Stage], out: Path) -> list[str]:
    """The study's claims, one row each: the measured figures with 95 % intervals, the paired test on
    the same held-out problems or prompts, Holm's adjusted p within the claim's family (``FAMILIES``),
    and a verdict on the adjusted p. ``reproduced`` needs the paired interval to exclude 0 in the claimed
    direction *and* the adjusted p < 0.05 (``verdict``); the opposite significant result is ``not
    reproduced``; anything else ``inconclusive``."""
    names = {s.name: s for s in stages}
    lines = ["| claim | measured (95 % intervals) | paired test: difference [95 % interval], p (n) | Holm p | verdict |",
             "|---|---|---|---|---|"]
    claims: list[dict] = []
    base = _json(out / "countdown_sft" / "eval.json").get("before", {})
    sft_names = [n for n in ("countdown_sft", "countdown_sft_more", "countdown_sft_most") if n in names]
    largest = _after(out, sft_names[-1]) if sft_names else {}
    acc, score = "problem_correct", "problem_scores"
    family = "countdown"
    # 1. SFT on synthetic traces beats the base model
    for key, what in ((acc, "accuracy"), (score, "verifier score")):
        measured = (f"base {_figure(base[key], key == acc)} → SFT ({names[sft_names[-1]].label}) {_figure(largest[key], key == acc)}"
                    if base.get(key) and largest.get(key) else "")
        claims.append(_claim(family, f"SFT on synthetic traces beats the base model (Countdown {what})", measured,
                            base.get(key), largest.get(key), "bootstrap" if key == score else "auto"))
    # 2. more synthetic data beats less: the curve, tested largest against smallest
    curve = [(names[n].label, _after(out, n)) for n in sft_names]
    if len(curve) >= 2:
        for key, what in ((acc, "accuracy"), (score, "verifier score")):
            measured = "; ".join(f"{label}: {_figure(r[key], key == acc)}" for label, r in curve if r.get(key))
            # the stages are nested continuations: data and optimiser steps grow together, so the claim says both
            claims.append(_claim(family, f"more synthetic traces with more optimiser steps beat fewer (Countdown {what}, "
                                f"largest against smallest of {len(curve)} nested sizes)", measured, curve[0][1].get(key), curve[-1][1].get(key),
                                "bootstrap" if key == score else "auto"))
    # 3. best-of-N with the verifier at least doubles greedy SFT accuracy (largest N; temperature from validation)
    bon = _per_problem_best_of_n(out, "countdown_best_of_n")
    greedy = largest.get(acc)
    if bon and greedy and len(bon[max(bon)]) == len(greedy):
        chosen = temperature_choice(stages, out)
        n = max(bon)
        where = ""
        if chosen:
            where = (f", temperature {chosen['temperature']:g} by the tie-break rule (the validation problems tied)" if chosen["tied"]
                     else f", temperature {chosen['temperature']:g} chosen on validation problems")
        measured = (f"greedy SFT {_figure(greedy, True)}; best-of-{n} {_figure(bon[n], True)}{where}; "
                    + ", ".join(f"N={k}: {sum(v) / len(v):.3f}" for k, v in sorted(bon.items())))
        claims.append(_claim(family, f"best-of-N with a perfect verifier (so, pass@N) at least doubles greedy SFT accuracy "
                            f"(N = {n}; test: best-of-N − 2 × greedy)", measured, [2 * g for g in greedy], bon[n], "bootstrap"))
    else:
        claims.append(_claim(family, "best-of-N with a perfect verifier (so, pass@N) at least doubles greedy SFT accuracy", "", None, None))
    # 3b. the same samples without the verifier: majority vote over the N answers, against greedy
    vote = _per_problem_best_of_n(out, "countdown_best_of_n", "majority_at")
    if vote and greedy and len(vote[max(vote)]) == len(greedy):
        n = max(vote)
        claims.append(_claim(family, f"majority vote over N samples, no verifier, beats greedy SFT accuracy (N = {n})",
                             f"greedy SFT {_figure(greedy, True)}; majority@{n} {_figure(vote[n], True)}", greedy, vote[n]))
    else:
        claims.append(_claim(family, "majority vote over N samples, no verifier, beats greedy SFT accuracy", "", None, None))
    # 4. RLOO and GRPO with the verifier, each against its SFT start, and against each other
    rl = {"RLOO": _after(out, "countdown_rloo"), "GRPO": _after(out, "countdown_grpo")}
    for method, after in rl.items():
        for key, what in ((acc, "accuracy"), (score, "verifier score")):
            measured = (f"SFT start {_figure(largest[key], key == acc)} → {method} {_figure(after[key], key == acc)}"
                        if largest.get(key) and after.get(key) else "")
            claims.append(_claim(family, f"{method} with the verifier beats its SFT start (Countdown {what})", measured,
                                largest.get(key), after.get(key), "bootstrap" if key == score else "auto"))
    either = {"better": "GRPO better", "worse": "RLOO better", "inconclusive": "no difference resolved"}
    for key, what in ((acc, "accuracy"), (score, "verifier score")):
        a, b = rl["RLOO"].get(key), rl["GRPO"].get(key)
        measured = f"RLOO {_figure(a, key == acc)} → GRPO {_figure(b, key == acc)}" if a and b else ""
        claims.append(_claim(family, f"RLOO against GRPO, same start, batches and steps (Countdown {what}; GRPO − RLOO)",
                             measured, a, b, "bootstrap" if key == score else "auto", either))
    # 5. instruction following: each policy against the base (adherence, win rate) and against SFT
    family = "instruction"
    evals = {key: _responses(out, f"instruction_eval_{key}") for key in ("base", "sft", "dpo", "rloo_rm", "rloo_checker")}
    titles = {"sft": "SFT", "dpo": "DPO", "rloo_rm": "RLOO (RM reward)", "rloo_checker": "RLOO (checker reward)"}
    ok = lambda rows: [float(bool(r.get("prompt_ok"))) for r in rows] if rows and all("prompt_ok" in r for r in rows) else None
    for key, title in titles.items():
        a, b = ok(evals["base"]), ok(evals[key])
        measured = f"base {_figure(a, True)} → {title} {_figure(b, True)}" if a and b and len(a) == len(b) else ""
        claims.append(_claim(family, f"{title} beats the base model in IFEval prompt-level strict accuracy", measured, a, b))
    for key, title in titles.items():
        wins = [float(r["win"]) for r in evals[key]] if evals[key] and all("win" in r for r in evals[key]) else None
        measured = f"win rate {_figure(wins, False)} (ties ½)" if wins else ""
        claims.append(_claim(family, f"{title} beats the base model in win rate, judged by the held-apart judge RM (test: against 0.5)",
                            measured, [0.5] * len(wins) if wins else None, wins, "bootstrap"))
    for key in ("dpo", "rloo_rm", "rloo_checker"):
        a, b = ok(evals["sft"]), ok(evals[key])
        measured = f"SFT {_figure(a, True)} → {titles[key]} {_figure(b, True)}" if a and b and len(a) == len(b) else ""
        claims.append(_claim(family, f"{titles[key]} beats its SFT start in IFEval prompt-level strict accuracy", measured, a, b))
    # 6. LoRA against full fine-tuning, SFT on the Countdown track, the same traces
    family = "countdown"
    lora, full = _after(out, "countdown_sft"), _after(out, "countdown_sft_full")
    seconds = {n: _json(out / n / "done.json").get("seconds") for n in ("countdown_sft", "countdown_sft_full")}
    both = {"better": "full fine-tuning better", "worse": "LoRA better", "inconclusive": "no difference resolved"}
    for key, what in ((acc, "accuracy"), (score, "verifier score")):
        measured = ""
        if lora.get(key) and full.get(key):
            measured = f"LoRA {_figure(lora[key], key == acc)} → full {_figure(full[key], key == acc)}"
            if all(seconds.values()):
                measured += f"; stage wall time {seconds['countdown_sft']:.0f} s (LoRA, with the base evaluation) vs {seconds['countdown_sft_full']:.0f} s (full)"
        claims.append(_claim(family, f"LoRA against full fine-tuning, SFT on Countdown (same traces; {what}; full − LoRA)", measured,
                            lora.get(key), full.get(key), "bootstrap" if key == score else "auto", both))
    return lines + _claim_rows(claims)


RL_STAGES = ("countdown_rloo", "countdown_grpo", "instruction_rloo_rm", "instruction_rloo_checker")


def step_rewards(folder: Path, key: str = "train/reward_mean") -> list[float]:
    """The training reward per optimiser step (the first logged row of each step) of a stage's CSV log."""
    seen, values = set(), []
    for r in metric_rows(folder):
        if r.get(key) and r.get("step") not in seen:
            seen.add(r.get("step"))
            values.append(float(r[key]))
    return values


def _reward_slopes(stages: list[Stage], out: Path) -> list[str]:
    """Each online RL stage's training reward per optimiser step: first and last step, and the least-squares
    slope with its 95 % t interval (``stats.slope_estimate``; at least 5 steps)."""
    from lit_align.evaluation.stats import slope_estimate

    lines = ["| stage | optimiser steps | reward, first → last step | mean reward | slope per step [95 % interval] |",
             "|---|---|---|---|---|"]
    for stage in stages:
        if stage.name not in RL_STAGES:
            continue
        y = step_rewards(out / stage.name)
        if not y:
            lines.append(f"| {stage.label} | – | – | – | not run |")
            continue
        slope = "– (fewer than 5 steps: no interval, no trend stated)"
        if len(y) >= 5:
            e = slope_estimate(y)
            slope = f"{e.value:+.4f} [{e.low:+.4f}, {e.high:+.4f}]" + (": holds 0, no change detectable" if e.low <= 0 <= e.high else "")
        lines.append(f"| {stage.label} | {len(y)} | {y[0]:.3f} → {y[-1]:.3f} | {sum(y) / len(y):.3f} | {slope} |")
    return lines


def machine_peak(d: dict) -> float | None:
    """A stage's machine-wide peak in MiB: the runner and its children summed, as polled (``memory.TreePeak``),
    raised to the stage's own process peak where the poll missed a spike the kernel recorded (the sum at
    that moment was at least that); None for stages recorded before the poll existed."""
    polled = d.get("machine_peak_rss_mib")
    if polled is None:
        return None
    return max(polled, d.get("peak_rss_mib") or 0.0)


def _stage_table(stages: list[Stage], done: dict[str, dict]) -> list[str]:
    """Each stage's wall time, the engine it sampled with (none: it samples nothing), the peak RSS of the one
    process that ran it (the runner, or its child) and the machine-wide peak (``machine_peak``)."""
    lines = ["| stage | wall time (s) | sampling engine | peak RSS of the stage's process (MiB) | machine-wide peak (MiB) |",
             "|---|---|---|---|---|"]
    for stage in stages:
        d = done.get(stage.name) or {}
        peak = d.get("peak_rss_mib")
        peak = "–" if peak is None else f"{peak:,.0f}" + ("" if d.get("peak_rss_of_stage_alone", True) else " (run so far)")
        machine = machine_peak(d)
        engine = d.get("engine") or ("–" if d else "")
        lines.append(f"| {stage.name} | {_fmt(d.get('seconds'))} | {engine} | {peak} | {'–' if machine is None else f'{machine:,.0f}'} |")
    return lines


def run_memory(stages: list[Stage], done: dict[str, dict]) -> str:
    """The sentence that reports the run's memory: the highest machine-wide peak over the stages, and which
    stages lack the reading (then the figure is a lower bound, said so)."""
    peaks = {s.name: machine_peak(done[s.name]) for s in stages if done.get(s.name)}
    measured = {name: peak for name, peak in peaks.items() if peak is not None}
    missing = [name for name, peak in peaks.items() if peak is None]
    if not measured:
        return ("Each peak RSS is the high-water mark of the one process that ran the stage (the runner, or the child "
                "a vLLM stage runs in), not the machine-wide footprint: what the runner held while a child ran is in no figure.")
    top = max(measured, key=measured.get)
    text = (f"**The run's memory: {measured[top]:,.0f} MiB machine-wide at its highest** (`{top}`). The machine-wide "
            "column sums the resident memory of the runner and every child process at the same moment, read from "
            "/proc every 0.25 s, and is raised to the stage's own process peak (kept by the kernel) where that is "
            "higher: a spike shorter than the poll can be missed, so the figure is the best lower bound the "
            "readings give; pages shared between processes count once per process. The per-process column is "
            "the stage's own process alone.")
    if missing:
        text += f" Not measured for {', '.join(missing)}: the run's figure is a lower bound there too."
    return text


def _scaling_plot(stages: list[Stage], out: Path, image: Path) -> bool:
    """Held-out accuracy and score against the number of synthetic traces, with 95 % intervals."""
    points = []
    for stage in stages:
        if stage.name.startswith("countdown_sft") and stage.name != "countdown_sft_full":
            r = _eval_with_intervals(_after(out, stage.name))
            traces = [int(w) for w in stage.label.split() if w.isdigit()]
            if r.get("accuracy_low") is not None and traces:
                points.append((traces[0], r))
    if len(points) < 2:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, marker in (("accuracy", "o"), ("score", "s")):
        x = [p[0] for p in points]
        y = [p[1][key] for p in points]
        err = [[v - p[1][f"{key}_low"] for v, p in zip(y, points)], [p[1][f"{key}_high"] - v for v, p in zip(y, points)]]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=key)
    ax.set_xscale("log")
    ax.set_xlabel("synthetic traces seen (SFT, LoRA)")
    ax.set_ylabel("held-out Countdown")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(image, dpi=100)
    plt.close(fig)
    return True


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
        key = "train/reward_mean" if stage.name in RL_STAGES else "train/loss"
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
    done = {s.name: _json(out / s.name / "done.json") for s in stages}  # each read once: wall time and provenance
    seconds = {name: d.get("seconds") for name, d in done.items()}
    total = sum(v for v in seconds.values() if v)
    samples = _json(out / "instruction_samples" / "pairs.counts.json")
    lines = [f"<!-- reproduce:{profile}:begin -->", f"### Profile `{profile}` (written by `python tools/reproduce.py --profile {profile}`)", "",
             f"Total wall time of the stages: {total / 60:.1f} min. Every figure below is computed from the stages' "
             f"per-problem and per-prompt outcomes, which the run copies to `{DATA_ROOT}/{profile}/` (no weights); "
             f"`python tools/reproduce.py --profile {profile} --report-only --out {DATA_ROOT}/{profile}` rebuilds this "
             "block from them alone, without running a model.", ""]
    ran = [d for d in done.values() if d]
    commits = sorted({(r.get("commit") or "unknown") + (" (with uncommitted changes)" if r.get("dirty") else "") for r in ran if r})
    machines = sorted({r["machine"] for r in ran if r.get("machine")})
    if commits:
        lines += [f"Stages ran at commit {', '.join(commits)} on {'; '.join(machines) or 'an unrecorded machine'}.", ""]
    if samples:
        lines += [(f"Base-model samples: {samples.get('prompts')} prompts × their samples = {samples.get('completions')} completions; "
                  f"{samples.get('sft_records', 0)} verified responses (SFT data), {samples.get('pairs')} preference pairs "
                  f"({samples.get('skipped_equal_scores')} prompts skipped: all samples scored the same)."), ""]
    lines += ["**The study's claims** (each test pairs the two stages on the same held-out problems or prompts):", "",
              *claims_table(stages, out), "",
              "Holm's correction runs within each family of claims, and the verdict is taken on the adjusted p "
              "(the intervals are the unadjusted 95 % ones): " + "; ".join(f"*{v}*" for v in FAMILIES.values()) + ".", ""]
    chosen = temperature_choice(stages, out)
    if chosen:
        figures = "; ".join(f"T={t}: best-of-{f['n']} {f['best_of_n']:.3f}, pass@{f['n']} {f['pass_at_n']:.3f}"
                            for t, f in chosen["validation"].items())
        if chosen["tied"]:
            lines += [f"Best-of-N sampling temperature: {chosen['temperature']:g}, by the tie-break rule, not by the data: "
                      f"the temperatures tied on the validation problems in best-of-N accuracy at the largest N and in "
                      f"pass@N, so the rule took the lower one. {figures}", ""]
        else:
            lines += [f"Best-of-N sampling temperature: {chosen['temperature']:g}, chosen on the validation problems "
                      f"(best-of-N accuracy at the largest N, then pass@N): {figures}", ""]
    stem = f"reproduce_{profile}"
    if _scaling_plot(stages, out, results.parent / f"{stem}_scaling.png"):
        lines += [f"![data scaling]({stem}_scaling.png)", ""]
    lines += ["**Instruction following** (held-out constraint prompts, greedy):", "", *_instruction_table(stages, out), "",
              "**Countdown** (held-out problems, greedy; each verdict on Holm's adjusted p over the table's comparisons):", "",
              *_countdown_table(stages, out), "",
              "**Best-of-N** (verifier selects):", "", *_best_of_n_table(out), ""]
    if _curves(stages, out, results.parent / f"{stem}_curves.png"):
        lines += [f"![training curves]({stem}_curves.png)", ""]
    bon_png = out / "countdown_best_of_n" / "best_of_n.png"
    if bon_png.is_file():
        shutil.copyfile(bon_png, results.parent / f"{stem}_best_of_n.png")
        lines += [f"![accuracy vs N]({stem}_best_of_n.png)", ""]
    lines += ["**Online RL training reward** (per optimiser step, over all of the step's samples; a slope whose "
              "interval holds 0 is no detectable change, and first → last are single steps):", "",
              *_reward_slopes(stages, out), ""]
    lines += _stage_table(stages, done)
    lines += ["", run_memory(stages, done)]
    lines.append(f"<!-- reproduce:{profile}:end -->")
    return "\n".join(lines) + "\n"


DATA_ROOT = "docs/study_data"
# what the report reads in a stage folder: small JSON/CSV outcomes (and the best-of-N plot it copies)
DATA_FILES = ("done.json", "eval.json", "metrics.json", "responses.jsonl", "best_of_n.csv", "best_of_n_per_problem.csv",
              "best_of_n.png", "pairs.counts.json", "config.yaml")


def collect(stages: list[Stage], out: Path, data: Path) -> list[Path]:
    """Copy what the report reads of each stage (``DATA_FILES`` and the newest CSV log, ``newest_log``)
    from ``out`` to ``data``, so the results block can be rebuilt from ``data`` alone. Returns the copies.
    A stage's earlier log copies in ``data`` are removed first, so the copy holds only the run the report read."""
    copied = []
    for stage in stages:
        source, target = out / stage.name, data / stage.name
        files = [source / name for name in DATA_FILES if (source / name).is_file()]
        log_file = newest_log(source)
        if log_file is not None:
            if target.resolve() != source.resolve() and (target / "logs").is_dir():
                shutil.rmtree(target / "logs")  # an older run's copy, e.g. version_11 of a removed out folder
            files.append(log_file)
        for file in files:
            dest = target / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, dest)
            copied.append(dest)
    return copied


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

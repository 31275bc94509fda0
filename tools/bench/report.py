"""Turn raw runs into the side-by-side table: medians over repeats, and ratios against named baselines."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from importlib import metadata

# Baselines a contender is divided by. "TRL" is the trainer as a TRL user runs it; "TRL, same
# layout" is TRL's padding-free mode for the packed rows; "bare" is the bare loop of the same layout.
TRL_BASELINE = "trl"


def trl_same_layout(contender: str) -> str:
    return "trl+padding_free" if contender.endswith("+packing") else TRL_BASELINE


def bare_same_layout(contender: str) -> str:
    return "bare+packing" if contender.endswith("+packing") else "bare"


def baseline_of(contender: str, names) -> str | None:
    """The ``--baseline`` twin of a contender among ``names``: ``lit_align`` -> ``lit_align@REV`` (itself for
    ``lit_align@REV``); None if there is none, or more than one to choose from."""
    twins = [n for n in names if n.startswith(contender.split("@")[0] + "@")]
    return twins[0] if len(twins) == 1 else None


def aggregate(runs: list[dict]) -> dict:
    """Per-contender figures over its repeats: median step time, spread, tokens/s, memory."""
    ok = [r for r in runs if "error" not in r and r.get("step_s")]
    if not ok:
        return {"error": next((r.get("error") for r in runs if "error" in r), "no measured steps")}
    medians = [statistics.median(r["step_s"]) for r in ok]
    throughput = [sum(r["tokens"]) / sum(r["step_s"]) for r in ok if r.get("tokens")]
    return {
        "step_s": statistics.median(medians),
        "mean_step_s": statistics.mean(t for r in ok for t in r["step_s"]),
        "step_s_min": min(medians),
        "step_s_max": max(medians),
        "tokens_per_step": statistics.median(sum(r["tokens"]) / len(r["tokens"]) for r in ok) if throughput else None,
        "tokens_per_s": statistics.median(throughput) if throughput else None,
        # a run that replayed a step under the FLOP counter afterwards: its peak up to the end of the measured steps
        "peak_rss_mib": statistics.median(r["train_peak_rss_mib"] if r.get("flops") else r["process_peak_rss_mib"]
                                          for r in ok),
        "train_peak_rss_mib": statistics.median(r["train_peak_rss_mib"] for r in ok),
        "cuda_peak_mib": statistics.median(r["cuda_peak_mib"] for r in ok) if all("cuda_peak_mib" in r for r in ok) else None,
        "repeats": len(ok),
    }


def paired_time_ratio(runs_a: list[dict], runs_b: list[dict]) -> float | None:
    """Median over (repeat, step) of step time a / step time b.

    Step i of every contender trains on the same batch, so pairing steps cancels the batch-to-batch
    spread (lengths vary a lot) that would otherwise swamp a ratio of two medians.
    """
    by_repeat = {r["repeat"]: r["step_s"] for r in runs_b if "error" not in r and r.get("step_s")}
    ratios = [ta / tb for r in runs_a if "error" not in r and r["repeat"] in by_repeat
              for ta, tb in zip(r["step_s"], by_repeat[r["repeat"]])]
    return statistics.median(ratios) if ratios else None


def with_ratios(table: dict[str, dict[str, dict]], runs: list[dict]) -> dict[str, dict[str, dict]]:
    """Add time ratios (paired by step) and peak-memory ratios against TRL, TRL with the same layout, bare,
    and, for ``lit_align`` beside a ``--baseline`` run, against ``lit_align@REV``."""
    def of(method: str, contender: str) -> list[dict]:
        return [r for r in runs if r["method"] == method and r["contender"] == contender]

    for method, rows in table.items():
        for name, row in rows.items():
            if "error" in row:
                continue
            mine, trl = of(method, name), rows.get(TRL_BASELINE)
            same = trl_same_layout(name)
            row["time_vs_trl"] = paired_time_ratio(mine, of(method, TRL_BASELINE))
            key = "cuda_peak_mib" if row.get("cuda_peak_mib") is not None else "peak_rss_mib"  # GPU runs: GPU memory
            row["mem_vs_trl"] = row[key] / trl[key] if trl and "error" not in trl and trl.get(key) else None
            row["time_vs_trl_same_layout"] = paired_time_ratio(mine, of(method, same)) if same != TRL_BASELINE else None
            row["time_vs_bare"] = paired_time_ratio(mine, of(method, bare_same_layout(name)))
            twin = baseline_of(name, rows)
            if twin:  # a failed baseline leaves its ratios empty
                row["baseline"] = twin
                row["time_vs_baseline"] = paired_time_ratio(mine, of(method, twin))
                row["mem_vs_baseline"] = row[key] / rows[twin][key] if rows[twin].get(key) else None
    return table


def _f(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(table: dict[str, dict[str, dict]]) -> str:
    gpu = any(r.get("cuda_peak_mib") is not None for rows in table.values() for r in rows.values())
    peak = "peak GPU" if gpu else "peak RSS"
    twins = sorted({r["baseline"] for rows in table.values() for r in rows.values() if r.get("baseline")})
    twin = twins[0] if len(twins) == 1 else "lit_align@REV"  # the columns appear only beside a --baseline run
    head = ("| method | contender | s/step median | s/step mean | run medians (min–max) | real tokens/step "
            f"| real tokens/s | {peak} MiB | time ÷ TRL | {peak} ÷ TRL | time ÷ TRL same layout | time ÷ bare |"
            + (f" time ÷ {twin} | {peak} ÷ {twin} |" if twins else ""))
    columns = head.count("|") - 1
    lines = [head, "|" + "---|" * columns]
    for method, rows in table.items():
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {method} | {name} | failed: {r['error']} |" + " |" * (columns - 3))
                continue
            lines.append(
                f"| {method} | {name} | {r['step_s']:.2f} | {r['mean_step_s']:.2f} | {r['step_s_min']:.2f}–{r['step_s_max']:.2f} "
                f"| {_f(r['tokens_per_step'], '.0f')} | {_f(r['tokens_per_s'], '.0f')} "
                f"| {_f(r['cuda_peak_mib'] if gpu else r['peak_rss_mib'], '.0f')} "
                f"| {_f(r['time_vs_trl'], '.2f')} | {_f(r['mem_vs_trl'], '.2f')} "
                f"| {_f(r['time_vs_trl_same_layout'], '.2f')} | {_f(r['time_vs_bare'], '.2f')} |"
                + (f" {_f(r.get('time_vs_baseline'), '.2f')} | {_f(r.get('mem_vs_baseline'), '.2f')} |"
                   if twins else "")
            )
    return "\n".join(lines)


def _sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict:
    """CPU model, cores, RAM, library versions, and whether other known work was running."""
    versions = {}
    for package in ("torch", "transformers", "lightning", "trl", "accelerate", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": _sh("lscpu | sed -n 's/^Model name: *//p' | head -1") or platform.processor(),
        "cores": str(os.cpu_count()),
        "gpu": _sh("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader") or None,
        "ram": _sh("free -g | awk '/^Mem:/ {print $2 \" GiB\"}'"),
        "python": platform.python_version(),
        "versions": versions,
        "busy": busy(),
    }


def busy() -> list[str]:
    """Other known heavy work on this machine right now (a reproduce run, Slurm daemons)."""
    found = []
    for name in ("tools/reproduce.py", "slurmd"):
        try:  # not through a shell, whose own command line would match the pattern
            if subprocess.run(["pgrep", "-f", name], check=False, capture_output=True).returncode == 0:
                found.append(name)
        except OSError:
            pass
    return found


# --- online RL: where a step's time goes, and the MFU of its training passes (phases.py, flops.py) ----------
PHASE_COLUMNS = (("sample", "sampling"), ("score", "scoring"), ("ref", "ref pass"), ("old", "old pass"),
                 ("policy", "policy fwd+bwd"), ("backward", "of which backward"), ("optimizer", "optimiser"),
                 ("passes", "training passes"))


def phase_means(runs: list[dict]) -> dict[str, float] | None:
    """Mean seconds per measured step of each phase, over every step of every run; None without phases."""
    ok = [r for r in runs if "error" not in r and r.get("phases")]
    if not ok:
        return None
    return {name: statistics.mean(v for r in ok for v in r["phases"][name]) for name, _ in PHASE_COLUMNS}


def passes_flops(runs: list[dict], peak_gflops: float | None) -> dict | None:
    """FLOPs counted in the replayed steps over those steps' measured training-pass time, and that rate
    against the matmul peak (None where nothing was counted)."""
    pairs = [(f, r["phases"]["passes"][i]) for r in runs if "error" not in r and r.get("flops") and r.get("phases")
             for i, f in zip(r["flops"]["steps"], r["flops"]["flops"])]
    if not pairs:
        return None
    flops, seconds = sum(f for f, _ in pairs), sum(s for _, s in pairs)
    gflops = flops / seconds / 1e9
    return {"tflop_per_step": flops / len(pairs) / 1e12, "gflops": gflops, "steps_counted": len(pairs),
            "mfu": gflops / peak_gflops if peak_gflops else None}


def with_phases(table: dict[str, dict[str, dict]], runs: list[dict], peak: dict | None) -> dict[str, dict[str, dict]]:
    """Add each RL row's phase means, its training passes against its ``--baseline`` twin and TRL (ratio of
    the means: the two sides sample different completions, so steps do not pair), and its passes' MFU."""
    from .peak import peak_gflops

    def of(method: str, contender: str) -> list[dict]:
        return [r for r in runs if r["method"] == method and r["contender"] == contender]

    for method, rows in table.items():
        means = {name: phase_means(of(method, name)) for name in rows}
        for name, row in rows.items():
            if "error" in row or means[name] is None:
                continue
            row["phases"] = means[name]
            row["phase_hooks_missing"] = sorted({m for r in of(method, name) for m in r.get("phase_hooks_missing", [])})
            for key, other in (("passes_vs_baseline", baseline_of(name, rows)), ("passes_vs_trl", TRL_BASELINE)):
                theirs = means.get(other) if other and other != name else None
                row[key] = means[name]["passes"] / theirs["passes"] if theirs and theirs["passes"] > 0 else None
            precision = next((r.get("precision", "32") for r in of(method, name) if "error" not in r), "32")
            row["passes_flops"] = passes_flops(of(method, name), peak_gflops(peak, precision))
    return table


def phase_markdown(table: dict[str, dict[str, dict]]) -> str:
    """The per-phase table of the RL rows (mean s/step), with the passes' ratios and MFU; empty without any."""
    rows = [(m, n, r) for m, named in table.items() for n, r in named.items() if r.get("phases")]
    if not rows:
        return ""
    twins = sorted({r["baseline"] for _, _, r in rows if r.get("baseline")})
    twin = twins[0] if len(twins) == 1 else "lit_align@REV"  # the column appears only beside a --baseline run
    head = ("| method | contender | step | " + " | ".join(label for _, label in PHASE_COLUMNS)
            + (f" | passes ÷ {twin}" if twins else "") + " | passes ÷ TRL | passes TFLOP/step | passes GFLOP/s | MFU |")
    lines = ["Online RL, mean s/step by phase:", "", head, "|" + "---|" * (head.count("|") - 1)]
    for method, name, r in rows:
        p, f = r["phases"], r.get("passes_flops") or {}
        lines.append(f"| {method} | {name} | {r['mean_step_s']:.2f} | "
                     + " | ".join(f"{p[key]:.2f}" for key, _ in PHASE_COLUMNS)
                     + (f" | {_f(r.get('passes_vs_baseline'), '.2f')}" if twins else "")
                     + f" | {_f(r.get('passes_vs_trl'), '.2f')} "
                     f"| {_f(f.get('tflop_per_step'), '.2f')} | {_f(f.get('gflops'), '.1f')} "
                     f"| {_f(None if f.get('mfu') is None else 100 * f['mfu'], '.1f')}{'%' if f.get('mfu') else ''} |")
    missing = sorted({f"{n}: {', '.join(r['phase_hooks_missing'])}" for _, n, r in rows if r.get("phase_hooks_missing")})
    if missing:  # a loop that no longer has a timed method: that phase reads 0 and its time sits in "policy"
        lines += ["", "Not timed (no such method in that loop): " + "; ".join(missing)]
    return "\n".join(lines)

"""lit_align vs TRL vs a bare PyTorch loop, side by side, in one command.

    python -m tools.bench.run --methods sft rm dpo rloo logprobs --steps 8 --repeats 3

Every run is its own process (its peak RSS is read with ``wait4`` when it exits). Runs alternate
between contenders (a b c a b c ...), so slow drifts of the machine spread over all of them, and
the table reports, per contender, the median over repeats of each run's median step time, with
ratios against TRL and against the bare loop of the same maths. Raw runs and the table are written
to ``--out`` (default ``outputs/bench``).

``--baseline REV`` adds ``lit_align@REV`` right after each method's ``lit_align``: the same worker and
workload with ``lit_align`` imported from a checkout of REV (``baseline.py``), for an A/B of two commits
in one command; the table then also divides each ``lit_align`` row by its ``@REV`` row.

RLOO and GRPO run on ``--rl-task`` (Countdown with its verifier by default; ``rl_task.py``). Their steps
are split into phases (sampling, scoring, reference and old-policy passes, policy forward and backward,
optimiser: ``phases.py``) in a second table, and in the first repeat of each lit_align contender
``--rl-flop-steps`` measured steps are replayed untimed under torch's FLOP counter (``flops.py``), for the
MFU of the training passes against this machine's matmul peak, measured first (``peak.py``) and printed
at the top of that table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path


from ..study.memory import child_peak_rss_mib
from . import baseline
from .common import RESULT_TAG, Settings, Spec
from .data import write_data
from .peak import describe
from .report import aggregate, busy, machine, markdown, phase_markdown, with_phases, with_ratios

# lit_align+every_group: online RL with skip_zero_advantage_groups off (every group's passes run, as at 37faeba
# and in TRL), to show what skipping the groups whose rewards are all equal buys on the same workload;
# lit_align+whole_rows: DPO with share_prompt off (every row whole, as before prompt trees)
CONTENDERS = {
    "sft": ["lit_align", "lit_align+packing", "trl", "trl+padding_free", "bare", "bare+packing"],
    "rm": ["lit_align", "trl", "bare"],
    "dpo": ["lit_align", "lit_align+whole_rows", "trl", "bare"],
    "rloo": ["lit_align", "lit_align+every_group", "trl", "bare"],
    "grpo": ["lit_align", "lit_align+every_group", "trl"],
    "logprobs": ["chunked", "full"],  # output head only: chunked log-probs vs full-vocabulary logits
}
# --vllm: RLOO with each side's colocated vLLM engine (run from the vLLM environment, with TRL added);
# lit_align+vllm_compiled: the engine compiled (enforce_eager off, vLLM's own default), +vllm: eager
VLLM_CONTENDERS = {"rloo": ["lit_align+vllm", "trl+vllm"], "grpo": ["lit_align+vllm", "lit_align+vllm_compiled", "trl+vllm"]}
# --ablations: the bare loop with one optimisation switched off, to show what each buys (time ÷ bare)
ABLATIONS = {
    "sft": ["bare+no_unpad"],
    "rm": ["bare+no_unpad"],
    "dpo": ["bare+no_unpad"],
    "rloo": ["bare+no_unpad", "bare+no_shared_prompt"],
}


def contenders(method: str, ablations: bool, vllm: bool = False, baselines: tuple[str, ...] = ()) -> list[str]:
    """A method's contenders in run order; ``lit_align@B`` for each baseline B right after ``lit_align``."""
    names = (CONTENDERS[method] + (VLLM_CONTENDERS.get(method, []) if vllm else [])
             + (ABLATIONS.get(method, []) if ablations else []))
    at = names.index("lit_align") + 1 if "lit_align" in names else len(names)
    return names[:at] + ([f"lit_align@{b}" for b in baselines] if "lit_align" in names else []) + names[at:]


def chosen(contender: str, wanted: list[str] | None) -> bool:
    """Whether ``--contenders`` asks for this one; naming ``lit_align`` also asks for its ``@REV`` twin."""
    return not wanted or contender in wanted or contender.split("@")[0] in wanted


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    return env


def run_one(spec: Spec, log: Path, timeout: float) -> dict:
    """Run one contender in a fresh process; its result line, plus its whole-process peak RSS."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"{__package__}.worker", spec.to_json()], stdout=out,
                                stderr=subprocess.STDOUT, env=child_env(spec.settings.threads))
        started = time.monotonic()
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                break
            time.sleep(0.2)
    lines = [line for line in log.read_text().splitlines() if line.startswith(RESULT_TAG)]
    result = json.loads(lines[-1][len(RESULT_TAG) :]) if lines else {"error": f"no result (exit {proc.returncode}); see {log}"}
    if proc.returncode == -9:
        result = {"error": f"timed out after {timeout:.0f} s; see {log}"}
    result.update(process_peak_rss_mib=child_peak_rss_mib(rusage), wall_s=time.monotonic() - started,
                  busy=busy(), method=spec.method, contender=spec.contender, precision=spec.settings.precision)
    return result


def measure_peak(settings: Settings, out: Path) -> dict | None:
    """The matmul peak (``peak.py``) in a child with the contenders' threads; kept as ``out/peak.json``."""
    done = subprocess.run([sys.executable, "-m", f"{__package__}.peak", "--threads", str(settings.threads),
                           "--device", settings.device], capture_output=True, text=True, check=False,
                          env=child_env(settings.threads))
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        print(f"matmul peak not measured: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    peak = json.loads(lines[-1])
    (out / "peak.json").write_text(json.dumps(peak))
    return peak


def counts_flops(method: str, contender: str, repeat: int) -> bool:
    """Whether this run replays steps under the FLOP counter: lit_align's RL contenders, first repeat only."""
    return method in ("rloo", "grpo") and contender.startswith("lit_align") and repeat == 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["sft", "rm", "dpo", "rloo", "logprobs"], choices=list(CONTENDERS))
    p.add_argument("--contenders", nargs="+", help="only these contenders (default: all of each method)")
    p.add_argument("--ablations", action="store_true", help="also the bare loop with each optimisation off")
    p.add_argument("--vllm", action="store_true", help="also RLOO with vLLM rollouts on both sides (vLLM environment)")
    p.add_argument("--baseline", metavar="REV", help="also lit_align at this git revision, as lit_align@REV (checked "
                   f"out under {baseline.WORKTREES}/), beside each method's lit_align")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800, help="seconds before one run is killed")
    p.add_argument("--out", type=Path, default=Path("outputs/bench"))
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from OUT/runs.jsonl")
    p.add_argument("--resume", action="store_true", help="keep OUT/runs.jsonl and skip the runs it already holds")
    for f in fields(Settings):  # --steps, --warmup, --threads, --sft-batch, --sft-max-length, ...
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.report_only:  # rebuild the table from the runs an earlier (maybe interrupted) command kept
        runs = [json.loads(line) for line in (args.out / "runs.jsonl").read_text().splitlines()]
        methods = [m for m in CONTENDERS if any(r["method"] == m for r in runs)]
        kept_peak = args.out / "peak.json"
        peak = json.loads(kept_peak.read_text()) if kept_peak.is_file() else None
        return write_report(runs, methods, {"machine": machine(), "argv": sys.argv, "peak": peak}, args.out)
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    base = baseline.checkout(args.baseline) if args.baseline else None
    labels = (base.short,) if base else ()
    data_dir = write_data(settings, args.out / "data")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    kept = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in kept.read_text().splitlines()] if args.resume and kept.is_file() else []
    done = {(r["method"], r["contender"], r["repeat"]) for r in runs}
    if not args.resume:
        kept.unlink(missing_ok=True)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']}; busy: {info['busy'] or 'no'}", file=sys.stderr)
    if base:
        print(f"baseline: {base.contender()} imports lit_align from {base.path} ({base.commit})", file=sys.stderr)
    rl = any(m in ("rloo", "grpo") for m in args.methods)
    peak = measure_peak(settings, args.out) if rl else None
    if peak:
        print(describe(peak), file=sys.stderr, flush=True)
    for repeat in range(args.repeats):
        for method in args.methods:
            for contender in contenders(method, args.ablations, args.vllm, labels):
                if not chosen(contender, args.contenders) or (method, contender, repeat) in done:
                    continue
                extra = {"lit_align_checkout": str(base.path)} if "@" in contender else {}
                extra["count_flops"] = counts_flops(method, contender, repeat)
                spec = Spec(method, contender, settings, str(data_dir), extra)
                result = run_one(spec, args.out / "logs" / f"{method}-{contender}-{repeat}.log", args.timeout)
                runs.append(result | {"repeat": repeat})
                with (args.out / "runs.jsonl").open("a") as f:  # kept even if the command is stopped early
                    f.write(json.dumps(runs[-1]) + "\n")
                shown = result.get("error") or f"median {sorted(result['step_s'])[len(result['step_s']) // 2]:.2f} s/step"
                print(f"[{repeat}] {method:8s} {contender:18s} {shown}, peak {result['process_peak_rss_mib']:.0f} MiB",
                      file=sys.stderr, flush=True)
    header = {"machine": info, "settings": asdict(settings), "argv": sys.argv, "peak": peak}
    if base:
        header["baseline"] = {"rev": args.baseline, "commit": base.commit, "path": str(base.path)}
    return write_report(runs, args.methods, header, args.out)


def write_report(runs: list[dict], methods: list[str], header: dict, out: Path) -> dict:
    """Aggregate the runs into the table; write results.json and results.md under ``out``; print the table."""
    labels = tuple(dict.fromkeys(r["contender"].split("@")[1] for r in runs if "@" in r["contender"]))
    table = {m: {c: aggregate([r for r in runs if r["method"] == m and r["contender"] == c])
                 for c in contenders(m, True, True, labels) if any(r["method"] == m and r["contender"] == c for r in runs)}
             for m in methods}
    table = with_phases(with_ratios(table, runs), runs, header.get("peak"))
    report = header | {"table": table, "runs": runs, "busy_during_runs": sorted({b for r in runs for b in r["busy"]})}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    peak = describe(header["peak"]) if header.get("peak") else None
    text = "\n\n".join(part for part in (peak, markdown(table), phase_markdown(table)) if part)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()

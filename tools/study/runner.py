"""Run a profile's stages in order, each skipped when done and resumed from its last checkpoint.

    python tools/reproduce.py --profile embedded     # offline, 2 CPU cores
    python tools/reproduce.py --profile smoke --out /tmp/smoke --results /tmp/smoke/results.md
    python tools/reproduce.py --profile paper        # hub access and a GPU
    python tools/reproduce.py --profile paper-smoke --out /tmp/ps --results /tmp/ps/results.md   # every paper config, CPU

Each stage gets ``<out>/<stage>/``: ``config.yaml`` (exactly what ran), ``checkpoints/last.ckpt``
(fit stages), ``logs/`` (CSV metrics), the stage's outputs (``export/``, ``eval.json``,
``metrics.json``, ...) and ``done.json`` (wall time), written last. A stage with ``done.json`` is
skipped; a fit stage with a ``last.ckpt`` but no ``done.json`` resumes from it. Stages run in this
process, one after another.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import yaml

from .memory import TreePeak, peak_rss_mib, reset_peak_rss
from .plan import EMBEDDED_COSTS, PROFILE_NAMES, PROFILES, Stage, expected_seconds, merge, plan

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


HUB_DATASET, LOCAL_FILE = "lit_align.data.sources.HubDataset", "lit_align.data.sources.LocalFile"


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def stand_in(node, stand_ins: dict):
    """``node`` with every hub name of ``stand_ins`` replaced: a model name by its stand-in, a
    ``HubDataset`` by a ``LocalFile`` of the stand-in path (relative paths are from the repository root)."""
    if isinstance(node, list):
        return [stand_in(item, stand_ins) for item in node]
    if not isinstance(node, dict):
        return stand_ins.get(node, node) if isinstance(node, str) else node
    name = (node.get("init_args") or {}).get("name")
    if node.get("class_path") == HUB_DATASET and name in stand_ins:
        path = ROOT / stand_ins[name]  # an absolute stand-in path stays as it is
        if not path.is_file():
            raise FileNotFoundError(f"the local stand-in for dataset {name!r} is missing: {path}")
        return {"class_path": LOCAL_FILE, "init_args": {"path": str(path)}}
    return {key: stand_in(value, stand_ins) for key, value in node.items()}


def _retarget(config: dict, stage: Stage, folder: Path, checkpoint_every: int) -> dict:
    """Point every output of a LightningCLI config into ``folder``; merge per-callback overrides."""
    overrides = dict(stage.overrides)
    by_callback = overrides.pop("callbacks", {})
    config = merge(config, overrides)
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)  # where a run without a logger saves its config.yaml
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"] = merge(trainer["logger"], {"init_args": {"save_dir": str(folder), "name": "logs"}})
    callbacks = []
    for callback in trainer.get("callbacks") or []:
        name = _short(callback["class_path"])
        callback = merge(callback, {"init_args": by_callback.get(name, {})})
        args = callback.setdefault("init_args", {})
        if name == "HFExport":
            args["dirpath"] = str(folder / "export")
        elif name == "VerifierEval":
            args["output"] = str(folder / "eval.json")
        elif name == "ModelCheckpoint":
            continue  # replaced by the resumable one below
        callbacks.append(callback)
    if stage.command == "fit":
        trainer["enable_checkpointing"] = True
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
            "dirpath": str(folder / "checkpoints"), "save_last": True, "save_top_k": 0,
            "every_n_train_steps": checkpoint_every}})
    trainer["callbacks"] = callbacks
    init = config.get("model", {}).get("init_args", {})
    if "output_dir" in init or stage.command == "test":
        init["output_dir"] = str(folder)
    if "reference_cache_dir" in init:
        init["reference_cache_dir"] = str(folder / "reference_logps")
    return config


def declares_sampling(class_path: str | None) -> bool:
    """Whether the class ``class_path`` names says it samples from its module's rollout engine (its
    ``uses_rollout_engine``, as ``lit_align.policy.PolicyBase`` declares it); a class that does not say
    so does not sample."""
    if not class_path:
        return False
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"class_path {class_path!r}: the study runner needs the full import path (module.Class)")
    return bool(getattr(getattr(importlib.import_module(module), name), "uses_rollout_engine", False))


def samples(config: dict) -> bool:
    """Whether a LightningCLI stage draws samples: its module, or one of its callbacks (an evaluation of
    the module's policy during fit), declares that it uses the rollout engine."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    return any(declares_sampling(node.get("class_path")) for node in [config.get("model") or {}, *callbacks])


def with_rollout(config: dict, command: str, rollout: dict | None) -> dict:
    """``config`` sampling through ``rollout`` (a ``class_path`` dict, e.g. ``configs/rollout/vllm.yaml``'s
    engine): the pairs tool's own ``rollout``, or the module's where the stage samples (``samples``)."""
    if rollout is None:
        return config
    # the engine replaces the stage's own, whole: an HFGenerate's settings (e.g. ``max_batch_rows``) are not
    # arguments of another engine, so they must not be merged into it
    if command == "pairs":
        config = copy.deepcopy(config)
        config["rollout"] = copy.deepcopy(rollout)
        return config
    if not samples(config):
        return config
    config = merge(config, {"model": {"init_args": {}}})
    config["model"]["init_args"]["rollout"] = copy.deepcopy(rollout)
    return config


def provenance() -> dict:
    """Where a run's stages ran: the repository's commit (and whether the tree had uncommitted changes)
    and the machine (CPU model, cores, memory, bf16 units), for the results page."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    from lit_align.modeling.hardware import cpu_has_bf16

    model, memory = "unknown CPU", None
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), model)
        memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")), None)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{model}, {cores} cores" + (f", {memory / 2**20:.0f} GiB" if memory else "")
    machine += ", bf16 units" if cpu_has_bf16() else ", no bf16 units"
    status = git("status", "--porcelain", "--untracked-files=no")
    # outside a git checkout (a release archive) neither is known: recorded as such, not as a commit "None"
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(status) if status is not None else None,
            "machine": machine}


def engine_of(config: dict, command: str) -> str | None:
    """The sampling engine a stage's config uses (the class name; ``HFGenerate`` where none is set), or
    None for a stage that samples nothing (a reward model, SFT or DPO without an evaluation, a split)."""
    if command == "split":
        return None
    if command == "pairs":
        rollout = config.get("rollout")
    elif samples(config):
        rollout = ((config.get("model") or {}).get("init_args") or {}).get("rollout")
    else:
        return None
    if rollout is None:
        return "HFGenerate"
    return _short(rollout["class_path"]) if isinstance(rollout, dict) else str(rollout)


def stage_peak_rss_mib() -> float | None:
    """This process's peak RSS since the last ``reset_peak_rss`` (``memory``), in MiB; None where the
    kernel does not report it."""
    try:
        peak = peak_rss_mib()
    except OSError:
        return None
    return None if math.isnan(peak) else peak


def split_by_prompt(source: Path, folder: Path, parts: list[str]) -> dict[str, int]:
    """Deal the records of the JSONL file ``source`` (one per prompt, e.g. a prompt's preference pair)
    in turn into ``folder/parts[0]``, ``folder/parts[1]``, ...; returns the count written to each."""
    if not source.is_file():
        raise FileNotFoundError(f"nothing to split: {source} is missing (did the stage that writes it run?)")
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    counts = {}
    for i, part in enumerate(parts):
        chunk = lines[i :: len(parts)]
        if not chunk:
            raise ValueError(f"{source} has {len(lines)} records: too few to give each of {parts} one")
        (folder / part).write_text("\n".join(chunk) + "\n")
        counts[part] = len(chunk)
    return counts


def stage_config(stage: Stage, folder: Path, checkpoint_every: int = 20, rollout: dict | None = None,
                 resolve: bool = True) -> dict:
    """The full config a stage runs with: its base config, its overrides (and, with ``resolve``, those
    its earlier stages' results decide), outputs in ``folder``."""
    if stage.command == "split":
        return {"source": stage.config, **stage.overrides}
    if resolve and stage.resolve is not None:
        stage = dataclasses.replace(stage, overrides=merge(stage.overrides, stage.resolve()), resolve=None)
    base = yaml.safe_load((ROOT / stage.config).read_text())
    if stage.command == "pairs":
        config = merge(base, stage.overrides)
        config["output"] = str(folder / "pairs.jsonl")
        if config.get("sft_output"):
            config["sft_output"] = str(folder / "sft.jsonl")
        return with_rollout(config, stage.command, rollout)
    config = stand_in(_retarget(base, stage, folder, checkpoint_every), stage.stand_ins)
    return with_rollout(config, stage.command, rollout)


# Profiles whose every stage runs in a child process: the runner then holds only itself while a stage runs.
# Run in the runner, a training stage left its memory behind (the allocator keeps what it freed): in the
# embedded run that started at f567861 the runner held ~4.5 GB after DPO, so the RLOO stage's child (6.5 GB)
# put the machine at 11 GB. The test profiles keep HF stages in the runner, which saves a start-up a stage.
CHILD_EVERY_STAGE = {"embedded", "paper"}


def runs_in_child(engine: str | None, every: bool = False) -> bool:
    """Whether a stage runs in a process of its own: always with ``every`` (``CHILD_EVERY_STAGE``), else when
    it samples with an engine other than HF ``generate``. vLLM's in-process engine leaves memory (and state)
    behind after it is shut down, and so does a training stage, so the stages after it would carry it; a child
    process returns all of it and reports the stage's own peak."""
    return every or engine not in (None, "HFGenerate")


def run_child(name: str, module: str, args: list[str]) -> float | None:
    """Run ``python -m module args`` (a stage) in a child process in this directory and environment; returns
    the child's own peak RSS in MiB (None where the kernel does not report it). A failing child stops the
    run with its exit status."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lit_align_stage_") as tmp:
        peak_file = Path(tmp) / "peak_kib"
        child = (Path(__file__).resolve().parent / "child.py").read_text()
        command = [sys.executable, "-c", child, str(peak_file), module, *args]
        code = subprocess.run(command).returncode
        if code != 0:
            raise RuntimeError(f"stage {name} failed in its child process (exit status {code}): "
                               f"python -m {module} {' '.join(args)}")
        text = peak_file.read_text().strip() if peak_file.is_file() else ""
    return int(text) / 1024 if text else None


def run_stage(stage: Stage, folder: Path, where: dict, checkpoint_every: int = 20, rollout: dict | None = None,
              every_in_child: bool = False) -> float:
    """Run one stage (skipped when ``done.json`` exists); returns its wall time in seconds. ``where``
    (``provenance()``) is recorded in its ``done.json``."""
    done = folder / "done.json"
    if done.is_file():
        seconds = json.loads(done.read_text())["seconds"]
        print(f"[reproduce] {stage.name}: done already ({seconds:.0f} s), skipped")
        return 0.0
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    config = stage_config(stage, folder, checkpoint_every, rollout)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    engine = engine_of(config, stage.command)
    print(f"[reproduce] {stage.name}: {stage.command} --config {config_file}" + (f" (samples with {engine})" if engine else ""))
    own_peak = reset_peak_rss()
    start = time.perf_counter()
    in_child = stage.command != "split" and runs_in_child(engine, every_in_child)
    child_peak = None
    with TreePeak() as machine:  # the runner and any child at the same moment, summed
        if stage.command == "split":
            counts = split_by_prompt(Path(stage.config), folder, stage.overrides["parts"])
            print(f"[reproduce] {stage.name}: {counts}")
        else:
            if stage.command == "pairs":
                module, args = "lit_align.pairs", ["--config", str(config_file)]
            else:
                module, args = "lit_align", [stage.command, "--config", str(config_file)]
                last = folder / "checkpoints" / "last.ckpt"
                if stage.command == "fit" and last.is_file():
                    print(f"[reproduce] {stage.name}: resuming from {last}")
                    args += ["--ckpt_path", str(last)]
            if in_child:
                child_peak = run_child(stage.name, module, args)
            elif module == "lit_align.pairs":
                from lit_align.pairs import main as pairs_main

                pairs_main(args)
            else:
                from lit_align.cli import main as cli_main

                argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads only ``args``, not this tool's own options
                try:
                    cli_main(args)
                finally:
                    sys.argv = argv
    gc.collect()
    seconds = time.perf_counter() - start
    # the stage's own peak RSS where the kernel let the peak be reset, else the run's so far (said by the flag)
    if in_child:  # the child's own high-water mark: the stage alone
        peak, own_peak = child_peak, child_peak is not None
    else:
        peak = stage_peak_rss_mib()
    record = {"stage": stage.name, "label": stage.label, "seconds": seconds, "engine": engine,
              "peak_rss_mib": peak, "peak_rss_of_stage_alone": own_peak, "machine_peak_rss_mib": machine.peak_mib}
    done.write_text(json.dumps(record | where, indent=2) + "\n")
    return seconds


def run(profile: str, out: str | None = None, results: str | None = None, only: list[str] | None = None,
        checkpoint_every: int = 20, dry_run: bool = False, rollout_config: str | None = None, data: str | None = None,
        report_only: bool = False) -> list[Stage]:
    """Run (or, with ``dry_run``, only write the configs of) every stage of ``profile``; then copy the stages'
    outcomes to ``data`` (when given) and write results.

    ``rollout_config``: a file such as ``configs/rollout/vllm.yaml``; every stage that samples uses its engine.
    ``report_only``: run nothing; write the results from ``out`` as it is (e.g. a copy made by ``data``).
    """
    out_dir = Path(out or f"outputs/reproduce/{profile}")
    rollout = None
    if rollout_config:
        rollout = yaml.safe_load(Path(rollout_config).read_text())["model"]["init_args"]["rollout"]
    stages = plan(profile, str(out_dir))
    if report_only:
        if not any((out_dir / s.name / "done.json").is_file() for s in stages):
            raise SystemExit(f"--report-only: {out_dir} holds no finished stage of the {profile} profile (no */done.json)")
        if results:
            from .report import write_results

            write_results(profile, stages, out_dir, Path(results))
        return stages
    where = None if dry_run else provenance()  # the commit and machine: looked up once per run, not per stage
    if dry_run:
        print_expected(profile, stages, only, (rollout or {}).get("class_path", "HFGenerate").rsplit(".", 1)[-1])
    for stage in stages:
        if only and stage.name not in only:
            continue
        if dry_run:
            folder = out_dir / stage.name
            folder.mkdir(parents=True, exist_ok=True)
            config = stage_config(stage, folder, checkpoint_every, rollout, resolve=False)
            (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            continue
        run_stage(stage, out_dir / stage.name, where, checkpoint_every, rollout, profile in CHILD_EVERY_STAGE)
    if data and not dry_run:
        from .report import collect

        print(f"[reproduce] copied {len(collect(stages, out_dir, Path(data)))} outcome files to {data}")
    if results and not dry_run:
        from .report import write_results

        write_results(profile, stages, out_dir, Path(results))
    return stages


def print_expected(profile: str, stages: list[Stage], only: list[str] | None = None, engine: str = "HFGenerate") -> float | None:
    """Print each stage's expected wall time from the unit costs measured with ``engine`` (``plan.EMBEDDED_COSTS``)
    and the total; returns the total in seconds (None where the profile has no measured costs)."""
    if profile != "embedded":
        print(f"[reproduce] expected times: no measured unit costs for the {profile} profile"
              + (" (GPU figures: docs/results.md, 'The paper profile on one H100')" if profile == "paper" else ""))
        return None
    if engine not in EMBEDDED_COSTS:
        print(f"[reproduce] expected times: no measured unit costs for sampling with {engine}"
              f" (measured: {', '.join(sorted(EMBEDDED_COSTS))})")
        return None
    total = 0.0
    for stage in stages:
        if only and stage.name not in only:
            continue
        seconds = expected_seconds(stage, PROFILES[profile], engine)
        total += seconds or 0.0
        print(f"[reproduce] {stage.name:36s} expected {'?' if seconds is None else f'{seconds:7.0f} s'}")
    print(f"[reproduce] expected total: {total / 60:.1f} min on a quiet 2-core CPU (float32, sampling with {engine};"
          " costs measured on a 2-core AMD EPYC)")
    return total


def main(argv: list[str] | None = None) -> list[Stage]:
    parser = argparse.ArgumentParser(description="Reproduce the study's two tracks, stage by stage.")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="embedded",
                        help="embedded: offline on CPU; smoke: tiny models, seconds; paper: configs/paper/ on a GPU; "
                             "paper-smoke: every configs/paper/ run on tiny stand-ins, on CPU")
    parser.add_argument("--out", help="output root (default outputs/reproduce/<profile>)")
    parser.add_argument("--results", default="docs/results.md",
                        help="markdown file whose reproduction section is (re)written; '' to skip")
    parser.add_argument("--only", nargs="*", help="run only these stages (their inputs must exist)")
    parser.add_argument("--checkpoint-every", type=int, default=20, help="optimiser steps between checkpoints")
    parser.add_argument("--dry-run", action="store_true", help="write every stage's config.yaml, run nothing")
    parser.add_argument("--rollout-config", help="sample every stage through this engine, e.g. configs/rollout/vllm.yaml")
    parser.add_argument("--data", default=None,
                        help="copy every stage's outcomes (small JSON/CSV, no weights) here after the run "
                             "(default for the embedded profile: docs/study_data/embedded; '' to skip)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the results block from --out (e.g. --out docs/study_data/embedded)")
    args = parser.parse_args(argv)
    data = args.data if args.data is not None else ("docs/study_data/embedded" if args.profile == "embedded" else "")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args.profile, args.out, args.results or None, args.only, args.checkpoint_every, args.dry_run,
               args.rollout_config, data or None, args.report_only)

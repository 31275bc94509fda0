"""Two-process DDP (gloo, CPU) trains exactly like one process with the same global batch.

The data module gives rank r the r-th half of each global batch and scales the SFT loss by the
global token count, so after DDP averages the gradients every step equals one process on the whole
global batch. Tolerance: 1e-5 on every loss and trained weight (all-reduce sums in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
ULTRAFEEDBACK = ROOT / "tests" / "fixtures" / "ultrafeedback_binarized_sample.jsonl"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}  # dropout would draw different masks per rank
METHODS = {
    "SFT": ({"class_path": "lit_align.methods.SFT", "init_args": {"lora": LORA}},
            {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 16}}),
    "DPO": ({"class_path": "lit_align.methods.DPO", "init_args": {"lora": LORA, "reference": "adapter_off"}},
            {"class_path": "lit_align.data.sources.LocalFile", "init_args": {"path": str(ULTRAFEEDBACK)}}),
}
GLOBAL_BATCH, STEPS = 4, 5


def _config(method: str, folder: Path, devices: int) -> Path:
    model, source = METHODS[method]
    config = {
        "seed_everything": 5,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "precision": "32-true", "max_steps": STEPS, "logger": False, "enable_checkpointing": False,
            "default_root_dir": str(folder),  # the CLI saves its config.yaml there, not in the working folder
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "fault_injection.GlobalLossCurve", "init_args": {"path": str(folder / "losses.json")}},
                {"class_path": "lit_align.lightning.callbacks.HFExport", "init_args": {"dirpath": str(folder / "export")}},
            ],
        },
        "model": {"class_path": model["class_path"], "init_args": {"model": "tiny:causal-lm", **model["init_args"]}},
        "data": {"train": source, "batch_size": GLOBAL_BATCH // devices, "max_length": 1024},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def _metrics(folder: Path) -> list[dict]:
    import csv

    return list(csv.DictReader((folder / "logs" / "version_0" / "metrics.csv").open()))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "export" / "model.safetensors")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(method, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # the loss probe callback
    main(["fit", "--config", str(_config(method, tmp_path / "one", devices=1))])
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(_config(method, tmp_path / "two", devices=2))],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "distributed_backend=gloo" in proc.stderr, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "losses.json").read_text()) for d in ("one", "two"))
    assert len(one) == len(two) == STEPS
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-5)
    assert len(set(one)) > 1  # the loss moved: the runs trained
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-5, msg=name)


def test_online_rl_with_dynamic_sampling_steps_in_lockstep_under_two_process_ddp(tmp_path):
    """Each rank samples its own prompts, so their groups with signal differ (``HalfFlat`` makes half of
    the prompts flat): the ranks must still agree on when a generation batch is full and on its shape,
    or one waits for the other's all-reduce forever. Two gloo processes, GRPO with dynamic sampling,
    two optimiser steps per generation batch in micro-batches of one sequence."""
    config = {
        "seed_everything": 5,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 4, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "fault_injection.RunRecord", "init_args": {"path": str(tmp_path / "run.json")}},
                                  *[{"class_path": "fault_injection.SaveAtBatch",
                                     "init_args": {"batch": b, "path": str(tmp_path / f"batch{b}.ckpt")}} for b in (1, 2, 3)]]},
        "model": {"class_path": "lit_align.methods.GRPO", "init_args": {
            "model": "tiny:causal-lm", "lora": LORA, "num_generations": 2, "dynamic_sampling": True, "max_draws": 3,
            "steps_per_generation": 2, "micro_batch_size": 1, "reward": {"class_path": "fault_injection.HalfFlat"},
            "generation": {"max_new_tokens": 6, "temperature": 1.0}}},
        "data": {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                           "init_args": {"num_problems": 40, "with_traces": False}}, "batch_size": 2},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(tmp_path / "config.yaml")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["steps"][-1] == 4
    assert any(a == b for a, b in zip(record["steps"], record["steps"][1:])), "no batch only drew: the test says nothing"
    # a checkpoint holds every rank's dynamic-sampling buffer and counters, each rank's own
    states = [torch.load(tmp_path / f"batch{b}.ckpt", weights_only=True)["online_rl"]["ranks"] for b in (1, 2, 3)]
    assert all(len(ranks) == 2 for ranks in states)
    waiting = [ranks for ranks in states if all(r["dynamic"]["draws"] > 0 for r in ranks)]
    assert waiting, "no checkpoint between draws: the test says nothing"
    prompts = [[q for part in r["dynamic"]["pending"] + r["dynamic"]["set_aside"] for q in part["prompts"]] for r in waiting[0]]
    assert prompts[0] and prompts[1] and prompts[0] != prompts[1], "each rank keeps the groups it drew"


def _online_config(folder: Path, devices: int, **model) -> Path:
    config = {
        "seed_everything": 5,
        "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
                    "precision": "32-true", "max_steps": 4, "enable_checkpointing": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder), "name": "logs"}},
                    "enable_progress_bar": False, "default_root_dir": str(folder),
                    "callbacks": [{"class_path": "lit_align.lightning.callbacks.HFExport",
                                   "init_args": {"dirpath": str(folder / "export")}}]},
        "model": {"class_path": "lit_align.methods.GRPO", "init_args": {
            "model": "tiny:causal-lm", "lora": LORA, "num_generations": 2, "beta": 0.04, "loss_type": "dapo", "scale_rewards": "batch",
            "steps_per_generation": 2, "micro_batch_size": 1, "rollout": {"class_path": "fault_injection.PromptSeededGenerate"},
            "reward": {"class_path": "fault_injection.DistinctCharacters"},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
            "generation": {"max_new_tokens": 8, "temperature": 1.0}} | model},
        "data": {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                           "init_args": {"num_problems": 16, "with_traces": False}}, "batch_size": 4 // devices},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def test_online_rl_under_two_process_ddp_matches_one_process_with_the_same_prompts(tmp_path, monkeypatch):
    """GRPO with the DAPO token mean over the optimiser step, two steps per generation batch (so the
    clipped ratio is live) in micro-batches of one sequence, rewards scaled by the batch's std (the global
    batch's: every rank's rewards), and a k3 KL to the reference: two gloo ranks
    with 2 prompts each end at the weights of one process with the same 4 prompts. The engine makes a
    prompt's completions a function of the prompt (``PromptSeededGenerate``) and their lengths differ
    between ranks, so a rank that divided by its own token count instead of the ranks' mean, or scaled by
    its own rewards' std, would move differently. Tolerance 1e-5 (all-reduce sums in another order)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # the scripted engine and the reward
    main(["fit", "--config", str(_online_config(tmp_path / "one", devices=1))])
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(_online_config(tmp_path / "two", devices=2))],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from lit_align.modeling import models

    start = models.load_causal_lm("tiny:causal-lm").state_dict()
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    assert any(not torch.equal(w1[n], start[n]) for n in w1 if n in start), "the one-process run did not train"
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-5, msg=name)
    # the logged metrics are over every rank's samples: those of the one process with the same prompts
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == ["2", "4"]
    for name in ("train/reward_mean", "train/reward_std", "train/drawn_reward_mean", "train/advantage_abs_mean",
                 "train/completion_length", "train/zero_variance_groups", "train/group_reward_std", "train/kl",
                 "train/entropy", "train/prompts_seen", "train/completions_seen", "train/clipped_share"):
        got, want = [float(r[name]) for r in two], [float(r[name]) for r in one]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), name
    assert float(one[-1]["train/completions_seen"]) == 2 * 4 * 2  # 2 generation batches of 4 prompts x 2


def test_ranks_that_skip_different_flat_groups_stay_in_step_and_match_one_process(tmp_path, monkeypatch):
    """No KL and a reward flat for about half of the prompts (``HalfFlat``): each rank skips the passes of
    its own flat groups, so in some optimiser step one rank has a group to learn from and the other none.
    Every backward all-reduces under DDP, so the rank with fewer passes must make up the difference (with
    passes that add zero) or the ranks' collectives fall out of step; the weights must end where one
    process with the same 4 prompts ends."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    settings = {"beta": 0.0, "scale_rewards": "group", "reward": {"class_path": "fault_injection.HalfFlat"}}
    main(["fit", "--config", str(_online_config(tmp_path / "one", devices=1, **settings))])
    one = _metrics(tmp_path / "one")
    flat = [float(r["train/zero_variance_groups"]) for r in one]
    assert any(0 < f < 1 for f in flat), f"no step mixed flat and varied groups ({flat}): the test says nothing"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config",
                           str(_online_config(tmp_path / "two", devices=2, **settings))],
                          env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-5, msg=name)
    assert [float(r["train/zero_variance_groups"]) for r in _metrics(tmp_path / "two")] == flat


@pytest.mark.slow
def test_two_ranks_keep_one_curriculum_posterior_and_draw_disjoint_shares(tmp_path):
    """GRPO with the self-paced curriculum (adaptive samples per prompt) and dynamic sampling on two gloo
    processes: every rank books every rank's outcomes, so both end with the same posterior, which counts
    every sample both drew; within each draw their prompts differ."""
    config = {
        "seed_everything": 5,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 4, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "fault_injection.RecordCurriculum",
                                   "init_args": {"path": str(tmp_path / "curriculum")}}]},
        "model": {"class_path": "lit_align.methods.GRPO", "init_args": {
            "model": "tiny:causal-lm", "lora": LORA, "num_generations": 4, "dynamic_sampling": True, "max_draws": 2,
            "reward": {"class_path": "fault_injection.HalfFlat"}, "generation": {"max_new_tokens": 6, "temperature": 1.0}}},
        "data": {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                           "init_args": {"num_problems": 40, "with_traces": False}}, "batch_size": 2,
                 "curriculum": {"class_path": "lit_align.data.curriculum.SelfPaced", "init_args": {
                     "success_threshold": 0.8, "adaptive_k": True, "k_min": 2, "k_max": 6, "k_unit": 2}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(tmp_path / "config.yaml")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"curriculum.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["curriculum"] == ranks[1]["curriculum"]
    state = ranks[0]["curriculum"]
    drawn = sum(sum(b["sizes"]) for rank in ranks for b in rank["batches"])
    booked = sum(state["successes"]) + sum(state["failures"]) + sum(o[2] + o[3] for o in state["pending"])
    assert booked == drawn > 0
    for mine, theirs in zip(*(rank["batches"] for rank in ranks)):
        assert mine["draw"] == theirs["draw"] and not set(mine["problems"]) & set(theirs["problems"])

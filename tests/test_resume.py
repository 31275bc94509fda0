"""Kill a run mid-epoch (SIGKILL, SIGTERM), resume from its checkpoint: the weights equal an uninterrupted run's.

The interrupted run is a real process killed by a signal; the uninterrupted and resumed runs run here.
Every method resumes with a LoRA policy whose dropout draws random numbers, so RNG state matters, and
each run crosses an epoch boundary, so the data position matters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
ULTRAFEEDBACK = ROOT / "tests" / "fixtures" / "ultrafeedback_binarized_sample.jsonl"
LORA = {"r": 4, "alpha": 8, "dropout": 0.1}

METHODS = {
    "SFT": ({"class_path": "lit_align.methods.SFT", "init_args": {"lora": LORA}},
            {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 10}}}),
    "DPO": ({"class_path": "lit_align.methods.DPO", "init_args": {"lora": LORA, "reference": "adapter_off"}},
            {"train": {"class_path": "lit_align.data.sources.LocalFile", "init_args": {"path": str(ULTRAFEEDBACK)}}}),
    "RLOO": ({"class_path": "lit_align.methods.RLOO", "init_args": {
                "lora": LORA, "reference": "adapter_off", "rloo_k": 2,
                "reward": {"class_path": "lit_align.tasks.countdown.CountdownVerifier"},
                "generation": {"max_new_tokens": 6, "temperature": 1.0}}},
             {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                        "init_args": {"num_problems": 10, "with_traces": False}}}),
}


BATCHES_PER_EPOCH = {"SFT": 5, "DPO": 6, "RLOO": 5}  # 10, 12 and 10 records, 2 per batch


def _config(method: str, folder: Path, max_steps: int, extra_callbacks: list | None = None) -> Path:
    model, data = METHODS[method]
    model = {"class_path": model["class_path"], "init_args": {"model": "tiny:causal-lm", **model["init_args"]}}
    config = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": max_steps, "logger": False,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "dirpath": str(folder / "checkpoints"), "every_n_train_steps": 2, "save_top_k": 0,
                "save_last": True, "save_on_exception": True}}] + (extra_callbacks or []),
            "default_root_dir": str(folder),
        },
        "model": model,
        "data": {**data, "batch_size": 2, "max_length": 1024},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _trained(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    return {k: v for k, v in state.items() if "lora_" in k}


def _killed_run(config: Path, folder: Path, step: int, signal_name: str) -> subprocess.CompletedProcess:
    kill = {"class_path": "fault_injection.KillAfterStep", "init_args": {"step": step, "signal_name": signal_name}}
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"].append(kill)
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); from lit_align.cli import main; main()",
                           "fit", "--config", str(config)], env=env, capture_output=True, text=True, timeout=300, cwd=folder)


@pytest.mark.parametrize("method, signal_name, kill_at", [
    ("SFT", "SIGKILL", 7), ("DPO", "SIGKILL", 7), ("RLOO", "SIGKILL", 7), ("SFT", "SIGTERM", 7),
])
def test_killed_and_resumed_run_equals_uninterrupted(method, signal_name, kill_at, tmp_path):
    max_steps = 9  # 5 or 6 batches per epoch: the kill lands in the second epoch
    main(["fit", "--config", str(_config(method, tmp_path / "whole", max_steps))])
    whole = _trained(tmp_path / "whole")
    assert whole, "no LoRA weights found in the checkpoint"

    broken = tmp_path / "broken"
    proc = _killed_run(_config(method, broken, max_steps), broken, kill_at, signal_name)
    if signal_name == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    else:  # Lightning stops at the end of the step, saves, and exits
        assert "Received SIGTERM" in proc.stderr and "saved checkpoint" in proc.stderr, proc.stderr[-3000:]
    saved = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    # SIGKILL loses the steps since the last periodic checkpoint; SIGTERM checkpoints the step it stopped at.
    step = saved["global_step"]
    assert step == (6 if signal_name == "SIGKILL" else kill_at)
    per_epoch = BATCHES_PER_EPOCH[method]
    assert saved["AlignDataModule"]["position"] == [(step - 1) // per_epoch, (step - 1) % per_epoch + 1]

    cli = main(["fit", "--config", str(_config(method, broken, max_steps)), "--ckpt_path", str(broken / "checkpoints" / "last.ckpt")])
    assert cli.trainer.global_step == max_steps
    resumed = _trained(broken)
    assert resumed.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)

"""Rollout engines under a real FSDP run: two CPU processes over gloo, each holding a shard of the policy
(``fault_injection.CPUFSDP``: Lightning's FSDP strategy refuses CPUs, PyTorch's FSDP does not).

Lightning runs ``test_step``/``predict_step``/``training_step`` inside the FSDP root's forward, where FSDP
refuses to gather full weights ("Cannot manually unshard parameters during forward/backward"), so an
engine with weights of its own is started (and pushed weights) in the batch-start hooks instead. The
engine here is a stand-in that copies the gathered weights into a plain model (``CopyingEngine``); FSDP's
gathering, and the places the methods call it from, are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
PROMPTS = {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 8, "with_traces": False}}


def _run(folder: Path, command: str, model: dict, data: dict) -> subprocess.CompletedProcess:
    config = {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": {"class_path": "fault_injection.CPUFSDP"},
                    "precision": "32-true", "max_steps": 2, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "default_root_dir": str(folder),
                    "callbacks": [{"class_path": "fault_injection.EngineRecord",
                                   "init_args": {"path": str(folder / "engine.json")}}]},
        "model": model,
        "data": data,
    }
    if command == "test":
        del config["trainer"]["max_steps"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lit_align", command, "--config", str(folder / "config.yaml")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=folder)


def test_an_evaluation_under_fsdp_starts_its_engine_from_the_gathered_full_weights(tmp_path):
    """Best-of-N under FSDP: the engine copies every weight, whole and under its Hugging Face name, before
    the first test step (inside it, FSDP would refuse the gathering)."""
    model = {"class_path": "lit_align.evaluation.best_of_n.BestOfN", "init_args": {
        "model": "tiny:causal-lm", "lora": LORA, "n_values": [1, 2],
        "verifier": {"class_path": "lit_align.tasks.countdown.CountdownVerifier"},
        "rollout": {"class_path": "fault_injection.CopyingEngine"},
        "generation": {"max_new_tokens": 6, "temperature": 1.0}, "output_dir": str(tmp_path / "bon")}}
    proc = _run(tmp_path, "test", model, {"test": PROMPTS, "val_batch_size": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "engine.json").read_text())
    from lit_align.modeling import models

    full = models.load_causal_lm("tiny:causal-lm").state_dict()
    assert record["copied"] == sorted(full)  # Hugging Face names: no FSDP or checkpoint wrapper prefixes
    assert record["numel"] == sum(v.numel() for v in full.values())  # whole tensors, not this rank's shard


def test_online_rl_refuses_fsdp_and_says_why(tmp_path):
    model = {"class_path": "lit_align.methods.GRPO", "init_args": {
        "model": "tiny:causal-lm", "lora": LORA, "num_generations": 2,
        "reward": {"class_path": "fault_injection.DistinctCharacters"},
        "generation": {"max_new_tokens": 6, "temperature": 1.0}}}
    proc = _run(tmp_path, "fit", model, {"train": PROMPTS, "batch_size": 2})
    assert proc.returncode != 0
    assert "GRPO cannot train under FSDP" in proc.stderr and "Use DDP" in proc.stderr, proc.stderr[-2000:]

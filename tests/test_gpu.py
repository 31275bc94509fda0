"""What only a CUDA GPU can check: bf16-true training, FSDP, and QLoRA's 4-bit NF4 base.

Each test is a real run of two SFT optimiser steps on a tiny model through the CLI, with the repository's
own trainer override (configs/trainer/gpu_bf16_true.yaml, fsdp.yaml on one device, qlora.yaml) on top
of a small base config, and asserts what the override promises: the loss is finite, the weights moved,
and the parameters are in the dtype or the 4-bit layout it asks for. Marked ``gpu``: tests/conftest.py
skips them without CUDA (on CPU, tests/test_configs.py only checks that these overrides parse and compose).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lit_align.modeling import tiny
from lit_align.cli import main

pytestmark = pytest.mark.gpu

TRAINER = Path(__file__).resolve().parents[1] / "configs" / "trainer"
DEVICE = "cuda"
STEPS = 2


class TrainingProbe(L.Callback):
    """What training left in the policy, read before the strategy's teardown moves a one-device model to the
    CPU: the devices of its parameters, their dtypes, and which of them changed since training started."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {n: p.detach().clone() for n, p in pl_module.policy.named_parameters()}

    def on_train_end(self, trainer, pl_module) -> None:
        params = dict(pl_module.policy.named_parameters())
        self.devices = {p.device.type for p in params.values()}
        self.dtypes = {p.dtype for p in params.values()}
        self.changed = [n for n, p in params.items() if not torch.equal(p.detach(), self.start[n])]


def _base_config(folder: Path, model: str = "tiny:causal-lm", export: bool = True) -> Path:
    """SFT of ``model`` on generated Countdown traces for STEPS steps; the hardware comes from an override."""
    callbacks = [{"class_path": "tests.test_gpu.TrainingProbe"}]
    if export:
        callbacks.append({"class_path": "lit_align.lightning.callbacks.HFExport", "init_args": {"dirpath": str(folder / "export")}})
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": STEPS, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "limit_val_batches": 0, "num_sanity_val_steps": 0,
            "default_root_dir": str(folder), "callbacks": callbacks,
        },
        "model": {"class_path": "lit_align.methods.SFT", "init_args": {
            "model": model,
            # A large step, so one update shows in bf16 weights (an ulp of a weight near 0.02 is ~1e-4).
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.0}},
        }},
        "data": {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 8}},
                 "batch_size": 2, "max_length": 512},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(base: Path, override: str, *args: str):
    """Train; returns the CLI and the TrainingProbe's findings."""
    cli = main(["fit", "--config", str(base), "--config", str(TRAINER / override), *args])
    assert cli.trainer.global_step == STEPS
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss > 0, loss
    probe = next(c for c in cli.trainer.callbacks if type(c).__name__ == "TrainingProbe")
    assert probe.devices == {DEVICE}, probe.devices  # trained on the GPU, every parameter
    return cli, probe


def _start_weights() -> dict[str, torch.Tensor]:
    """The tiny model's weights before training (tiny:causal-lm is built from a fixed seed)."""
    return {k: v.float() for k, v in tiny.tiny_causal_lm(tiny.tiny_tokenizer()).state_dict().items()}


def _exported_weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "export", dtype=torch.float32)
    return {k: v.float() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k].to(before[k].device))]


def test_bf16_true_trains_with_bf16_weights_and_optimiser_state(tmp_path):
    cli, probe = _fit(_base_config(tmp_path), "gpu_bf16_true.yaml", "--model.init_args.dtype", "bfloat16")
    params = dict(cli.model.policy.named_parameters())
    assert probe.dtypes == {torch.bfloat16}
    assert probe.changed == list(params), "every weight tensor moved, in bf16"
    states = [s for s in cli.trainer.optimizers[0].state.values() if s]
    assert len(states) == len(params)  # every weight was updated at least once
    assert {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    start = _start_weights()
    now = {k: v.detach().float().cpu() for k, v in cli.model.policy.state_dict().items()}
    bf16_start = {k: v.to(torch.bfloat16).float() for k, v in start.items()}
    assert _changed(bf16_start, now) == list(start), "training started from the tiny model's weights in bf16"
    assert _changed(start, _exported_weights(tmp_path)) == list(start)


def test_fsdp_on_one_gpu_wraps_each_block_and_trains(tmp_path):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel

    from lit_align.lightning.fsdp import TransformerFSDP

    cli, probe = _fit(_base_config(tmp_path), "fsdp.yaml", "--trainer.devices", "1")
    assert isinstance(cli.trainer.strategy, TransformerFSDP) and cli.trainer.world_size == 1
    wrapped = cli.trainer.strategy.model
    units = [m for m in wrapped.modules() if isinstance(m, FullyShardedDataParallel)]
    # FSDP's .module is the block itself, inside any activation-checkpointing wrapper.
    blocks = [u for u in units if type(u.module).__name__ == "LlamaDecoderLayer"]
    num_layers = cli.model.policy.config.num_hidden_layers
    assert len(blocks) == num_layers and len(units) == num_layers + 1, [type(u.module).__name__ for u in units]
    assert sum(isinstance(m, CheckpointWrapper) for m in wrapped.modules()) == num_layers  # activation checkpointing
    assert probe.changed and len(probe.changed) == len(probe.start)
    # HFExport gathered the sharded parameters: the whole trained model, every tensor moved.
    start = _start_weights()
    assert _changed(start, _exported_weights(tmp_path)) == list(start)


def test_qlora_trains_lora_adapters_on_a_frozen_nf4_base(tmp_path):
    import bitsandbytes as bnb

    base = tmp_path / "base_model"
    tokenizer = tiny.tiny_tokenizer()
    tiny.tiny_causal_lm(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)

    cli, probe = _fit(_base_config(tmp_path, model=str(base), export=False), "qlora.yaml")
    policy = cli.model.policy
    quantized = {n: m for n, m in policy.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    num_layers = policy.config.num_hidden_layers
    assert len(quantized) == 7 * num_layers, sorted(quantized)  # q k v o gate up down in every block
    for module in quantized.values():
        assert module.weight.quant_state.quant_type == "nf4" and module.weight.dtype == torch.uint8
        assert not module.weight.requires_grad
        assert module.weight.quant_state.nested  # double quantisation: the absmax scales are quantised too
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    lora_b = [n for n in trainable if "lora_B" in n]
    assert len(lora_b) == len(quantized) and all(trainable[n].abs().sum() > 0 for n in lora_b)  # B starts at zero
    # The adapters trained; nothing else moved, the packed 4-bit base weights included.
    assert set(lora_b) <= set(probe.changed) <= set(trainable)

"""lit_align contenders: the real LightningModules driven by a Lightning ``Trainer``, as users run them.

Only names a user's code or config would touch are imported from lit_align (the methods and the data
module with their arguments, ``SamplingParams``, ``LoRA``, ``Reward``, the CLI's ``connect``), so a
``--baseline`` run at an earlier commit, whose internal modules differ, goes through the same public code path.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from lit_align.cli import connect, hand_over_gradient_clipping
from lit_align.sampling.generate import SamplingParams
from lit_align.methods import DPO, GRPO, RLOO, SFT, RewardModel
from lit_align.modeling.models import LoRA
from lit_align.rewards.base import Reward

from .common import POLICY, RM_BACKBONE, Spec, StepClock, summary
from .data import datamodule


def word_variety(completions: list[str]) -> list[float]:
    """The RLOO benchmark's reward: distinct words / 20; cheap and rule-based, the same for every contender."""
    return [len(set(text.lower().split())) / 20 for text in completions]


class WordVariety(Reward):
    """``word_variety`` as a lit_align reward source."""

    def __call__(self, prompts, completions, records):
        return torch.tensor(word_variety(completions))


class Clock(L.Callback):
    """Times each optimiser step of the Trainer and counts its real (non-padding) tokens."""

    def __init__(self, clock: StepClock, rloo_rows: int = 0):
        self.clock, self.rloo_rows = clock, rloo_rows

    def on_train_start(self, trainer, pl_module):
        self.clock.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.rloo_rows:  # generated tokens: the logged mean completion length times the completions
            tokens = float(trainer.callback_metrics["train/completion_length"]) * self.rloo_rows
        else:
            tokens = int(batch.attention_mask.sum())
        self.clock.step_done(tokens)


def _variant(spec: Spec) -> str:
    """The contender without the ``@commit`` of a ``--baseline`` run: that run is the same contender."""
    return spec.contender.split("@")[0]


def _module(spec: Spec):
    s = spec.settings
    adamw = partial(torch.optim.AdamW, lr=s.lr, weight_decay=0.0, fused=s.fused_adamw or None)  # what TRL uses on this torch
    common = {"dtype": "float32", "optimizer": adamw, "warmup_steps": 0}
    if spec.method == "sft":
        return SFT(model=POLICY, **common)
    if spec.method == "dpo":
        return DPO(model=POLICY, reference="copy", **common)
    if spec.method == "rm":
        return RewardModel(model=RM_BACKBONE, **common)
    if spec.method in ("rloo", "grpo"):
        sampling = SamplingParams(max_new_tokens=s.rloo_max_new_tokens, temperature=1.0, top_p=1.0)
        rollout = None
        if _variant(spec).endswith("+vllm"):  # the vLLM environment only (tools/install_vllm_cpu.sh)
            from lit_align.sampling.engines import VLLM

            rollout = VLLM(dtype="float32", enforce_eager=True, max_model_len=1024)
        lora = LoRA(r=s.rl_lora_r, alpha=2 * s.rl_lora_r, dropout=0.0) if s.rl_lora_r else None
        online = {"generation": sampling, "micro_batch_size": s.rl_micro_batch or None, "lora": lora,
                  "gradient_checkpointing": bool(s.rl_checkpointing), **({"rollout": rollout} if rollout else {})}
        if spec.method == "grpo":  # TRL's GRPO defaults: DAPO token mean, group std, clip 0.2, no KL
            return GRPO(model=POLICY, reward=WordVariety(), num_generations=s.rloo_k, beta=0.0, loss_type="dapo",
                        scale_rewards="group", epsilon=0.2, **online, **common)
        reference = "adapter_off" if lora else "copy"  # TRL with peft also takes the reference with the adapter off
        return RLOO(model=POLICY, reward=WordVariety(), rloo_k=s.rloo_k, kl_coef=s.kl_coef, reference=reference,
                    **online, **common)
    raise ValueError(spec.method)


def run(spec: Spec) -> dict:
    s = spec.settings
    torch.manual_seed(s.seed)
    module = _module(spec)
    data = datamodule(spec, packing=_variant(spec).endswith("+packing"))
    connect(data, module)  # the method's own tokenizer, as in a CLI run
    clock = StepClock()
    rows = s.rl_rows() if spec.method in ("rloo", "grpo") else 0
    trainer = L.Trainer(accelerator=s.device, devices=1, precision=s.precision, max_steps=s.steps_total(), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        callbacks=[Clock(clock, rows)])
    if rows:  # online RL clips inside its own loop, as on the command line
        hand_over_gradient_clipping(trainer, module)
    trainer.fit(module, data)
    return summary(clock, s.warmup)

"""lit_align contenders: the real LightningModules driven by a Lightning ``Trainer``, as users run them.

Only names a user's code or config would touch are imported from lit_align (the methods and the data
module with their arguments, ``SamplingParams``, ``LoRA``, ``Reward``, the CLI's ``connect``), so a
``--baseline`` run at an earlier commit, whose internal modules differ, goes through the same public code path.
"""

from __future__ import annotations

import inspect
from functools import partial

import lightning as L
import torch

from lit_align.cli import connect, hand_over_gradient_clipping
from lit_align.sampling.generate import SamplingParams
from lit_align.methods import DPO, GRPO, RLOO, SFT, RewardModel
from lit_align.modeling.models import LoRA

from . import rl_task
from .common import POLICY, RM_BACKBONE, Spec, StepClock, summary
from .data import datamodule
from .flops import FlopReplay
from .phases import PhaseTimer, instrument_lit, split
from ..study.memory import peak_rss_mib

# --rl-max-tokens and --rl-memory-budget: loop settings of the current tree, never handed to a --baseline tree
NEW_LOOP_SETTINGS = (("rl_max_tokens", "max_tokens_per_micro_batch"), ("rl_memory_budget", "activation_memory_budget_gib"))


class Clock(L.Callback):
    """Times the Trainer's first ``steps`` optimiser steps, counts their real (non-padding) tokens, and with a
    ``PhaseTimer`` (online RL) splits each step into its phases; later steps (FLOP replays) are not measured."""

    def __init__(self, clock: StepClock, steps: int, rloo_rows: int = 0, phases: PhaseTimer | None = None):
        self.clock, self.steps, self.rloo_rows, self.phases = clock, steps, rloo_rows, phases
        self.peak_rss_mib: float | None = None
        self.flat_groups: list[float] = []  # online RL: each step's share of groups whose rewards are all equal

    def on_train_start(self, trainer, pl_module):
        if self.phases is not None:
            instrument_lit(self.phases, pl_module, trainer.optimizers[0])
        self.clock.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if len(self.clock.ends) >= self.steps:
            return
        if self.rloo_rows:  # generated tokens: the logged mean completion length times the completions
            tokens = float(trainer.callback_metrics["train/completion_length"]) * self.rloo_rows
        else:
            tokens = int(batch.attention_mask.sum())
        self.clock.step_done(tokens)
        if "train/zero_variance_groups" in trainer.callback_metrics:
            self.flat_groups.append(float(trainer.callback_metrics["train/zero_variance_groups"]))
        if self.phases is not None:
            self.phases.step_done()
        self.peak_rss_mib = peak_rss_mib()  # the peak of the measured steps, before any FLOP replay


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
        whole_rows = {"share_prompt": False} if _variant(spec).endswith("+whole_rows") else {}
        return DPO(model=POLICY, reference="copy", **whole_rows, **common)
    if spec.method == "rm":
        return RewardModel(model=RM_BACKBONE, **common)
    if spec.method in ("rloo", "grpo"):
        sampling = SamplingParams(max_new_tokens=s.rloo_max_new_tokens, temperature=1.0, top_p=1.0)
        rollout = None
        if _variant(spec).endswith(("+vllm", "+vllm_compiled")):  # the vLLM environment only (tools/install_vllm_cpu.sh)
            from lit_align.sampling.engines import VLLM

            rollout = VLLM(dtype="float32", enforce_eager=_variant(spec).endswith("+vllm"), max_model_len=1024)
        lora = LoRA(r=s.rl_lora_r, alpha=2 * s.rl_lora_r, dropout=0.0) if s.rl_lora_r else None
        online = {"generation": sampling, "micro_batch_size": s.rl_micro_batch or None, "lora": lora,
                  "gradient_checkpointing": bool(s.rl_checkpointing), **({"rollout": rollout} if rollout else {})}
        online |= _new_loop_settings(spec)
        if _variant(spec).endswith("+every_group"):
            online["skip_zero_advantage_groups"] = False
        reward = rl_task.reward(s.rl_task)
        if spec.method == "grpo":  # TRL's GRPO defaults: DAPO token mean, group std, clip 0.2, no KL
            return GRPO(model=POLICY, reward=reward, num_generations=s.rloo_k, beta=0.0, loss_type="dapo",
                        scale_rewards="group", epsilon=0.2, **online, **common)
        reference = "adapter_off" if lora else "copy"  # TRL with peft also takes the reference with the adapter off
        return RLOO(model=POLICY, reward=reward, rloo_k=s.rloo_k, kl_coef=s.kl_coef, reference=reference,
                    **online, **common)
    raise ValueError(spec.method)


def _new_loop_settings(spec: Spec) -> dict:
    """The loop settings asked for with --rl-max-tokens / --rl-memory-budget, for the current tree only; a
    lit_align whose ``OnlineRL`` does not take one that was asked for is an error, not a silent default."""
    asked = {name: getattr(spec.settings, field) for field, name in NEW_LOOP_SETTINGS if getattr(spec.settings, field)}
    if not asked or "@" in spec.contender:  # the --baseline tree predates them
        return {}
    from lit_align.methods import OnlineRL

    missing = [name for name in asked if name not in inspect.signature(OnlineRL.__init__).parameters]
    if missing:
        raise ValueError(f"this lit_align's OnlineRL takes no {', '.join(missing)}: drop --rl-max-tokens/--rl-memory-budget")
    return asked


def _flop_steps(spec: Spec) -> int:
    """Measured steps to replay under the FLOP counter: online RL only, and only where the orchestrator asks."""
    if spec.method not in ("rloo", "grpo") or not spec.extra.get("count_flops", True):
        return 0
    return min(spec.settings.rl_flop_steps, spec.settings.steps)


def run(spec: Spec) -> dict:
    s = spec.settings
    torch.manual_seed(s.seed)
    module = _module(spec)
    data = datamodule(spec, packing=_variant(spec).endswith("+packing"))
    connect(data, module)  # the method's own tokenizer, as in a CLI run
    clock = StepClock()
    rows = s.rl_rows() if spec.method in ("rloo", "grpo") else 0
    phases, replays = (PhaseTimer() if rows else None), _flop_steps(spec)
    timing = Clock(clock, s.steps_total(), rows, phases)
    callbacks = [timing] + ([FlopReplay(s.warmup, replays, s.steps_total())] if replays else [])
    trainer = L.Trainer(accelerator=s.device, devices=1, precision=s.precision, max_steps=s.steps_total() + replays,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=callbacks)
    if rows:  # online RL clips inside its own loop, as on the command line
        hand_over_gradient_clipping(trainer, module)
    trainer.fit(module, data)
    result = summary(clock, s.warmup, train_peak_rss_mib=timing.peak_rss_mib)
    if timing.flat_groups:  # what skip_zero_advantage_groups can skip, step by step (warm-up dropped)
        result["flat_group_share"] = timing.flat_groups[s.warmup :]
    if phases is not None:
        result |= {"phases": split(result["step_s"], phases.steps[s.warmup :]), "phase_hooks": phases.hooked,
                   "phase_hooks_missing": phases.missing}
    if replays:
        result["flops"] = callbacks[1].result()
    return result

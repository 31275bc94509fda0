"""What every training method shares: the optimiser and its schedule, freed gradients, the reference model.

``PolicyModule`` (SFT, DPO, RLOO) adds these to ``lit_align.policy.PolicyBase`` (the policy, its
tokenizer, rollout engine, sampling settings and export); ``RewardModel`` uses the optimiser pieces alone.
"""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_align.modeling import models
from lit_align.policy import PolicyBase


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Linear warm-up to the optimiser's lr, then cosine decay to ``min_lr_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_config(module: L.LightningModule, optimizer_factory, scheduler_factory, warmup_steps: int, min_lr_ratio: float):
    """Optimiser over the trainable parameters, and a per-step schedule (default: warm-up + cosine)."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = optimizer_factory(params)
    if scheduler_factory is not None:
        scheduler = scheduler_factory(optimizer)
    else:
        total = max(1, int(module.trainer.estimated_stepping_batches))
        scheduler = warmup_cosine(optimizer, warmup_steps, total, min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FreesAppliedGradients(L.LightningModule):
    """Frees gradients as soon as the optimiser has applied them.

    Lightning clears gradients inside the next step's closure, after that step's forward, so the last
    step's gradients (one full copy of the trainable weights) would stay alive through the next
    forward, and through RLOO's sampling, and add their size to peak memory. Freeing them here
    is equivalent: with gradient accumulation this hook runs only once the window is applied.
    """

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)


def plain_hyperparameters(hparams) -> None:
    """Settings dataclasses (``SamplingParams``, ``LoRA``) as dicts, in place: a checkpoint's hyperparameters
    then hold plain containers only, and it loads with ``torch.load(weights_only=True)`` (Lightning's default),
    whether the module was built by the CLI or in Python. The classes take the dicts back (``PolicyBase``)."""
    for name, value in list(hparams.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            hparams[name] = dataclasses.asdict(value)


class PolicyModule(PolicyBase):
    """Base of the methods that train a causal LM policy: ``PolicyBase`` (the policy, its tokenizer and
    rollout engine) plus the optimiser and its schedule, the reference model, and gradients freed
    as soon as they are applied (see ``FreesAppliedGradients``).
    """

    def __init__(
        self,
        *args,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        **kwargs,
    ):
        """
        Args:
            optimizer: optimiser class and its settings (lr, weight_decay, ...).
            scheduler: learning-rate schedule; None means linear warm-up then cosine decay.
            warmup_steps: warm-up optimiser steps of the default schedule.
            min_lr_ratio: final lr of the default schedule, as a share of the peak.
        """
        super().__init__(*args, **kwargs)
        # callables and loss, objective and reward objects are recorded by the CLI config, not as hparams
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss", "rollout", "objective", "reward"])
        plain_hyperparameters(self.hparams)
        # hparams may hold plain dicts (LightningCLI records the parsed config); keep the real objects.
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio

    def init_reference(self, reference: str) -> None:
        """Record which model is the reference: "adapter_off" (the LoRA policy, adapter disabled) or "copy"."""
        if reference == "adapter_off" and self.lora is None:
            raise ValueError("reference 'adapter_off' needs a LoRA policy; set lora or use reference 'copy'")
        self.reference_kind = reference
        self.reference_model = None

    def load_reference_copy(self) -> None:
        """For reference "copy": load the start model again, frozen and in eval mode."""
        if self.reference_kind == "copy" and self.reference_model is None:
            ref = models.load_causal_lm(self.model_name, self.dtype_name, self.trust_remote_code, self.load_in_4bit)
            self.reference_model = ref.eval().requires_grad_(False)

    @torch.no_grad()
    def with_reference(self, fn):
        """``fn(reference_model)``: the frozen copy, or the policy in eval mode with its adapter off."""
        if self.reference_kind == "copy":
            return fn(self.reference_model)
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return fn(self.policy)
        finally:
            self.policy.train(was_training)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)  # at once, as FreesAppliedGradients explains
        self.rollout.weights_changed()  # the engine samples from the new weights next time

    def configure_optimizers(self):
        return optimizer_config(self, self.optimizer_factory, self.scheduler_factory, self.warmup_steps, self.min_lr_ratio)

"""What every method shares: the policy, its tokenizer, optimiser and schedule, generation, export."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy

from lit_align.modeling import hardware, models
from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import BatchKind
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.engines import HFGenerate, RolloutEngine


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


class PolicyModule(FreesAppliedGradients):
    """Base of the methods that train a causal LM policy.

    Each method names what its data must be: ``batch_kind`` (a ``lit_align.data.kinds`` object) and
    ``tokenizer``; ``AlignDataModule.connect`` is handed both (by the CLI, or by the caller in Python).
    """

    batch_kind: BatchKind  # set by each method class

    def __init__(
        self,
        model: str = "embedded:smollm2-135m-instruct",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        lora: models.LoRA | None = None,
        load_in_4bit: bool = False,
        gradient_checkpointing: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        generation: SamplingParams | None = None,
        disable_dropout: bool = False,
        rollout: RolloutEngine | None = None,
    ):
        """
        Args:
            model: embedded:NAME, tiny:causal-lm, a local folder, a .gguf file, or a hub id.
            dtype: weight dtype: float32, bfloat16 or float16 (CPUs: float32).
            trust_remote_code: allow model code shipped with a hub model to run.
            lora: train LoRA adapters instead of all weights (None: full fine-tuning).
            load_in_4bit: load frozen base weights as bitsandbytes NF4 (QLoRA; needs lora).
            gradient_checkpointing: recompute activations in backward to save memory.
            optimizer: optimiser class and its settings (lr, weight_decay, ...).
            scheduler: learning-rate schedule; None means linear warm-up then cosine decay.
            warmup_steps: warm-up optimiser steps of the default schedule.
            min_lr_ratio: final lr of the default schedule, as a share of the peak.
            generation: sampling settings for predict (and for methods that generate).
            disable_dropout: switch every dropout of the policy off (LoRA's and attention's included).
                DPO and RLOO default to true: dropout makes the policy/reference log-ratio noisy.
            rollout: where every sampling of this run draws from: HFGenerate (default: Hugging Face
                generate on the policy) or VLLM (configs/rollout/vllm.yaml; kept in sync after each step).
        """
        super().__init__()
        if load_in_4bit and lora is None:
            raise ValueError("load_in_4bit trains nothing without lora: set lora too (QLoRA)")
        # callables and loss objects are recorded by the CLI config, not as (unpicklable) hparams
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss", "rollout"])
        # hparams may hold plain dicts (LightningCLI records the parsed config); keep the real objects.
        self.model_name, self.dtype_name, self.trust_remote_code = model, dtype, trust_remote_code
        self.lora, self.load_in_4bit, self.gradient_checkpointing = lora, load_in_4bit, gradient_checkpointing
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.disable_dropout = disable_dropout
        self.rollout = rollout or HFGenerate()
        self.tokenizer = models.load_tokenizer(model, trust_remote_code)
        self.policy = None
        self.generation = generation or SamplingParams()

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hardware.warn_if_slow_bf16(self._trainer)
        policy = models.load_causal_lm(self.model_name, self.dtype_name, self.trust_remote_code, self.load_in_4bit)
        if self.gradient_checkpointing:
            # transformers 5 renamed the switch; older releases only have the second name.
            if hasattr(policy, "activation_checkpointing_enable"):
                policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # from_pretrained returns eval mode; Lightning keeps module modes as they are, so ask for train mode.
        policy.train()
        self.policy = models.apply_lora(policy, self.lora) if self.lora is not None else policy
        if self.disable_dropout:
            models.disable_dropout(self.policy)

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
        self.rollout.weights_changed()  # the engine samples from the new weights next time

    def on_fit_start(self) -> None:
        super().on_fit_start()
        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy):  # an engine copying weights must see them whole, not this rank's shard
            from torch.distributed.fsdp import FullyShardedDataParallel

            self.rollout.gather_weights_with(
                partial(FullyShardedDataParallel.summon_full_params, strategy.model, writeback=False, recurse=True))

    def teardown(self, stage: str) -> None:
        self.rollout.close()  # an engine's memory must not outlive the run (several runs share a process)

    def configure_optimizers(self):
        return optimizer_config(self, self.optimizer_factory, self.scheduler_factory, self.warmup_steps, self.min_lr_ratio)

    def predict_step(self, batch: PromptBatch, batch_idx: int) -> list[dict]:
        samples = self.rollout.sample(self.policy, self.tokenizer, batch.input_ids, batch.attention_mask, self.generation,
                                      seed=batch_idx)
        n = self.generation.n
        return [
            {"record": batch.records[i // n], "completion": text} for i, text in enumerate(samples.texts)
        ]

    def export(self, directory: str | Path) -> Path:
        """Write the policy (LoRA merged) and tokenizer in Hugging Face format."""
        directory = Path(directory)
        merged = models.merged_copy(self.policy)
        merged.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

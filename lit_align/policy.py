"""What every policy method and every evaluation shares: ``PolicyBase``, a causal LM policy as Lightning holds it.

It holds the policy (``self.policy``, loaded by name in ``configure_model``: dtype, remote code,
LoRA, 4-bit base weights, gradient checkpointing, dropout off), its tokenizer, the rollout engine
every sampling goes through (``HFGenerate`` by default, or ``VLLM``), the sampling settings
(``generation``), ``predict`` and export in Hugging Face format (LoRA merged). Nothing here trains:
the optimiser, schedule and reference model live in ``lit_align.methods.base.PolicyModule``, which
builds on this class; the evaluations (``lit_align.evaluation``) build on it directly.

May import: ``lit_align.sampling``, ``lit_align.modeling``, ``lit_align.lightning``, ``lit_align.data``.
"""

from __future__ import annotations

from typing import ClassVar

from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import BatchKind
from lit_align.modeling import hardware, models
from lit_align.sampling.engines import HFGenerate, RolloutEngine
from lit_align.sampling.generate import Samples, SamplingParams


class PolicyBase(L.LightningModule):
    """A causal LM policy, its tokenizer and its rollout engine, for the methods and evaluations built on it.

    Each subclass names what its data must be: ``batch_kind`` (a ``lit_align.data.kinds`` object);
    ``AlignDataModule.connect`` is handed it and ``tokenizer`` (by the CLI, or by the caller in Python).
    """

    batch_kind: BatchKind  # set by each method or evaluation class
    # Whether running this module (fit, or the evaluation it is) draws samples from its rollout engine:
    # tools that plan runs (the study runner's engine choice and cost table) ask this, not the class name.
    uses_rollout_engine: ClassVar[bool] = False

    def __init__(
        self,
        model: str = "embedded:smollm2-135m-instruct",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        lora: models.LoRA | None = None,
        load_in_4bit: bool = False,
        gradient_checkpointing: bool = False,
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
            generation: sampling settings for predict, evaluations and methods that generate.
            disable_dropout: switch every dropout of the policy off (LoRA's and attention's included).
                DPO and RLOO default to true: dropout makes the policy/reference log-ratio noisy.
            rollout: where every sampling of this run draws from: HFGenerate (default: Hugging Face
                generate on the policy) or VLLM (configs/rollout/vllm.yaml; kept in sync after each step).
        """
        super().__init__()
        if load_in_4bit and lora is None:
            raise ValueError("load_in_4bit trains nothing without lora: set lora too (QLoRA)")
        if load_in_4bit and rollout is not None and rollout.refuses_4bit:
            raise ValueError(
                f"load_in_4bit (QLoRA) cannot sample through {type(rollout).__name__}: the engine needs the policy's "
                "weights in a float dtype, and a 4-bit base holds packed NF4 blocks that no engine can load. Use "
                "the default HFGenerate rollout with QLoRA, or train with LoRA on float weights (load_in_4bit: false) "
                "to sample with vLLM")
        self.model_name, self.dtype_name, self.trust_remote_code = model, dtype, trust_remote_code
        if isinstance(lora, dict):  # as a checkpoint's hyperparameters hold it (methods.base.plain_hyperparameters)
            lora = models.LoRA(**lora)
        self.lora, self.load_in_4bit, self.gradient_checkpointing = lora, load_in_4bit, gradient_checkpointing
        self.disable_dropout = disable_dropout
        self.rollout = rollout or HFGenerate()
        self.tokenizer = models.load_tokenizer(model, trust_remote_code)
        self.policy = None
        self.generation = SamplingParams(**generation) if isinstance(generation, dict) else generation or SamplingParams()

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hardware.warn_if_slow_bf16(self._trainer)
        policy = models.load_causal_lm(self.model_name, self.dtype_name, self.trust_remote_code, self.load_in_4bit)
        if self.gradient_checkpointing:
            models.enable_activation_checkpointing(policy)
        # from_pretrained returns eval mode; Lightning keeps module modes as they are, so ask for train mode.
        policy.train()
        self.policy = models.apply_lora(policy, self.lora) if self.lora is not None else policy
        if self.disable_dropout:
            models.disable_dropout(self.policy)

    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams | None = None,
               seed: int = 0) -> Samples:
        """``params.n`` completions per prompt (default: ``generation``) from the policy, through the rollout engine."""
        return self.rollout.sample(self.policy, self.tokenizer, input_ids, attention_mask, params or self.generation,
                                   seed=seed)

    def _engine_sees_full_weights(self) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy):  # an engine copying weights must see them whole, not this rank's shard
            from torch.distributed.fsdp import FullyShardedDataParallel

            self.rollout.gather_weights_with(
                partial(FullyShardedDataParallel.summon_full_params, strategy.model, writeback=False, recurse=True))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._engine_sees_full_weights()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._engine_sees_full_weights()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._engine_sees_full_weights()

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rollout.prepare(self.policy, self.tokenizer)  # outside the forward FSDP wraps test_step in

    def on_predict_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rollout.prepare(self.policy, self.tokenizer)  # outside the forward FSDP wraps predict_step in

    def teardown(self, stage: str) -> None:
        self.rollout.close()  # an engine's memory must not outlive the run (several runs share a process)

    def predict_step(self, batch: PromptBatch, batch_idx: int) -> list[dict]:
        samples = self.sample(batch.input_ids, batch.attention_mask, seed=batch_idx)
        n = self.generation.n
        return [{"record": batch.records[i // n], "completion": text} for i, text in enumerate(samples.texts)]

    def export(self, directory: str | Path) -> Path:
        """Write the policy (LoRA merged) and tokenizer in Hugging Face format."""
        directory = Path(directory)
        merged = models.merged_copy(self.policy)
        merged.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

"""Reward model (RM) training on preference pairs.

Bradley–Terry objective (Bradley & Terry, 1952; as used for RLHF reward models, Ouyang et al., 2022):

    L = - E_{(x, y_c, y_r)} log sigma(r(x, y_c) - r(x, y_r) - m)

with an optional margin m (a constant, or the annotated score difference). The regression variant
used in the study fits the annotated scores directly: L = E[(r(x, y) - s(x, y))^2] over both
responses. The RM keeps its own tokenizer: it reads the prompt and response as text (or, for a
causal LM with a chat template, the rendered conversation), never the policy's token ids.

Simplification: RMs are trained with all weights (they are small encoders here); no LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torchmetrics
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_align.modeling import hardware, models
from lit_align.objectives import losses
from lit_align.data.collate import PreferenceBatch
from lit_align.data.datamodule import DataView
from lit_align.data.kinds import RewardKind
from lit_align.methods.base import FreesAppliedGradients, optimizer_config
from lit_align.rewards.model import METADATA, reward_scores


class RewardLoss:
    """A reward-model objective: ``loss(r_c, r_r, s_c, s_r) -> scalar``."""

    def __call__(self, r_chosen, r_rejected, s_chosen, s_rejected) -> torch.Tensor:
        raise NotImplementedError


class BradleyTerry(RewardLoss):
    def __init__(self, margin: float = 0.0, score_margin: bool = False):
        """
        Args:
            margin: constant the chosen reward must beat the rejected one by.
            score_margin: add the annotated score difference (score_chosen - score_rejected) to the margin.
        """
        self.margin, self.score_margin = margin, score_margin

    def __call__(self, r_chosen, r_rejected, s_chosen, s_rejected):
        margin = self.margin + ((s_chosen - s_rejected) if self.score_margin else 0.0)
        if self.score_margin and torch.isnan(s_chosen - s_rejected).any():
            raise ValueError("score_margin needs score_chosen and score_rejected in every record")
        return losses.bradley_terry_loss(r_chosen, r_rejected, margin)


class ScoreRegression(RewardLoss):
    """Mean squared error of each reward to its record's score_chosen / score_rejected."""

    def __call__(self, r_chosen, r_rejected, s_chosen, s_rejected):
        if torch.isnan(s_chosen).any() or torch.isnan(s_rejected).any():
            raise ValueError("ScoreRegression needs score_chosen and score_rejected in every record")
        return losses.reward_regression_loss(r_chosen, r_rejected, s_chosen, s_rejected)


class RewardModel(FreesAppliedGradients):
    """A scalar reward head on a sequence classifier, trained on chosen/rejected pairs.

    The export records the length its training text was cut to, handed over from the data before the
    run (``use_data``): the command line does it; from Python, ``trainer.fit(rm, lit_align.cli.connect(data, rm))``
    (or ``rm.use_data(data.view())``).
    """

    batch_kind = RewardKind()  # prompt and response as this model's own tokenizer reads them

    def __init__(
        self,
        model: str = "embedded:all-minilm-l6-v2",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        loss: RewardLoss = lazy_instance(BradleyTerry),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
    ):
        """
        Args:
            model: sequence classifier or causal LM backbone: embedded:NAME, tiny:classifier, folder or hub id.
            dtype: weight dtype: float32, bfloat16 or float16.
            trust_remote_code: allow model code shipped with a hub model to run.
            loss: BradleyTerry (pairwise, optional margin) or ScoreRegression (fit annotated scores).
            optimizer: optimiser class and its settings.
            scheduler: learning-rate schedule; None means linear warm-up then cosine decay.
            warmup_steps: warm-up optimiser steps of the default schedule.
            min_lr_ratio: final lr of the default schedule, as a share of the peak.
            gradient_checkpointing: recompute activations in backward to save memory.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.model_name, self.dtype_name, self.trust_remote_code = model, dtype, trust_remote_code
        self.loss_fn, self.optimizer_factory, self.scheduler_factory = loss, optimizer, scheduler
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.gradient_checkpointing = gradient_checkpointing
        self.tokenizer = models.load_tokenizer(model, trust_remote_code)
        self.model = None
        self.max_length: int | None = None  # tokens the training text is cut to, from use_data
        self.val_accuracy = torchmetrics.MeanMetric()

    def configure_model(self) -> None:
        if self.model is None:
            hardware.warn_if_slow_bf16(self._trainer)
            model = models.load_sequence_classifier(self.model_name, self.dtype_name, self.trust_remote_code)
            if self.gradient_checkpointing:
                models.enable_activation_checkpointing(model)
            self.model = model.train()  # from_pretrained returns eval mode, which would switch dropout off

    def use_data(self, data: DataView) -> None:
        """Take the length the data cuts text to: it is exported with the model, so scoring cuts where training did."""
        self.max_length = data.max_length

    def forward(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = reward_scores(self.model, batch.input_ids, batch.attention_mask)
        return rewards.split(batch.num_pairs)

    def _shared_step(self, batch: PreferenceBatch, stage: str) -> torch.Tensor:
        r_chosen, r_rejected = self(batch)
        loss = self.loss_fn(r_chosen, r_rejected, batch.score_chosen, batch.score_rejected)
        correct = (r_chosen > r_rejected).float()
        rewards = torch.cat([r_chosen, r_rejected]).detach()
        metrics = {
            f"{stage}/loss": loss,
            f"{stage}/margin": (r_chosen - r_rejected).mean().detach(),
            f"{stage}/reward_mean": rewards.mean(),
            f"{stage}/reward_std": rewards.std() if rewards.numel() > 1 else torch.zeros(()),
        }
        if stage == "train":
            metrics["train/accuracy"] = correct.mean()
        else:
            self.val_accuracy.update(correct)
            metrics[f"{stage}/accuracy"] = self.val_accuracy
        self.log_dict(metrics, prog_bar=stage == "train", batch_size=batch.num_pairs)
        return loss

    def training_step(self, batch: PreferenceBatch, batch_idx: int):
        return self._shared_step(batch, "train")

    def validation_step(self, batch: PreferenceBatch, batch_idx: int):
        self._shared_step(batch, "val")

    def test_step(self, batch: PreferenceBatch, batch_idx: int):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        return optimizer_config(self, self.optimizer_factory, self.scheduler_factory, self.warmup_steps, self.min_lr_ratio)

    def export(self, directory: str | Path) -> Path:
        """Save model, tokenizer and the input length in Hugging Face format (``RewardModelScorer`` loads it)."""
        if self.max_length is None:
            raise ValueError("RewardModel.export needs the input length its data cut text to: connect the data to "
                             "the model before training, lit_align.cli.connect(data, rm) (the command line does it)")
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / METADATA).write_text(json.dumps({"max_length": self.max_length}))
        return directory

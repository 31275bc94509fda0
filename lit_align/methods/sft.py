"""Supervised fine-tuning (SFT) on completions.

Objective, for a global batch G (all micro-batches of one optimiser step, on all devices):

    L = - (1 / N_G) * sum_{(x, y) in G} sum_t log p_theta(y_t | x, y_<t),   N_G = loss tokens in G

Only completion / assistant tokens carry loss; prompt tokens never do. Dividing by the token count
of the whole global batch (not of each micro-batch) makes gradient accumulation and data
parallelism give exactly the gradient of one large batch; ``AlignDataModule`` supplies N_G.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torchmetrics

from lit_align.objectives import logprobs, losses, ops
from lit_align.data.collate import SFTBatch
from lit_align.data.kinds import SFTKind
from lit_align.methods.base import PolicyModule


@contextmanager
def kv_cache_off(model):
    """Run forwards without a KV cache: transformers ignores packed position ids when it builds one."""
    config = model.config
    saved, config.use_cache = config.use_cache, False
    try:
        yield
    finally:
        config.use_cache = saved


class SFT(PolicyModule):
    """Completion-only supervised fine-tuning of a causal LM."""

    batch_kind = SFTKind()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = torchmetrics.MeanMetric()
        self._last_step_time = None

    def _nll(self, batch: SFTBatch, normalizer: float):
        if batch.position_ids is None:
            token_logps, _ = logprobs.model_token_logprobs(self.policy, batch.input_ids, batch.attention_mask, batch.labels)
        else:
            with kv_cache_off(self.policy):
                token_logps, _ = logprobs.model_token_logprobs(self.policy, batch.input_ids, None, batch.labels, batch.position_ids)
        return losses.sft_loss(token_logps, ops.loss_mask(batch.labels), normalizer)

    def training_step(self, batch: SFTBatch, batch_idx: int):
        loss = self._nll(batch, batch.loss_normalizer)
        now = time.perf_counter()
        tokens = int(batch.attention_mask.sum())
        metrics = {"train/loss": loss * batch.loss_normalizer / max(1, batch.num_loss_tokens)}
        if self._last_step_time is not None:
            metrics["train/tokens_per_s"] = tokens / (now - self._last_step_time)
        self._last_step_time = now
        self.log_dict(metrics, prog_bar=True, batch_size=batch.input_ids.size(0))
        return loss

    def validation_step(self, batch: SFTBatch, batch_idx: int):
        loss = self._nll(batch, batch.num_loss_tokens)
        self.val_loss.update(loss, weight=batch.num_loss_tokens)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=batch.input_ids.size(0))

    def test_step(self, batch: SFTBatch, batch_idx: int):
        loss = self._nll(batch, batch.num_loss_tokens)
        self.val_loss.update(loss, weight=batch.num_loss_tokens)
        self.log("test/loss", self.val_loss, batch_size=batch.input_ids.size(0))

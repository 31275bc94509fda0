"""Tensor helpers shared by the methods: pure functions with documented shapes."""

from __future__ import annotations

import torch

from lit_align.data.formats import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Log-probability of each next token.

    Args:
        logits: (B, T, V) model outputs, any float dtype.
        labels: (B, T) token ids, ``IGNORE_INDEX`` where no loss.
        chunk_size: rows (positions) per float32 log-softmax, so at most ``chunk_size x V`` float32
            values exist at once instead of a full-vocabulary copy of the whole batch.

    Returns:
        (B, T-1) float32: ``log p(labels[:, t+1] | tokens[:, :t+1])``, 0 where the label is ignored.
    """
    shifted_logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    flat_logits = shifted_logits.reshape(-1, shifted_logits.size(-1))
    flat_targets = safe_targets.reshape(-1)
    out = torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, flat_targets.numel(), chunk_size):
        rows = flat_logits[start : start + chunk_size].float()
        picked = rows.gather(-1, flat_targets[start : start + chunk_size, None]).squeeze(-1)
        out[start : start + chunk_size] = picked - torch.logsumexp(rows, dim=-1)
    return out.view_as(targets) * mask


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels → (B, T-1) float mask of the positions that carry loss."""
    return (labels[:, 1:] != IGNORE_INDEX).float()

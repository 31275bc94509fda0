"""Losses as pure functions of log-probabilities; each is checked against hand-worked values."""

from __future__ import annotations

import torch


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor) -> torch.Tensor:
    """Completion-only negative log-likelihood.

    Args:
        token_logps: (B, T) log-probabilities of the target tokens.
        mask: (B, T) 1 where the token carries loss, else 0.
        normalizer: what the summed NLL is divided by. The batch's own loss-token count gives the
            per-token mean; a window-wide count makes accumulated micro-batches equal one big batch.

    Returns:
        scalar: ``-sum(token_logps * mask) / normalizer``.
    """
    return -(token_logps * mask).sum() / normalizer

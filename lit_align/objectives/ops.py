"""Tensor helpers shared by the methods: pure functions with documented shapes.

Nothing here runs a model; the forwards that produce per-token log-probs are in ``lit_align.objectives.logprobs``.
"""

from __future__ import annotations

import torch

from lit_align.data.formats import IGNORE_INDEX


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels → (B, T-1) float mask of the positions that carry loss."""
    return (labels[:, 1:] != IGNORE_INDEX).float()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only, so left padding does not shift them.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])).tolist()
    [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages: each sample's reward minus the mean of the other k-1 in its group.

    Args:
        rewards: (B*k,) with the k samples of each prompt adjacent.
    Returns:
        (B*k,) advantages; each group of k sums to zero.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0]), k=2).tolist()
    [1.0, -1.0, -3.0, 3.0]
    """
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got k={k}")
    groups = rewards.view(-1, k)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)

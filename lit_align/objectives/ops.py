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

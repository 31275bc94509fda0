"""Plain reference computations the fast paths in lit_align are checked against.

They build the full float32 log-softmax over the vocabulary, which lit_align avoids: fine for tiny
test models, and obviously right.
"""

from __future__ import annotations

import torch

from lit_align.data.formats import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) labels → (B, T-1) float32 ``log p(labels[:, t+1] | tokens[:, :t+1])``,
    0 where the label is ``IGNORE_INDEX``."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, targets.masked_fill(~mask, 0)[..., None]).squeeze(-1) * mask


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits → (B, T) float32 entropy of each position's next-token distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)

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


def rloo_loss(logps, ref_logps, mask, rewards, k: int, kl_coef: float, kl_estimator: str = "k1",
              kl_in_reward: bool = True, normalization: str = "sequence", entropy=None, entropy_coef: float = 0.0,
              keep=None, is_weights=None):
    """On-policy RLOO on one whole batch, from the package's objective (``objectives.rl.ClippedRatio``) in one
    call: the one-batch update the micro-batched loop is checked against, and the objective the hand-worked
    tests read. Returns the objective's result with ``advantages`` (N,) and ``kl`` (N,) k1 added.

    Shapes: logps, ref_logps, mask, entropy, is_weights (TIS) (N, C); rewards (N,); keep (N,) bool, rows that
    carry loss (the others still count in their group's baselines).
    """
    from lit_align.objectives import policy_gradient as pg
    from lit_align.objectives.rl import ClippedRatio, PolicyGradientBatch

    objective = ClippedRatio(estimator="rloo", aggregation=normalization, kl_coef=kl_coef, kl_estimator=kl_estimator,
                             kl_in_reward=kl_in_reward, entropy_coef=entropy_coef)
    kl = pg.sequence_kl(logps.detach(), ref_logps, mask, "k1")
    advantages = objective.advantages(objective.shaped_rewards(rewards, logps.detach(), ref_logps, mask), k)
    loss_mask = mask if keep is None else mask * keep[:, None].to(mask.dtype)
    out = objective(PolicyGradientBatch(logps=logps, mask=loss_mask, advantages=advantages,
                                        step_sequences=float(mask.size(0)), step_tokens=float(loss_mask.sum()),
                                        max_new_tokens=1, ref_logps=ref_logps, entropy=entropy,
                                        is_weights=is_weights))
    out.advantages, out.kl = advantages, kl
    return out

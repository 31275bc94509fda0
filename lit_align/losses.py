"""Losses as pure functions of log-probabilities; each is checked against hand-worked values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Pairwise reward-model loss ``mean(-log sigmoid(r_c - r_r - margin))``.

    Args:
        r_chosen, r_rejected: (B,) scalar rewards.
        margin: (B,) or scalar the chosen reward must exceed the rejected one by.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def reward_regression_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, s_chosen: torch.Tensor, s_rejected: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of each reward to its annotated score, over all 2B responses. Shapes (B,)."""
    return F.mse_loss(torch.cat([r_chosen, r_rejected]), torch.cat([s_chosen, s_rejected]))


def _log_ratio_margin(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
    """h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)), shape (B,)."""
    return (pc - rc) - (pr - rr)


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al., 2023): ``mean(-log sigmoid(beta * h))``.

    Args:
        pc, pr: (B,) policy sequence log-probs of the chosen / rejected responses.
        rc, rr: (B,) reference sequence log-probs of the same responses.
        beta: strength of the implicit KL constraint.
    """
    return -F.logsigmoid(beta * _log_ratio_margin(pc, pr, rc, rr)).mean()


def cdpo_loss(pc, pr, rc, rr, beta: float, label_smoothing: float) -> torch.Tensor:
    """Conservative (label-smoothed) DPO: the preference label is flipped with probability ``label_smoothing``.

    ``mean(-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h))``; shapes as in ``dpo_loss``.
    """
    logits = beta * _log_ratio_margin(pc, pr, rc, rr)
    return (-(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)).mean()


def ipo_loss(pc, pr, rc, rr, beta: float) -> torch.Tensor:
    """IPO (Azar et al., 2023): ``mean((h - 1 / (2 beta))^2)`` on sequence log-ratios; shapes as in ``dpo_loss``."""
    return ((_log_ratio_margin(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).mean()

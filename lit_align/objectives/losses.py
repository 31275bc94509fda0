"""Losses as pure functions of log-probabilities; each is checked against hand-worked values."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_align.objectives import ops


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


@dataclass
class PreferenceLogps:
    """What a DPO-family loss reads about a batch of B preference pairs; every field has shape (B,).

    The four log-probs are summed over each response's tokens; the token counts are for objectives that
    average per token instead (``per_token``).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_tokens: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None

    @property
    def chosen_log_ratio(self) -> torch.Tensor:
        """log pi(y_c) - log ref(y_c)."""
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_log_ratio(self) -> torch.Tensor:
        """log pi(y_r) - log ref(y_r)."""
        return self.policy_rejected - self.reference_rejected

    def margin(self) -> torch.Tensor:
        """h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))."""
        return self.chosen_log_ratio - self.rejected_log_ratio

    def per_token(self) -> PreferenceLogps:
        """Each log-prob divided by its response's token count: per-token means instead of sums."""
        if self.chosen_tokens is None or self.rejected_tokens is None:
            raise ValueError("per-token log-probs need chosen_tokens and rejected_tokens")
        c, r = self.chosen_tokens, self.rejected_tokens
        return PreferenceLogps(self.policy_chosen / c, self.policy_rejected / r, self.reference_chosen / c,
                               self.reference_rejected / r, c, r)


@dataclass
class PreferenceResult:
    """What a DPO-family loss returns: the loss and the implicit rewards the method logs beside it (as
    torchtune's DPO does)."""

    loss: torch.Tensor  # scalar
    chosen_rewards: torch.Tensor  # (B,) beta * (log pi(y_c) - log ref(y_c)), detached
    rejected_rewards: torch.Tensor  # (B,) beta * (log pi(y_r) - log ref(y_r)), detached


def _with_rewards(loss: torch.Tensor, logps: PreferenceLogps, beta: float) -> PreferenceResult:
    return PreferenceResult(loss, beta * logps.chosen_log_ratio.detach(), beta * logps.rejected_log_ratio.detach())


def dpo_loss(logps: PreferenceLogps, beta: float) -> PreferenceResult:
    """Sigmoid DPO (Rafailov et al., 2023): ``mean(-log sigmoid(beta * h))``.

    Args:
        logps: the pairs' policy and reference sequence log-probs, (B,) each.
        beta: strength of the implicit KL constraint.

    Returns:
        ``PreferenceResult``: the scalar loss and the (B,) implicit rewards ``beta * (policy - reference)``.
    """
    return _with_rewards(-F.logsigmoid(beta * logps.margin()).mean(), logps, beta)


def cdpo_loss(logps: PreferenceLogps, beta: float, label_smoothing: float) -> PreferenceResult:
    """Conservative (label-smoothed) DPO: the preference label is flipped with probability ``label_smoothing``.

    ``mean(-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h))``; input and result as in ``dpo_loss``.
    """
    logits = beta * logps.margin()
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)).mean()
    return _with_rewards(loss, logps, beta)


def ipo_loss(logps: PreferenceLogps, beta: float) -> PreferenceResult:
    """IPO (Azar et al., 2023): ``mean((h - 1 / (2 beta))^2)``; input and result as in ``dpo_loss``.

    h is taken from the log-probs as given: pass ``logps.per_token()`` for per-token means.
    """
    return _with_rewards(((logps.margin() - 1 / (2 * beta)) ** 2).mean(), logps, beta)

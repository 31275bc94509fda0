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


# --- RLOO -------------------------------------------------------------------------------------------
# Which KL estimator may go where. The policy gradient of E[r - beta * KL] needs, per sequence,
# either the log-ratio as a (detached) reward term or a loss term whose expected gradient is the KL's:
#   k1 in the reward:  E[(r - beta * L) grad log pi] = grad E[r] - beta * grad KL(pi || ref), exactly.
#   k2 in the loss:    beta * L^2 / 2 (L the sequence log-ratio); E[L grad log pi] = grad KL(pi || ref), exactly.
#   k3 in the loss:    per-token r - log r - 1 (r = ref / pi), as GRPO uses it; its expected gradient is
#                      sum_t E_prefix[grad KL(ref_t || pi_t)], the reverse KL per token (the same as the
#                      forward one to first order near the reference).
# Refused: k1 in the loss (its expected gradient is zero: pure noise) and k2/k3 in the reward (their
# score-function gradients do not point along grad KL; k3's measured cosine was -0.31 near the reference).
KL_SETTINGS = {("k1", True): "k1 in the reward", ("k2", False): "k2 in the loss", ("k3", False): "k3 in the loss"}


def check_kl_setting(estimator: str, in_reward: bool) -> None:
    """Refuse a KL estimator / placement whose gradient is not the KL's, naming the valid ones."""
    if (estimator, in_reward) not in KL_SETTINGS:
        where = "in the reward (kl_in_reward: true)" if in_reward else "in the loss (kl_in_reward: false)"
        valid = "; ".join(f"{name} (kl_estimator: {e}, kl_in_reward: {str(r).lower()})" for (e, r), name in KL_SETTINGS.items())
        raise ValueError(f"kl_estimator {estimator!r} {where} does not give the gradient of the KL penalty; use one of: {valid}")


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-sequence KL(pi || ref) estimate over the masked tokens, shape (N,).

    Args:
        logps, ref_logps: (N, C) log-probs of the sampled tokens under the policy and the reference.
        mask: (N, C) 1 on completion tokens.
        estimator: "k1" (sum of log-ratios L), "k2" (L^2 / 2) or "k3" (sum of per-token r - log r - 1,
            r = ref / pi).
    """
    log_ratio = (logps - ref_logps) * mask
    if estimator == "k1":
        return log_ratio.sum(-1)
    if estimator == "k2":
        return 0.5 * log_ratio.sum(-1) ** 2
    if estimator == "k3":
        return ((torch.exp(-log_ratio) + log_ratio - 1) * mask).sum(-1)
    raise ValueError(f"unknown kl_estimator {estimator!r}: choose from k1, k2, k3")


@dataclass
class RLOOLoss:
    """The RLOO objective and what the method logs beside it."""

    loss: torch.Tensor  # scalar: policy term + KL term (in the loss) - entropy bonus
    policy_loss: torch.Tensor  # scalar
    kl_loss: torch.Tensor  # scalar, 0 when the KL is in the reward
    advantages: torch.Tensor  # (N,) leave-one-out advantages of the shaped rewards
    shaped_rewards: torch.Tensor  # (N,) rewards minus kl_coef * KL when the KL is in the reward
    kl: torch.Tensor  # (N,) k1 sequence KL estimate (detached): what is logged as the KL


def rloo_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    k: int,
    kl_coef: float,
    kl_estimator: str = "k1",
    kl_in_reward: bool = True,
    normalization: str = "sequence",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    keep: torch.Tensor | None = None,
) -> RLOOLoss:
    """REINFORCE with a leave-one-out baseline on k samples per prompt (samples of a prompt adjacent).

    Args:
        logps: (N, C) policy log-probs of the sampled tokens at the sampling temperature (with gradient).
        ref_logps: (N, C) reference log-probs of the same tokens at the same temperature.
        mask: (N, C) 1 on completion tokens (up to and including the stop token).
        rewards: (N,) reward of each completion.
        k: samples per prompt (N = B * k).
        kl_coef: beta, the weight of the KL penalty.
        kl_estimator, kl_in_reward: where the KL goes (``check_kl_setting`` lists the valid pairs).
        normalization: "sequence": the summed token terms are averaged over the N sequences (the
            unbiased estimator of grad E[R]); "token": divided by the number of loss tokens.
        entropy: (N, C) per-token entropies at the sampling temperature (needed if entropy_coef).
        entropy_coef: weight of a bonus on the mean token entropy (0: off).
        keep: (N,) bool, rows that carry loss (False: e.g. truncated completions masked out). They
            still count in their group's baselines.

    Returns:
        ``RLOOLoss``. With R = rewards - kl_coef * KL_k1 (KL in the reward) and A its leave-one-out
        advantage, the policy term is ``-sum_i A_i sum_t logps_it m_it / D`` (D = N or the token count).
    """
    check_kl_setting(kl_estimator, kl_in_reward)
    if normalization not in ("sequence", "token"):
        raise ValueError(f"normalization must be 'sequence' or 'token', got {normalization!r}")
    kl = sequence_kl(logps.detach(), ref_logps, mask, "k1")
    shaped = rewards - kl_coef * kl if kl_in_reward else rewards
    advantages = ops.rloo_advantages(shaped, k)
    loss_mask = mask if keep is None else mask * keep[:, None].to(mask.dtype)
    denominator = mask.new_tensor(float(mask.size(0))) if normalization == "sequence" else loss_mask.sum().clamp(min=1)
    policy_loss = -(advantages[:, None] * logps * loss_mask).sum() / denominator
    kl_loss = policy_loss.new_zeros(())
    if not kl_in_reward:
        rows = keep.to(mask.dtype) if keep is not None else torch.ones_like(rewards)
        kl_loss = kl_coef * (sequence_kl(logps, ref_logps, mask, kl_estimator) * rows).sum() / denominator
    loss = policy_loss + kl_loss
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef needs the per-token entropies")
        loss = loss - entropy_coef * (entropy * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return RLOOLoss(loss, policy_loss.detach(), kl_loss.detach(), advantages, shaped, kl)

"""Online-RL objectives as objects, chosen in a config by ``class_path`` (like DPO's ``loss: SigmoidDPO``).

An objective holds every choice of the maths and checks it when built: the advantage estimator, the
aggregation over tokens and completions, the KL (placement, estimator, weight), the entropy bonus and
its own per-token surrogate. The loop (``methods.online``) hands it one ``PolicyGradientBatch`` of named
fields per micro-batch and never looks at its settings beyond the three questions it answers
(``needs_reference``, ``shapes_rewards``, ``advantages_need_the_batch``).

For a micro-batch of completions y_i (tokens y_it, loss mask m_it), advantages A_i and aggregation
weights c_i (``policy_gradient.aggregation_weights``, always over the whole optimiser step):

    L = sum_i c_i sum_t m_it [ w_it * l_it + beta * kl_it ]  -  entropy_coef * (token mean of the entropy)

``w_it`` are the importance weights against an engine's numerics (TIS, else 1), ``kl_it`` the per-token
KL only when it sits in the loss, and ``l_it`` the surrogate of each class, with rho the ratio of the
current to the sampling weights (per token, or per sequence: exp of the mean token log-ratio):

    ClippedRatio   -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A), rho first capped at delta (two-sided)
    GSPO           the same with rho per sequence (Zheng et al., 2025)
    CISPO          -sg(min(rho, eps_max)) A log pi             (MiniMax-M1: the clipped weight, detached)
    SAPO           -(4 / tau) sigmoid(tau (rho - 1)) A          (a soft gate in place of the clip)
    VESPO          -sg(phi(w)) A log pi, phi(w) = exp(lam + k log w - lam w), w the sequence ratio

On the sampling weights (one pass of one optimiser step, no TIS) the loop passes no old log-probs:
ClippedRatio at token level then takes the REINFORCE form -A log pi (the same gradient as rho = 1 and
the loss value RLOO has always logged); the others use rho = exp(log pi - sg(log pi)) = 1, as TRL does.
Every surrogate, aggregation and KL term equals TRL 1.16's ``GRPOTrainer._compute_loss`` on pinned inputs
(``tests/objectives/test_trl_parity.py``); ``methods.GRPO`` maps TRL's ``loss_type`` names onto these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lit_align.objectives import policy_gradient as pg


@dataclass
class PolicyGradientBatch:
    """What an objective reads of one micro-batch of N completions (C completion positions each)."""

    logps: torch.Tensor  # (N, C) current policy's log-probs of the sampled tokens (with gradient)
    mask: torch.Tensor  # (N, C) loss mask: completion tokens of the rows that carry loss
    advantages: torch.Tensor  # (N,)
    step_sequences: float  # completions in the whole optimiser step (this rank's)
    step_tokens: float  # loss tokens in the whole optimiser step (the ranks' mean)
    max_new_tokens: int  # the sampling limit (Dr. GRPO's constant)
    old_logps: torch.Tensor | None = None  # (N, C) the sampling weights'; None: they are the current ones
    ref_logps: torch.Tensor | None = None  # (N, C) the reference's; needed for a KL in the loss
    is_weights: torch.Tensor | None = None  # (N, C) truncated importance weights against the engine (TIS)
    entropy: torch.Tensor | None = None  # (N, C) per-token entropies; needed for an entropy bonus


@dataclass
class PolicyGradientResult:
    """A micro-batch's loss and what a method logs beside it."""

    loss: torch.Tensor  # scalar: policy term + KL term (in the loss) - entropy bonus
    policy_loss: torch.Tensor  # scalar, detached
    kl_loss: torch.Tensor  # scalar, detached; 0 when the KL is in the reward
    clipped: torch.Tensor  # scalar: loss tokens whose surrogate is clipped (no gradient there)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(map(str, allowed))}")


class PolicyGradient:
    """The parts every online-RL objective shares; subclasses give the per-token surrogate."""

    def __init__(
        self,
        estimator: Literal["rloo", "grpo"] = "rloo",
        scale_rewards: Literal["group", "batch", "none"] = "group",
        aggregation: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "sequence",
        kl_coef: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_in_reward: bool = True,
        entropy_coef: float = 0.0,
        importance_sampling_level: Literal["token", "sequence"] = "token",
    ):
        """
        Args:
            estimator: advantages: "rloo" (leave-one-out baseline) or "grpo" (group mean, then scaled).
            scale_rewards: grpo only: divide by the group's std, the batch's, or "none" (Dr. GRPO).
            aggregation: "sequence" (sum over tokens / completions), "sequence_mean" (each completion's
                token mean), "token" (DAPO: over the step's tokens) or "dr_grpo" (/ completions x max_new_tokens).
            kl_coef: weight of the KL to the reference (0: no reference is loaded or run).
            kl_estimator: "k1" (in the reward), "k2" or "k3" (in the loss).
            kl_in_reward: subtract the KL from the reward (k1) or add it to the loss (k2, k3).
            entropy_coef: weight of a bonus on the mean token entropy (0: off).
            importance_sampling_level: the ratio to the sampling weights per "token" or per "sequence".
        """
        _choice("estimator", estimator, ("rloo", "grpo"))
        _choice("scale_rewards", scale_rewards, ("group", "batch", "none"))
        _choice("aggregation", aggregation, pg.AGGREGATIONS)
        _choice("importance_sampling_level", importance_sampling_level, ("token", "sequence"))
        pg.check_kl_setting(kl_estimator, kl_in_reward)
        for name, value in (("kl_coef", kl_coef), ("entropy_coef", entropy_coef)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.estimator, self.scale_rewards, self.aggregation = estimator, scale_rewards, aggregation
        self.kl_coef, self.kl_estimator, self.kl_in_reward = kl_coef, kl_estimator, kl_in_reward
        self.entropy_coef, self.importance_sampling_level = entropy_coef, importance_sampling_level

    # --- what the loop asks ------------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def shapes_rewards(self) -> bool:
        """The KL sits in the reward: the sampling weights' log-probs are needed before the advantages."""
        return self.kl_in_reward and self.kl_coef > 0

    @property
    def zero_advantage_adds_nothing(self) -> bool:
        """Whether a completion whose advantage is 0 adds nothing to the loss or its gradient: true of every
        surrogate here (each is the advantage times a factor) unless the KL sits in the loss or an entropy
        bonus is on. The loop then skips the passes of groups whose advantages are all 0. A subclass whose
        surrogate is not proportional to the advantage must return False."""
        return (self.kl_in_reward or not self.kl_coef) and not self.entropy_coef

    @property
    def advantages_need_the_batch(self) -> bool:
        """Whether a group's advantages depend on other groups (GRPO's batch std)."""
        return self.estimator == "grpo" and self.scale_rewards == "batch"

    # --- rewards to advantages ---------------------------------------------------------------------
    def shaped_rewards(self, rewards: torch.Tensor, sampling_logps: torch.Tensor | None,
                       ref_logps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """(N,) rewards less kl_coef x the k1 sequence KL where the KL sits in the reward."""
        if not self.shapes_rewards:
            return rewards
        return rewards - self.kl_coef * pg.sequence_kl(sampling_logps, ref_logps, mask)

    def advantages(self, rewards: torch.Tensor, k: pg.Sizes, batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) advantages of groups of adjacent samples, k per prompt or ``k[g]`` in group g (``pg.Sizes``);
        ``batch_rewards``: every rank's, for a batch std."""
        return pg.group_advantages(rewards, k, self.estimator, self.scale_rewards, batch_rewards)

    # --- the loss ----------------------------------------------------------------------------------
    def log_ratio(self, logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log rho: (N, C) per token, or (N, 1) per sequence (the mean over its loss tokens)."""
        log_ratio = logps - old_logps
        if self.importance_sampling_level == "token":
            return log_ratio
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)

    folds_in_is_weights = False  # True: the surrogate takes the TIS weights into its own ratio

    def surrogate(self, logps, old_logps, advantages, mask, is_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token loss l_it, where it is clipped), both broadcastable to (N, C)."""
        raise NotImplementedError

    def on_policy_surrogate(self, logps, advantages, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The surrogate on the sampling weights themselves: rho = 1 with its gradient."""
        return self.surrogate(logps, logps.detach(), advantages, mask)

    def __call__(self, batch: PolicyGradientBatch) -> PolicyGradientResult:
        logps, mask, advantages = batch.logps, batch.mask, batch.advantages
        old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
        if batch.old_logps is None and not self.folds_in_is_weights:
            per_token, clipped = self.on_policy_surrogate(logps, advantages, mask)
        else:
            per_token, clipped = self.surrogate(logps, old_logps, advantages, mask, is_weights=batch.is_weights)
        if batch.is_weights is not None and not self.folds_in_is_weights:
            per_token = per_token * batch.is_weights
        weights = pg.aggregation_weights(mask, self.aggregation, batch.step_sequences, batch.step_tokens,
                                         batch.max_new_tokens)
        policy_loss = (weights * (per_token * mask).sum(-1)).sum()
        kl_loss = policy_loss.new_zeros(())
        if not self.kl_in_reward and self.kl_coef:
            if batch.ref_logps is None:
                raise ValueError("a KL in the loss needs the reference log-probs")
            kl_loss = self.kl_coef * (weights * pg.sequence_kl(logps, batch.ref_logps, mask, self.kl_estimator)).sum()
        loss = policy_loss + kl_loss
        if self.entropy_coef:
            if batch.entropy is None:
                raise ValueError("entropy_coef needs the per-token entropies")
            loss = loss - self.entropy_coef * (batch.entropy * mask).sum() / max(float(batch.step_tokens), 1.0)
        clipped = (clipped.expand_as(mask) & mask.bool()).sum()
        return PolicyGradientResult(loss, policy_loss.detach(), kl_loss.detach(), clipped)


class ClippedRatio(PolicyGradient):
    """PPO's clipped ratio (RLOO, GRPO, Dr. GRPO, DAPO), with INTELLECT-2's two-sided cap ``delta``."""

    def __init__(self, *args, epsilon: float = 0.2, epsilon_high: float | None = None, delta: float | None = None,
                 **kwargs):
        """
        Args:
            epsilon: lower clip range: the ratio is clipped at 1 - epsilon.
            epsilon_high: upper clip range, 1 + epsilon_high (None: epsilon; DAPO's clip-higher: 0.28).
            delta: two-sided clip: the unclipped ratio is also capped at delta (None: off; above 1 + epsilon_high).
        """
        super().__init__(*args, **kwargs)
        high = epsilon if epsilon_high is None else epsilon_high
        if not 0 <= epsilon < 1:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        if not high >= 0:
            raise ValueError(f"epsilon_high must be >= 0, got {epsilon_high}")
        if delta is not None and not delta > 1 + high:
            raise ValueError(f"delta must be above 1 + epsilon_high ({1 + high}), got {delta}")
        self.epsilon, self.epsilon_high, self.delta = epsilon, high, delta

    def surrogate(self, logps, old_logps, advantages, mask, is_weights=None):
        ratio = self.log_ratio(logps, old_logps, mask).exp()
        adv = advantages[:, None]
        clipped = ratio.clamp(1 - self.epsilon, 1 + self.epsilon_high) * adv
        unclipped = (ratio if self.delta is None else ratio.clamp(max=self.delta)) * adv
        return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()

    def on_policy_surrogate(self, logps, advantages, mask):
        if self.importance_sampling_level == "sequence":
            return super().on_policy_surrogate(logps, advantages, mask)
        return -advantages[:, None] * logps, torch.zeros_like(mask, dtype=torch.bool)


class GSPO(ClippedRatio):
    """Group Sequence Policy Optimization: the clipped ratio per sequence (TRL: importance_sampling_level
    "sequence"). With ``aggregation: sequence`` it is TRL's "luspo"."""

    def __init__(self, *args, epsilon: float = 3e-4, epsilon_high: float | None = 4e-4,
                 aggregation: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "sequence_mean", **kwargs):
        """
        Args:
            epsilon: lower clip range of the sequence ratio (the GSPO paper: 3e-4).
            epsilon_high: upper clip range (the paper: 4e-4).
            aggregation: as ``PolicyGradient``; the paper's is each completion's token mean.
        """
        kwargs.setdefault("importance_sampling_level", "sequence")
        super().__init__(*args, epsilon=epsilon, epsilon_high=epsilon_high, aggregation=aggregation, **kwargs)


class CISPO(PolicyGradient):
    """MiniMax-M1's clipped importance-sampling policy optimisation: every token keeps its gradient, weighted
    by the ratio capped at ``epsilon_max`` and detached."""

    def __init__(self, *args, epsilon_max: float = 5.0,
                 aggregation: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "token", **kwargs):
        """
        Args:
            epsilon_max: cap of the importance ratio (TRL's epsilon_high under loss_type cispo; ScaleRL: 5.0).
            aggregation: as ``PolicyGradient``; TRL's cispo is the step's token mean.
        """
        super().__init__(*args, aggregation=aggregation, **kwargs)
        if not epsilon_max > 0:
            raise ValueError(f"epsilon_max must be > 0, got {epsilon_max}")
        self.epsilon_max = epsilon_max

    def surrogate(self, logps, old_logps, advantages, mask, is_weights=None):
        ratio = self.log_ratio(logps, old_logps, mask).exp()
        weight = ratio.clamp(max=self.epsilon_max).detach()
        return -weight * advantages[:, None] * logps, ((ratio > self.epsilon_max) & (advantages[:, None] > 0)).detach()


class SAPO(PolicyGradient):
    """Soft Adaptive Policy Optimization: a sigmoid gate of temperature tau in place of the hard clip."""

    def __init__(self, *args, temperature_pos: float = 1.0, temperature_neg: float = 1.05,
                 aggregation: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "sequence_mean", **kwargs):
        """
        Args:
            temperature_pos: gate temperature of tokens with a positive advantage.
            temperature_neg: gate temperature of the others.
            aggregation: as ``PolicyGradient``; TRL's sapo is each completion's token mean.
        """
        super().__init__(*args, aggregation=aggregation, **kwargs)
        if not (temperature_pos > 0 and temperature_neg > 0):
            raise ValueError(f"SAPO's temperatures must be > 0, got {temperature_pos} and {temperature_neg}")
        self.temperature_pos, self.temperature_neg = temperature_pos, temperature_neg

    def surrogate(self, logps, old_logps, advantages, mask, is_weights=None):
        ratio = self.log_ratio(logps, old_logps, mask).exp()
        adv = advantages[:, None]
        tau = torch.where(adv > 0, self.temperature_pos, self.temperature_neg)
        gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
        return -gate * adv, torch.zeros_like(gate, dtype=torch.bool)


class VESPO(PolicyGradient):
    """VESPO: the REINFORCE term weighted by a gamma-shaped function of the sequence's importance ratio
    (phi(1) = 1, detached), with its own shape per sign of the advantage; TIS weights join the ratio."""

    folds_in_is_weights = True

    def __init__(self, *args, k_pos: float = 2.0, lambda_pos: float = 3.0, k_neg: float = 3.0,
                 lambda_neg: float = 2.0, aggregation: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "token",
                 **kwargs):
        """
        Args:
            k_pos, lambda_pos: power and decay of phi for advantages >= 0.
            k_neg, lambda_neg: the same for negative advantages.
            aggregation: as ``PolicyGradient``; TRL's vespo is the step's token mean.
        """
        if kwargs.get("importance_sampling_level", "token") != "token":
            raise ValueError("VESPO forms its sequence ratio itself: importance_sampling_level must be 'token'")
        super().__init__(*args, aggregation=aggregation, **kwargs)
        self.k_pos, self.lambda_pos, self.k_neg, self.lambda_neg = k_pos, lambda_pos, k_neg, lambda_neg

    def surrogate(self, logps, old_logps, advantages, mask, is_weights=None):
        floor = math.log(1e-8)
        log_w = ((logps - old_logps).clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
        if is_weights is not None:  # the engine's correction joins the sequence ratio, in log space
            log_w = log_w + (is_weights.log().clamp(floor, 20.0) * mask).sum(-1, keepdim=True)
        log_w = log_w.clamp(floor, 20.0)
        adv = advantages[:, None]
        k = torch.where(adv >= 0, self.k_pos, self.k_neg)
        lam = torch.where(adv >= 0, self.lambda_pos, self.lambda_neg).clamp(min=1e-4)
        phi = (lam + k * log_w - lam * log_w.exp()).exp().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).detach()
        return -phi * adv * logps, torch.zeros_like(logps, dtype=torch.bool)

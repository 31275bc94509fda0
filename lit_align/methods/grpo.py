"""GRPO (Shao et al., 2024) and its corrections — Dr. GRPO (Liu et al., 2025), DAPO (Yu et al., 2025) —
on the same sample-once, learn-in-micro-batches loop as RLOO (``methods.online.OnlineRL``).

For each prompt, ``num_generations`` completions are sampled; advantages are centred on the group's
mean reward and, by default, divided by its std:

    A_i = (r_i - mean_group r) / (std_group r + 1e-4)            scale_rewards: "group" | "batch" | "none"
    L   = agg_i,t [ -min(rho_it A_i, clip(rho_it, 1 - epsilon, 1 + epsilon_high) A_i) ] + beta * KL_k3

with rho the ratio to the sampling weights (1 on the first pass of the first step: plain REINFORCE),
and ``loss_type`` the aggregation: "grpo" (mean of each completion's token mean), "dapo" / "bnpo"
(token mean over the optimiser step), "dr_grpo" (sum over tokens / (completions x max_new_tokens)), or
"sequence" (sum over tokens / completions). The std scaling makes GRPO's objective a different one
from E[r] (groups with little spread weigh more); with ``scale_rewards: none`` the expected gradient
is (k-1)/k grad E[r] (Dr. GRPO). The argument names are TRL's where the meaning is the same
(docs/grpo.md maps them to TRL and veRL). DAPO's other pieces are switches of the loop:
``epsilon_high`` (clip-higher), ``dynamic_sampling``, ``overlong_buffer``.
"""

from __future__ import annotations

from typing import Literal

from lit_align.methods.online import OnlineRL
from lit_align.rewards.base import Reward

# loss_type (TRL's names) -> the aggregation in objectives.policy_gradient. "bnpo" normalises by the
# tokens of a micro-batch in TRL; here every normaliser is the whole optimiser step's, which is "dapo".
LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token", "dapo": "token", "dr_grpo": "dr_grpo", "sequence": "sequence"}


class GRPO(OnlineRL):
    """Online RL with group-normalised advantages and PPO's clipped ratio."""

    def __init__(
        self,
        *args,
        reward: Reward,
        num_generations: int = 8,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo", "sequence"] = "dapo",
        scale_rewards: Literal["group", "batch", "none"] = "group",
        num_iterations: int = 1,
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            num_generations: completions sampled per prompt (at least 2).
            beta: weight of the per-token k3 KL to the reference, in the loss (0: no reference model).
            epsilon: lower clip range of the importance ratio (1 - epsilon).
            epsilon_high: upper clip range (1 + epsilon_high; None: epsilon; DAPO's clip-higher: 0.28).
            loss_type: aggregation over tokens and completions: grpo, bnpo, dapo, dr_grpo or sequence.
            scale_rewards: divide centred rewards by the group's std, the batch's, or not at all (none).
            num_iterations: passes over each generation batch (above 1 the clipped ratio matters).
        """
        if num_generations < 2:
            raise ValueError(f"num_generations must be at least 2, got {num_generations}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}: choose from {', '.join(LOSS_TYPES)}")
        super().__init__(*args, reward=reward, k=num_generations, estimator="grpo", scale_rewards=scale_rewards,
                         loss_aggregation=LOSS_TYPES[loss_type], kl_coef=beta, kl_estimator="k3", kl_in_reward=False,
                         epsilon=epsilon, epsilon_high=epsilon_high, num_iterations=num_iterations, **kwargs)
        self.num_generations, self.beta, self.loss_type = num_generations, beta, loss_type

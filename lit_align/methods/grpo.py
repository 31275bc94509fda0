"""GRPO (Shao et al., 2024) and its corrections and successors — Dr. GRPO (Liu et al., 2025), DAPO (Yu et
al., 2025), GSPO, CISPO, SAPO, VESPO — with TRL's argument names, on the loop RLOO runs on
(``methods.online.OnlineRL``); each ``loss_type`` is an objective of ``objectives.rl``.

For each prompt, ``num_generations`` completions are sampled; advantages are centred on the group's
mean reward and, by default, divided by its std:

    A_i = (r_i - mean_group r) / (std_group r + 1e-4)            scale_rewards: "group" | "batch" | "none"
    L   = agg_i,t [ -min(rho_it A_i, clip(rho_it, 1 - epsilon, 1 + epsilon_high) A_i) ] + beta * KL_k3

with rho the ratio to the sampling weights (1 on the first pass of the first step: plain REINFORCE),
and ``loss_type`` the aggregation and surrogate: "grpo" (mean of each completion's token mean), "dapo" /
"bnpo" (token mean over the optimiser step), "dr_grpo" (sum over tokens / (completions x
max_new_tokens)), "sequence" (sum over tokens / completions), "cispo" (``objectives.rl.CISPO``, its cap
``epsilon_high``), "sapo" (``SAPO``), "vespo" (``VESPO``), "luspo" (the sequence ratio summed over each
completion's tokens). ``importance_sampling_level: sequence`` takes the ratio per sequence (GSPO);
``delta`` caps the unclipped ratio (INTELLECT-2's two-sided clip). The std scaling makes GRPO's
objective a different one from E[r]; with ``scale_rewards: none`` the expected gradient is (k-1)/k
grad E[r] (Dr. GRPO). docs/grpo.md maps the names to TRL and veRL. DAPO's other pieces are switches of
the loop: ``dynamic_sampling``, ``overlong_buffer``. Other settings of an objective (SAPO's
temperatures, VESPO's shape): ``OnlineRL`` with ``objective:`` chosen by ``class_path``.
"""

from __future__ import annotations

from typing import Literal

from lit_align.methods.online import OnlineRL
from lit_align.objectives import rl
from lit_align.rewards.base import Reward

# loss_type (TRL's names) -> (objective class, aggregation). "bnpo" normalises by the tokens of a
# micro-batch in TRL; here every normaliser is the whole optimiser step's, which is "dapo".
LOSS_TYPES = {"grpo": (rl.ClippedRatio, "sequence_mean"), "bnpo": (rl.ClippedRatio, "token"),
              "dapo": (rl.ClippedRatio, "token"), "dr_grpo": (rl.ClippedRatio, "dr_grpo"),
              "sequence": (rl.ClippedRatio, "sequence"), "luspo": (rl.ClippedRatio, "sequence"),
              "cispo": (rl.CISPO, "token"), "sapo": (rl.SAPO, "sequence_mean"), "vespo": (rl.VESPO, "token")}
LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo", "sequence", "luspo", "cispo", "sapo", "vespo"]


def grpo_objective(loss_type: str, beta: float, epsilon: float, epsilon_high: float | None, delta: float | None,
                   scale_rewards: str, importance_sampling_level: str, entropy_coef: float) -> rl.PolicyGradient:
    """The objective TRL's GRPOTrainer computes for these settings."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: choose from {', '.join(LOSS_TYPES)}")
    cls, aggregation = LOSS_TYPES[loss_type]
    common = dict(estimator="grpo", scale_rewards=scale_rewards, aggregation=aggregation, kl_coef=beta,
                  kl_estimator="k3", kl_in_reward=False, entropy_coef=entropy_coef)
    if cls is rl.ClippedRatio:
        return cls(**common, epsilon=epsilon, epsilon_high=epsilon_high, delta=delta,
                   importance_sampling_level=importance_sampling_level)
    if delta is not None:
        raise ValueError(f"delta (the two-sided clip) applies to the clipped-ratio loss types, not {loss_type!r}")
    if cls is rl.CISPO:
        return cls(**common, epsilon_max=epsilon if epsilon_high is None else epsilon_high,
                   importance_sampling_level=importance_sampling_level)
    return cls(**common, importance_sampling_level=importance_sampling_level)


class GRPO(OnlineRL):
    """Online RL with group-normalised advantages and TRL's loss types (a preset of ``OnlineRL``)."""

    preset_arguments = ("k",)

    def __init__(
        self,
        *args,
        reward: Reward,
        num_generations: int = 8,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        loss_type: LossType = "dapo",
        scale_rewards: Literal["group", "batch", "none"] = "group",
        importance_sampling_level: Literal["token", "sequence"] = "token",
        entropy_coef: float = 0.0,
        num_iterations: int = 1,
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            num_generations: completions sampled per prompt (at least 2); a batch's ``group_sizes`` (set by a
                curriculum) take its place for that batch.
            beta: weight of the per-token k3 KL to the reference, in the loss (0: no reference model).
            epsilon: lower clip range of the importance ratio (1 - epsilon).
            epsilon_high: upper clip range (1 + epsilon_high; None: epsilon; DAPO's clip-higher: 0.28);
                under loss_type cispo, the cap of the ratio (ScaleRL: 5.0).
            delta: two-sided clip: cap of the unclipped ratio (None: off; INTELLECT-2).
            loss_type: grpo, bnpo, dapo, dr_grpo, sequence, luspo, cispo, sapo or vespo (TRL's names).
            scale_rewards: divide centred rewards by the group's std, the batch's, or not at all (none).
            importance_sampling_level: the ratio per "token" or per "sequence" (GSPO).
            entropy_coef: weight of a bonus on the mean token entropy (0: off).
            num_iterations: passes over each generation batch (above 1 the clipped ratio matters).
        """
        if num_generations < 2:
            raise ValueError(f"num_generations must be at least 2, got {num_generations}")
        objective = grpo_objective(loss_type, beta, epsilon, epsilon_high, delta, scale_rewards,
                                   importance_sampling_level, entropy_coef)
        super().__init__(*args, objective=objective, reward=reward, k=num_generations, num_iterations=num_iterations,
                         **kwargs)
        self.num_generations, self.beta, self.loss_type = num_generations, beta, loss_type

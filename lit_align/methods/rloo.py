"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024), online.

For each prompt x the policy samples k completions y_1..y_k at temperature T (eval mode, no_grad)
from pi_T = softmax(z / T). Each gets a reward r(x, y_i) from the configured reward source and,
with the default KL placement, a penalty on its KL to the reference at the same temperature:

    R_i = r(x, y_i) - kl_coef * sum_t [log pi_T(y_it) - log ref_T(y_it)]     (k1 in the reward)
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j                                     (sums to zero per group)
    L   = -(1/D) sum_i A_i * sum_t log pi_T(y_it | x, y_i,<t)                  (D = Bk: "sequence")

whose expected gradient is exactly grad(E[r] - kl_coef * KL(pi_T || ref_T)). Log-probs, the
reference's included, are taken at the sampling temperature; temperature 0 (greedy) is refused,
since k identical samples have zero advantages. The KL may instead sit in the loss as k2 (exact
gradient of the same KL) or k3 (GRPO's per-token form, the reverse KL's gradient);
``policy_gradient.check_kl_setting`` refuses the placements whose gradient is not a KL's. Completions
cut at ``max_new_tokens`` can be kept out of the loss (``mask_truncated_completions``).

The loop is ``methods.online.OnlineRL`` and the objective ``objectives.rl.ClippedRatio``: one
generation batch (``data.batch_size`` prompts x ``rloo_k``) is sampled once and learnt from in ``micro_batch_size`` pieces; with the defaults (one
pass, one optimiser step per generation batch) the update is exactly the on-policy gradient above,
and further passes or steps use PPO's clipped ratio (``epsilon``). Rewards are not normalised.
"""

from __future__ import annotations

from typing import Literal

from lit_align.methods.online import OnlineRL
from lit_align.objectives.rl import ClippedRatio
from lit_align.rewards.base import Reward


class RLOO(OnlineRL):
    """Online RL with k samples per prompt and leave-one-out advantages (a preset of ``OnlineRL``)."""

    preset_arguments = ("k",)

    def __init__(
        self,
        *args,
        reward: Reward,
        rloo_k: int = 4,
        kl_coef: float = 0.03,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_in_reward: bool = True,
        normalization: Literal["sequence", "sequence_mean", "token", "dr_grpo"] = "sequence",
        entropy_coef: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            rloo_k: completions sampled per prompt (at least 2); a batch's ``group_sizes`` (set by a
                curriculum) take its place for that batch.
            kl_coef: weight of the KL to the reference.
            kl_estimator: "k1" (log-ratio; in the reward), "k2" (half squared sequence log-ratio; in the
                loss) or "k3" (per-token r - log r - 1; in the loss).
            kl_in_reward: subtract the KL from the reward (true; k1) or add it to the loss (false; k2, k3).
            normalization: how token terms are averaged: "sequence" (over completions; unbiased),
                "token" (over the step's completion tokens), "sequence_mean" or "dr_grpo" (see docs/grpo.md).
            entropy_coef: weight of a bonus on the mean token entropy (0: off).
            epsilon: lower clip range of the ratio, used off the sampling weights (later passes or steps).
            epsilon_high: upper clip range (None: epsilon).
        """
        if rloo_k < 2:
            raise ValueError(f"rloo_k must be at least 2, got {rloo_k}")
        objective = ClippedRatio(estimator="rloo", aggregation=normalization, kl_coef=kl_coef, kl_estimator=kl_estimator,
                                 kl_in_reward=kl_in_reward, entropy_coef=entropy_coef, epsilon=epsilon,
                                 epsilon_high=epsilon_high)
        super().__init__(*args, objective=objective, reward=reward, k=rloo_k, **kwargs)
        self.rloo_k = rloo_k

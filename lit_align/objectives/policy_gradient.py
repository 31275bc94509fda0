"""The pure pieces of online RL's maths (RLOO, GRPO, Dr. GRPO, DAPO); ``objectives.rl`` builds the losses.

For a generation batch of prompts, each with its group of completions y_i (tokens y_it, mask m_it)
sampled from pi_old:

    R_i   = r_i - beta * KL_k1(y_i)                         (KL in the reward; else R_i = r_i)
    A_i   = advantages(R, sizes)                              rloo: R_i - mean_{j != i} R_j
                                                            grpo: (R_i - mean_group R) / (std + 1e-4)
                                                            dr_grpo: R_i - mean_group R

and ``c_i``, the aggregation of each sequence's summed token terms, always over the whole optimiser step
so that micro-batches add up to the one-batch gradient exactly:

    sequence      c_i = 1 / N                        (the unbiased REINFORCE estimator of grad E[R])
    sequence_mean c_i = 1 / (N |y_i|)                (GRPO's paper: each completion's token mean)
    token         c_i = 1 / sum_j |y_j|              (DAPO: token mean over the whole step's tokens)
    dr_grpo       c_i = 1 / (N * max_new_tokens)     (Dr. GRPO's constant normaliser)

Also here: the KL estimators and where each may go, DAPO's overlong punishment, the truncated importance
weights of TIS, and the test for groups without signal.

Group sizes: every function that reads groups takes ``sizes``, an int k (every group holds k adjacent
rows) or one size per group (group g holds the ``sizes[g]`` rows after group g-1's). Runs of groups of
one size are computed as one (groups, size) block, so equal sizes give exactly the int path's numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch

Estimator = Literal["rloo", "grpo", "dr_grpo"]
ScaleRewards = Literal["group", "batch", "none"]
Sizes = int | Sequence[int] | torch.Tensor  # k for every group, or each group's size
Aggregation = Literal["sequence", "sequence_mean", "token", "dr_grpo"]
AGGREGATIONS = ("sequence", "sequence_mean", "token", "dr_grpo")
GRPO_STD_EPS = 1e-4  # added to the std before dividing (TRL uses the same constant)

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


def size_list(sizes: Sizes, rows: int) -> list[int]:
    """Each group's size for ``rows`` adjacent rows; refuses sizes that do not cover them exactly.

    >>> size_list(3, 6), size_list([2, 4], 6)
    ([3, 3], [2, 4])
    """
    if isinstance(sizes, int):
        if sizes < 1 or rows % sizes:
            raise ValueError(f"{rows} rows do not split into groups of {sizes}")
        return [sizes] * (rows // sizes)
    out = [int(s) for s in (sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes)]
    if sum(out) != rows or any(s < 1 for s in out):
        raise ValueError(f"group sizes {out} do not cover {rows} rows")
    return out


def grouped(rewards: torch.Tensor, sizes: Sizes) -> list[torch.Tensor]:
    """``rewards`` (N,) as (groups, size) blocks, one per run of consecutive groups of one size (one block
    for an int k).

    >>> [b.tolist() for b in grouped(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), [2, 2, 3])]
    [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0, 7.0]]]
    """
    if isinstance(sizes, int):
        return [rewards.view(-1, sizes)]
    blocks, start = [], 0
    for size, run in itertools.groupby(size_list(sizes, rewards.numel())):
        count = len(list(run))
        blocks.append(rewards[start : start + count * size].view(count, size))
        start += count * size
    return blocks or [rewards.view(0, 1)]


def _smallest(sizes: Sizes) -> int:
    if isinstance(sizes, int):
        return sizes
    listed = sizes.tolist() if isinstance(sizes, torch.Tensor) else list(sizes)
    return min(listed, default=2)


def rloo_advantages(rewards: torch.Tensor, k: Sizes) -> torch.Tensor:
    """Leave-one-out advantages: each sample's reward minus the mean of the others in its group.

    Args:
        rewards: (N,) with the samples of each prompt adjacent.
        k: samples per prompt, or each group's size (``Sizes``).
    Returns:
        (N,) advantages; each group sums to zero.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0]), k=2).tolist()
    [1.0, -1.0, -3.0, 3.0]
    >>> rloo_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0]), k=[2, 3]).tolist()
    [1.0, -1.0, -3.0, 1.5, 1.5]
    """
    if _smallest(k) < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got k={k}")
    out = []
    for groups in grouped(rewards, k):
        baseline = (groups.sum(dim=1, keepdim=True) - groups) / (groups.size(1) - 1)
        out.append((groups - baseline).reshape(-1))
    return out[0] if len(out) == 1 else torch.cat(out)


def group_advantages(rewards: torch.Tensor, k: Sizes, estimator: Estimator = "rloo",
                     scale_rewards: ScaleRewards = "group", batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages of ``rewards`` (N,), the samples of each prompt adjacent; ``k``: samples per prompt, or
    each group's size (``Sizes``).

    - ``rloo``: leave-one-out baseline; expected gradient exactly grad E[R]. ``scale_rewards`` is ignored.
    - ``grpo``: group mean as baseline, divided by the group's std (``scale_rewards="group"``), the
      whole batch's std (``"batch"``) or nothing (``"none"``); unbiased stds, plus 1e-4. The batch std is
      over ``batch_rewards`` where given (under data parallelism: every rank's rewards), else ``rewards``.
    - ``dr_grpo``: group mean as baseline, no scaling; expected gradient (k-1)/k grad E[R] for a group of k.

    A group whose rewards are all equal gets advantages of exactly 0 (``uniform_groups``): its mean, summed
    in floating point, can miss the common value by an ulp, and the group std's 1e-4 floor would scale that
    residue up (eight rewards of 0.1 gave -7.4e-5 each, all of one sign). The online loop relies on the
    exact 0 to skip such groups' passes.

    >>> group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2, "dr_grpo").tolist()
    [-1.0, 1.0, 0.0, 0.0]
    >>> group_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0, 3.0]), [2, 3], "dr_grpo").tolist()
    [-1.0, 1.0, -1.0, -1.0, 2.0]
    >>> group_advantages(torch.full((8,), 0.1), 8, "grpo").tolist() == [0.0] * 8
    True
    """
    flat = per_row(uniform_groups(rewards, k), k, rewards.numel())
    return _advantages(rewards, k, estimator, scale_rewards, batch_rewards).masked_fill(flat, 0.0)


def per_row(values: torch.Tensor, k: Sizes, rows: int) -> torch.Tensor:
    """(G,) one value per group, repeated for each of the ``rows`` rows of its group (``Sizes``).

    >>> per_row(torch.tensor([True, False]), [1, 2], 3).tolist()
    [True, False, False]
    """
    return values.repeat_interleave(torch.tensor(size_list(k, rows), device=values.device))


def _advantages(rewards: torch.Tensor, k: Sizes, estimator: Estimator, scale_rewards: ScaleRewards,
                batch_rewards: torch.Tensor | None) -> torch.Tensor:
    if estimator == "rloo":
        return rloo_advantages(rewards, k)
    if estimator not in ("grpo", "dr_grpo"):
        raise ValueError(f"unknown advantage estimator {estimator!r}: choose rloo, grpo or dr_grpo")
    if _smallest(k) < 2:
        raise ValueError(f"{estimator} needs at least 2 samples per prompt, got k={k}")
    blocks = grouped(rewards, k)
    centred = torch.cat([(g - g.mean(dim=1, keepdim=True)).reshape(-1) for g in blocks])
    if estimator == "dr_grpo" or scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = torch.cat([g.std(dim=1, keepdim=True).expand_as(g).reshape(-1) for g in blocks])
    elif scale_rewards == "batch":
        std = (rewards if batch_rewards is None else batch_rewards).std().expand_as(centred)
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return centred / (std + GRPO_STD_EPS)


def uniform_groups(rewards: torch.Tensor, k: Sizes) -> torch.Tensor:
    """(G,) True where all rewards of a group are equal: such a group has zero advantages (no signal).
    ``k``: samples per prompt, or each group's size.

    >>> uniform_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist()
    [True, False]
    >>> uniform_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]), [2, 3]).tolist()
    [True, False]
    """
    return torch.cat([(g == g[:, :1]).all(dim=1) for g in grouped(rewards, k)])


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, a reward term from completion lengths (N,) in tokens.

    0 up to ``max_new_tokens - buffer`` tokens, then falling linearly to ``-factor`` at ``max_new_tokens``.

    >>> overlong_penalty(torch.tensor([10, 16, 20]), max_new_tokens=20, buffer=8).tolist()
    [0.0, -0.5, -1.0]
    """
    if not 0 < buffer <= max_new_tokens:
        raise ValueError(f"overlong buffer must be in 1..max_new_tokens ({max_new_tokens}), got {buffer}")
    start = max_new_tokens - buffer
    return 0.0 - factor * ((lengths.float() - start).clamp(min=0) / buffer).clamp(max=1.0)  # 0.0, not -0.0


def tis_weights(old_logps: torch.Tensor, engine_logps: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_engine, cap) per token, (N, C), without gradient.

    The engine drew the tokens from its own numerics (e.g. bf16 vLLM) while the trainer's pi_old is
    the float32 policy: the weights correct the expectation back to pi_old, truncated for variance.

    >>> tis_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, 0.0]]), cap=2.0).tolist()[0][1]
    0.3678794503211975
    """
    return (old_logps - engine_logps).exp().clamp(max=cap).detach()


def aggregation_weights(mask: torch.Tensor, how: Aggregation, num_sequences: int, num_tokens: float,
                        max_new_tokens: int) -> torch.Tensor:
    """(N,) weights c_i of each sequence's summed token terms (the table in the module docstring).

    Args:
        mask: (N, C) loss mask of this micro-batch's rows (rows kept out are all zero).
        how: "sequence", "sequence_mean", "token" or "dr_grpo".
        num_sequences: sequences in the whole optimiser step (N of the table).
        num_tokens: loss tokens in the whole optimiser step.
        max_new_tokens: the sampling limit, Dr. GRPO's constant.
    """
    rows = mask.new_ones(mask.size(0))
    if how == "sequence":
        return rows / num_sequences
    if how == "sequence_mean":
        return rows / (num_sequences * mask.sum(-1).clamp(min=1))
    if how == "token":
        return rows / max(float(num_tokens), 1.0)
    if how == "dr_grpo":
        return rows / (num_sequences * max_new_tokens)
    raise ValueError(f"unknown loss aggregation {how!r}: choose from {', '.join(AGGREGATIONS)}")

"""The reward-source protocol and its checks.

A reward source is a ``Reward``: ``reward(prompts, completions, records) -> (N,) tensor``: one
float per completion, where ``prompts[i]`` (text or messages) and ``records[i]`` (the source record,
e.g. with a Countdown target) belong to ``completions[i]``. Implementations: the Countdown verifier
(``lit_align.tasks.countdown.CountdownVerifier``) and reward-model scorers
(``lit_align.rewards.model.RewardModelScorer``).
"""

from __future__ import annotations

import torch


class Reward:
    """Base of the reward sources (a plain base class, so configs can pick one by class_path)."""

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Reward:
        """Move any model this source runs to ``device`` (rule-based sources have none)."""
        return self

    def answer(self, completion: str) -> str | None:
        """The answer ``completion`` commits to, written so that equal answers compare equal (best-of-N's
        majority vote counts them); None where it gives none. Sources that read no answers (reward models,
        checkers of instructions) return None for every completion."""
        return None


class RewardError(ValueError):
    """A reward source returned something unusable (wrong shape, NaN or infinite values)."""


def score_samples(reward: Reward, records: list[dict], completions: list[str], n: int, prompts: list) -> torch.Tensor:
    """The ``(len(records) * n,)`` scores of ``n`` completions per record (grouped record by record).

    ``prompts``: each record's prompt (text or messages) as the data already read it (``PromptBatch.prompts``).
    """
    expanded = [r for r in records for _ in range(n)]
    return checked_rewards(reward, [p for p in prompts for _ in range(n)], completions, expanded)


def checked_rewards(reward: Reward, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
    """Call ``reward`` and insist on one finite float per completion."""
    values = reward(prompts, completions, records)
    name = type(reward).__name__
    if not isinstance(values, torch.Tensor):
        raise RewardError(f"reward source {name} returned {type(values).__name__}, expected a tensor")
    if values.shape != (len(completions),):
        raise RewardError(f"reward source {name} returned shape {tuple(values.shape)} for {len(completions)} completions")
    if not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        raise RewardError(f"reward source {name} returned NaN or infinite rewards at positions {bad[:10]}")
    return values.float()


class WeightedSum(Reward):
    """``sum_j w_j * reward_j``: several reward sources combined (e.g. an RM plus a verifier)."""

    def __init__(self, sources: list[Reward], weights: list[float] | None = None):
        """
        Args:
            sources: the reward sources to combine.
            weights: one weight per source (default: all 1).
        """
        weights = weights if weights is not None else [1.0] * len(sources)
        if len(weights) != len(sources) or not sources:
            raise ValueError(f"WeightedSum needs one weight per source: {len(sources)} sources, {len(weights)} weights")
        self.sources, self.weights = sources, weights

    def to(self, device: torch.device | str) -> WeightedSum:
        for source in self.sources:
            source.to(device)
        return self

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        total = torch.zeros(len(completions))
        for source, weight in zip(self.sources, self.weights):
            total += weight * checked_rewards(source, prompts, completions, records)
        return total

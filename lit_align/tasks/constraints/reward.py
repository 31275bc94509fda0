"""Scoring responses against their record's constraints: a reward for RL and IFEval's accuracies."""

from __future__ import annotations

import torch

from lit_align.rewards.base import Reward
from lit_align.tasks.constraints.schema import check_record


class ConstraintReward(Reward):
    """Share of a record's constraints that each completion satisfies (prompts are not needed)."""

    def __init__(self, all_or_nothing: bool = False):
        """
        Args:
            all_or_nothing: reward 1.0 only when every constraint holds, else 0.0 (default: the share).
        """
        self.all_or_nothing = all_or_nothing

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        scores = []
        for i, (text, record) in enumerate(zip(completions, records)):
            results = check_record(text, record, f"record {i}")
            scores.append(float(all(results)) if self.all_or_nothing else sum(results) / len(results))
        return torch.tensor(scores, dtype=torch.float32)


def adherence(completions: list[str], records: list[dict]) -> dict:
    """Prompt-level and instruction-level accuracy (IFEval's "strict" numbers), overall and per kind."""
    if len(completions) != len(records) or not records:
        raise ValueError(f"need as many completions as records, at least one: got {len(completions)} and {len(records)}")
    prompt_hits, by_kind = 0, {}
    for i, (text, record) in enumerate(zip(completions, records)):
        results = check_record(text, record, f"record {i}")
        prompt_hits += all(results)
        for d, ok in zip(record["constraints"], results):
            by_kind.setdefault(d["kind"], []).append(ok)
    outcomes = [ok for oks in by_kind.values() for ok in oks]
    return {
        "prompt_level": prompt_hits / len(records),
        "instruction_level": sum(outcomes) / len(outcomes),
        "num_prompts": len(records),
        "num_instructions": len(outcomes),
        "by_kind": {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())},
    }

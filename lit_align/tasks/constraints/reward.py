"""Scoring responses with IFEval's reference checks: the RL reward (RLVR-IF) and IFEval's four numbers."""

from __future__ import annotations

import torch

from lit_align.rewards.base import Reward
from lit_align.tasks.constraints.schema import check_record


class ConstraintReward(Reward):
    """The share of a record's IFEval instructions each completion meets (prompts are not needed)."""

    def __init__(self, loose: bool = False, all_or_nothing: bool = False):
        """
        Args:
            loose: judge by IFEval's loose check (also accepted without the first/last line or ``*``);
                default: the strict check.
            all_or_nothing: reward 1.0 only when every instruction is met, else 0.0 (default: the share).
        """
        self.loose, self.all_or_nothing = loose, all_or_nothing

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        scores = []
        for i, (text, record) in enumerate(zip(completions, records)):
            judgement = check_record(text, record, f"record {i}")
            met = judgement.loose if self.loose else judgement.strict
            scores.append(float(all(met)) if self.all_or_nothing else sum(met) / len(met))
        return torch.tensor(scores, dtype=torch.float32)


FOUR = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")


def adherence(completions: list[str], records: list[dict]) -> dict:
    """IFEval's four numbers (prompt- and instruction-level accuracy, strict and loose), the counts, and
    the strict instruction-level accuracy per kind. ``judgements`` holds each response's verdicts."""
    if len(completions) != len(records) or not records:
        raise ValueError(f"need as many completions as records, at least one: got {len(completions)} and {len(records)}")
    judgements = [check_record(text, record, f"record {i}") for i, (text, record) in enumerate(zip(completions, records))]
    by_kind: dict[str, list[bool]] = {}
    for record, judgement in zip(records, judgements):
        for kind, ok in zip(record["instruction_id_list"], judgement.strict):
            by_kind.setdefault(kind, []).append(ok)
    strict = [ok for j in judgements for ok in j.strict]
    loose = [ok for j in judgements for ok in j.loose]
    return {
        "prompt_level_strict": sum(all(j.strict) for j in judgements) / len(judgements),
        "instruction_level_strict": sum(strict) / len(strict),
        "prompt_level_loose": sum(all(j.loose) for j in judgements) / len(judgements),
        "instruction_level_loose": sum(loose) / len(loose),
        "num_prompts": len(records),
        "num_instructions": len(strict),
        "by_kind": {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())},
        "judgements": judgements,
    }

"""The Countdown verifier: the problem a record holds, and a safe score of an untrusted answer.

Scoring (the study's shaped reward), on the *last* ``<answer>...</answer>`` of a completion:
    1.0  the expression equals the target and uses exactly the multiset ``nums``;
    0.1  an answer tag is there, but the answer is wrong, misuses numbers or does not parse;
    0.0  no ``<answer>...</answer>`` at all.

Safety: completions are untrusted model output. They are never handed to ``eval``, ``exec``
or ``ast``; a small parser accepts only ASCII digits, ``+ - * /``, parentheses and
whitespace, and gives up early on long answers, deep nesting, many literals, or values and
denominators that grow too large, so any input is scored within a millisecond or so.
Unary operators are rejected: Countdown numbers are positive, and a bare grammar
keeps each literal a plain digit run that maps one-to-one onto ``nums``.
"""

from __future__ import annotations

import torch

from lit_align.rewards.base import Reward
from lit_align.tasks.arithmetic import parse_expression

_OPEN, _CLOSE = "<answer>", "</answer>"


def read_problem(record: dict) -> tuple[int, list[int]]:
    """Target and numbers as ints; hub or JSON data may store them as strings.

    >>> read_problem({"target": "24", "nums": "[1, 2, 3, 4]"})
    (24, [1, 2, 3, 4])
    """
    nums = record["nums"]
    if isinstance(nums, str):
        nums = nums.strip("[]").replace(",", " ").split()
    return int(record["target"]), [int(n) for n in nums]


def _last_answer(completion: str) -> str | None:
    """Text inside the last closed answer tag pair; rfind keeps this linear on any input."""
    end = completion.rfind(_CLOSE)
    if end < 0:
        return None
    start = completion.rfind(_OPEN, 0, end)
    return None if start < 0 else completion[start + len(_OPEN) : end]


def score(completion: str, record: dict) -> float:
    """1.0 for a correct answer, 0.1 for a present but wrong/invalid one, 0.0 for none.

    Only the completion is untrusted; a record without int-like ``target``/``nums`` is a
    data bug and raises ``ValueError`` (or ``KeyError``) instead of scoring.
    """
    target, nums = read_problem(record)
    answer = _last_answer(completion)
    if answer is None:
        return 0.0
    try:
        value, literals = parse_expression(answer.strip())
    except ValueError:
        return 0.1
    if value == target and sorted(literals) == sorted(nums):
        return 1.0
    return 0.1


class CountdownVerifier(Reward):
    """Reward source for Countdown: ``score`` of each completion against its record's problem.

    ``verifier(prompts, completions, records) -> (N,) float tensor``; prompts are not needed.
    """

    def answer(self, completion: str) -> str | None:
        """The expression of the last answer, whitespace removed, so ``1 + 2`` and ``1+2`` vote together.

        >>> CountdownVerifier().answer("<answer> 1 + 2 </answer> then <answer>(3)*4</answer>")
        '(3)*4'
        >>> CountdownVerifier().answer("<answer> 1 + 2 </answer>"), CountdownVerifier().answer("no tag")
        ('1+2', None)
        """
        found = _last_answer(completion)
        return None if found is None else "".join(found.split())

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        return torch.tensor([score(c, r) for c, r in zip(completions, records)], dtype=torch.float32)

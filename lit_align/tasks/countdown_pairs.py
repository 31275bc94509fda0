"""Verifier-labelled Countdown preference pairs, made offline at zero cost.

The chosen response is a correct synthetic reasoning trace (verifier score 1.0). The rejected one is
the same trace spoiled in one of three ways, cycled per problem: its answer replaced by one of the
trace's own wrong attempts, a number in the answer changed to one that was not given, or the
answer left out. The verifier scores both; a pair is kept only when it prefers the chosen one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from lit_align.tasks.countdown.generator import generate_problems
from lit_align.tasks.countdown.traces import prompt_text, reasoning_trace, wrong_attempt
from lit_align.tasks.countdown.verifier import read_problem, score

SPOILERS = ("wrong_value", "wrong_number", "no_answer")


def spoil(trace: str, record: dict, how: str, rng: random.Random) -> str | None:
    """A worse version of a correct ``trace``; None when this problem offers no such variant."""
    think, _, answer = trace.partition("<answer>")
    answer = answer.removesuffix("</answer>")
    if how == "no_answer":
        return think.rstrip()
    if how == "wrong_number":
        literals = re.findall(r"\d+", answer)
        pick = rng.choice(literals)
        replaced = re.sub(rf"\b{pick}\b", str(int(pick) + rng.randint(1, 9)), answer, count=1)
        return f"{think}<answer>{replaced}</answer>"
    target, nums = read_problem(record)
    for _ in range(40):
        attempt = wrong_attempt(rng, nums, target)
        if attempt is not None:
            return f"{think}<answer>{attempt[0]}</answer>"
    return None


def to_pair_record(problem: dict, index: int, seed: int) -> dict | None:
    rng = random.Random(f"{seed}:{index}")
    chosen = reasoning_trace(problem)
    rejected = spoil(chosen, problem, SPOILERS[index % len(SPOILERS)], rng)
    if rejected is None:
        return None
    s_chosen, s_rejected = score(chosen, problem), score(rejected, problem)
    if not s_chosen > s_rejected:
        return None
    return {
        "prompt": [{"role": "user", "content": prompt_text(problem)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "score_chosen": s_chosen,
        "score_rejected": s_rejected,
        "target": problem["target"],
        "nums": problem["nums"],
    }


class CountdownPairSource:
    """Countdown preference pairs labelled by the verifier (a data ``Source``)."""

    def __init__(self, num_problems: int = 1000, seed: int = 0, min_numbers: int = 3, max_numbers: int = 4):
        """
        Args:
            num_problems: how many problems to draw (a few may yield no pair).
            seed: random seed for problems and spoilers.
            min_numbers: fewest numbers in a problem.
            max_numbers: most numbers in a problem.
        """
        self.num_problems, self.seed = num_problems, seed
        self.min_numbers, self.max_numbers = min_numbers, max_numbers

    def records(self) -> Iterator[tuple[str, dict]]:
        problems = generate_problems(self.num_problems, self.seed, self.min_numbers, self.max_numbers)
        for i, problem in enumerate(problems):
            record = to_pair_record(problem, i, self.seed)
            if record is not None:
                yield f"countdown_pairs(seed={self.seed}):problem {i}", record

"""Countdown prompts and synthetic reasoning traces (think, then answer) for SFT warm-up."""

from __future__ import annotations

import random
from fractions import Fraction

from lit_align.tasks.arithmetic import apply_op
from lit_align.tasks.countdown.solver import Node, combine, render, solution_tree
from lit_align.tasks.countdown.verifier import read_problem


def _steps(node: Node) -> tuple[Fraction, list[str]]:
    """Value of a tree and its operations written out one per step, innermost first."""
    if isinstance(node, int):
        return Fraction(node), []
    op, left, right = node
    (a, left_steps), (b, right_steps) = _steps(left), _steps(right)
    value = apply_op(op, a, b)
    return value, left_steps + right_steps + [f"{a} {op} {b} = {value}"]


def wrong_attempt(rng: random.Random, nums: list[int], target: int) -> tuple[str, int] | None:
    """A random positive whole-number combination of all numbers that misses the target, with its
    value; None when this draw is negative, fractional or happens to hit the target."""
    items = [(Fraction(n), n) for n in nums]
    while len(items) > 1:
        a = items.pop(rng.randrange(len(items)))
        b = items.pop(rng.randrange(len(items)))
        items.append(rng.choice(list(combine(a, b))))
    value, tree = items[0]
    if value.denominator != 1 or value <= 0 or value == target:
        return None
    return render(tree), int(value)


def _misses(rng: random.Random, nums: list[int], target: int, draws: int = 40) -> list[str]:
    """Up to two near misses with different values, the farther first, so the trace closes in."""
    by_value = {}
    for _ in range(draws):  # cheap; most draws are negative or fractional and get dropped
        attempt = wrong_attempt(rng, nums, target)
        if attempt is not None:
            by_value.setdefault(attempt[1], attempt[0])
    nearest = sorted(by_value.items(), key=lambda item: abs(item[0] - target))[:2]
    lines = []
    for value, text in reversed(nearest):
        verdict = "too small" if value < target else "too big"
        lines.append(f"Try {text} = {value}, {verdict}.")
    return lines


def reasoning_trace(record: dict, seed: int | None = None) -> str:
    """A short think-then-answer completion: two honest misses, then the worked solution.

    ``seed`` picks the misses; by default it comes from the problem, so traces are stable.
    Raises ``ValueError`` when the problem has no solution.
    """
    target, nums = read_problem(record)
    tree = solution_tree(nums, target)
    if tree is None:
        raise ValueError(f"no solution for target {target} with {nums}")
    rng = random.Random(f"{target}:{nums}" if seed is None else seed)
    lines = [f"Need {target} from {', '.join(map(str, nums))}, each used once."]
    lines += _misses(rng, nums, target)
    lines.append("Try " + ", then ".join(_steps(tree)[1]) + f". That is {target}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"<answer>{render(tree)}</answer>"


def prompt_text(record: dict) -> str:
    """The user instruction for one problem."""
    target, nums = read_problem(record)
    return (
        f"Make {target} from the numbers {', '.join(map(str, nums))}. "
        "Combine them with + - * / and parentheses, using every number exactly once. "
        "Think it through inside <think> </think>, then put only the expression inside "
        "<answer> </answer>, for example <answer>(1 + 2) * 3</answer>."
    )


def to_sft_record(record: dict, seed: int | None = None) -> dict:
    """A chat record whose assistant turn is a synthetic reasoning trace."""
    target, nums = read_problem(record)
    return {
        "messages": [
            {"role": "user", "content": prompt_text(record)},
            {"role": "assistant", "content": reasoning_trace(record, seed)},
        ],
        "target": target,
        "nums": nums,
    }


def to_prompt_record(record: dict) -> dict:
    """A prompt-only record for online RL; target and nums ride along for the verifier."""
    target, nums = read_problem(record)
    return {"prompt": [{"role": "user", "content": prompt_text(record)}], "target": target, "nums": nums}

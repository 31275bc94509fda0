"""Solvable Countdown problems, generated forwards from their numbers (no search needed)."""

from __future__ import annotations

import random

MAX_NUMBERS = 5  # traces need `solve`, whose cost explodes past five numbers
_TRIES_PER_PROBLEM = 10_000


def check_settings(num_problems: int, min_numbers: int, max_numbers: int, max_number: int, max_target: int) -> None:
    """Reject generator settings that are meaningless or would make `solve` crawl."""
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not 2 <= min_numbers <= max_numbers <= MAX_NUMBERS:
        raise ValueError(
            f"need 2 <= min_numbers <= max_numbers <= {MAX_NUMBERS}, got {min_numbers}..{max_numbers}"
        )
    if max_number < 1 or max_target < 1:
        raise ValueError(f"max_number and max_target must be >= 1, got {max_number} and {max_target}")


def _random_target(rng: random.Random, nums: list[int]) -> int:
    """Fold the numbers with random operations, keeping every intermediate a positive integer."""
    pool = list(nums)
    while len(pool) > 1:
        a = pool.pop(rng.randrange(len(pool)))
        b = pool.pop(rng.randrange(len(pool)))
        big, small = max(a, b), min(a, b)
        options = [a + b, a * b]
        if big != small:
            options.append(big - small)
        if big % small == 0:
            options.append(big // small)
        pool.append(rng.choice(options))
    return pool[0]


def generate_problems(
    num_problems: int,
    seed: int = 0,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 100,
    max_target: int = 1000,
) -> list[dict]:
    """Solvable problems ``{"target", "nums"}``, the same list for the same arguments.

    Targets are built forwards from the numbers, so no search is needed and each problem
    has at least one solution. More numbers, larger numbers and larger targets are harder.
    """
    check_settings(num_problems, min_numbers, max_numbers, max_number, max_target)
    rng = random.Random(seed)
    problems = []
    for _ in range(num_problems):
        for _ in range(_TRIES_PER_PROBLEM):
            nums = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
            target = _random_target(rng, nums)
            if 1 <= target <= max_target:
                problems.append({"target": target, "nums": nums})
                break
        else:
            raise ValueError(f"no target <= {max_target} found for numbers up to {max_number}; raise max_target")
    return problems

"""Countdown: reach a target number with arithmetic on a handful of given numbers.

A problem is ``{"target": int, "nums": [int, ...]}`` (the schema of the public
Countdown-Tasks-3to4 data used by TinyZero-style RL studies). The model must write one
expression with ``+ - * /`` and parentheses that uses every number of ``nums`` exactly once
and equals ``target``. Division is exact (rational), so ``(7 / 2) * 4 = 14`` is fine.

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

Besides the verifier, the module generates solvable problems, solves them by exhaustive
search, and turns a solution into a short synthetic reasoning trace for SFT warm-up.
``CountdownSource`` serves generated problems, or problems read from another source (the hub data
holds bare ``target``/``nums`` records), as SFT traces or RL prompts.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from fractions import Fraction
from typing import Union

import torch

from lit_align.data.sources import DataError, Source
from lit_align.rewards.base import Reward
from lit_align.tasks.arithmetic import apply_op, parse_expression

_OPEN, _CLOSE = "<answer>", "</answer>"

# A solution tree: a literal, or (operator, left, right).
Node = Union[int, tuple]


# ----------------------------------------------------------------------------- scoring


def _problem(record: dict) -> tuple[int, list[int]]:
    """Target and numbers as ints; hub or JSON data may store them as strings."""
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
    target, nums = _problem(record)
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

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        return torch.tensor([score(c, r) for c, r in zip(completions, records)], dtype=torch.float32)


# ----------------------------------------------------------------------------- solving


def _combine(a: tuple[Fraction, Node], b: tuple[Fraction, Node]) -> Iterator[tuple[Fraction, Node]]:
    """Every value reachable from two operands with one operation, both orders."""
    (x, p), (y, q) = a, b
    yield x + y, ("+", p, q)
    yield x * y, ("*", p, q)
    yield x - y, ("-", p, q)
    yield y - x, ("-", q, p)
    if y != 0:
        yield x / y, ("/", p, q)
    if x != 0:
        yield y / x, ("/", q, p)


def _search(items: list[tuple[Fraction, Node]], target: Fraction, tidy: bool) -> Node | None:
    """Merge two items at a time; this covers every ordering and bracketing.

    With ``tidy``, only non-negative whole intermediates are kept (the TV-show rules).
    """
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for merged in _combine(items[i], items[j]):
                if tidy and (merged[0] < 0 or merged[0].denominator != 1):
                    continue
                # Merged item first, so solutions read '(a + b) * c' rather than 'c * (a + b)'.
                found = _search([merged] + rest, target, tidy)
                if found is not None:
                    return found
    return None


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _format(node: Node) -> tuple[str, int]:
    """Render a tree with only the parentheses the left-to-right grammar needs."""
    if isinstance(node, int):
        return str(node), 3
    op, left, right = node
    (ltext, lprec), (rtext, rprec) = _format(left), _format(right)
    prec = _PRECEDENCE[op]
    if lprec < prec:
        ltext = f"({ltext})"
    # a - (b + c) and a / (b * c) keep their parentheses; a + (b - c) does not need them.
    if rprec < prec or (rprec == prec and op in "-/"):
        rtext = f"({rtext})"
    return f"{ltext} {op} {rtext}", prec


def _solution_tree(nums: list[int], target: int) -> Node | None:
    if not nums:
        return None
    items, goal = [(Fraction(n), n) for n in nums], Fraction(target)
    # A tidy solution makes a more readable trace; the full search is the fallback.
    tree = _search(items, goal, tidy=True)
    return tree if tree is not None else _search(items, goal, tidy=False)


def solve(nums: list[int], target: int) -> str | None:
    """An expression using each number once that equals ``target``, or None if none exists.

    Exhaustive and exact; a few milliseconds for four numbers, too slow beyond five or six.
    """
    tree = _solution_tree([int(n) for n in nums], int(target))
    return None if tree is None else _format(tree)[0]


# ----------------------------------------------------------------------------- generating

_MAX_GENERATOR_NUMBERS = 5  # traces need `solve`, whose cost explodes past five numbers
_TRIES_PER_PROBLEM = 10_000


def _check_settings(num_problems: int, min_numbers: int, max_numbers: int, max_number: int, max_target: int) -> None:
    """Reject generator settings that are meaningless or would make `solve` crawl."""
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not 2 <= min_numbers <= max_numbers <= _MAX_GENERATOR_NUMBERS:
        raise ValueError(
            f"need 2 <= min_numbers <= max_numbers <= {_MAX_GENERATOR_NUMBERS}, got {min_numbers}..{max_numbers}"
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
    _check_settings(num_problems, min_numbers, max_numbers, max_number, max_target)
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


# ----------------------------------------------------------------------------- SFT data


def _steps(node: Node) -> tuple[Fraction, list[str]]:
    """Value of a tree and its operations written out one per step, innermost first."""
    if isinstance(node, int):
        return Fraction(node), []
    op, left, right = node
    (a, left_steps), (b, right_steps) = _steps(left), _steps(right)
    value = apply_op(op, a, b)
    return value, left_steps + right_steps + [f"{a} {op} {b} = {value}"]


def _wrong_attempt(rng: random.Random, nums: list[int], target: int) -> tuple[str, int] | None:
    """A random positive whole-number combination of all numbers that misses the target."""
    items = [(Fraction(n), n) for n in nums]
    while len(items) > 1:
        a = items.pop(rng.randrange(len(items)))
        b = items.pop(rng.randrange(len(items)))
        items.append(rng.choice(list(_combine(a, b))))
    value, tree = items[0]
    if value.denominator != 1 or value <= 0 or value == target:
        return None
    return _format(tree)[0], int(value)


def _misses(rng: random.Random, nums: list[int], target: int, draws: int = 40) -> list[str]:
    """Up to two near misses with different values, the farther first, so the trace closes in."""
    by_value = {}
    for _ in range(draws):  # cheap; most draws are negative or fractional and get dropped
        attempt = _wrong_attempt(rng, nums, target)
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
    target, nums = _problem(record)
    tree = _solution_tree(nums, target)
    if tree is None:
        raise ValueError(f"no solution for target {target} with {nums}")
    rng = random.Random(f"{target}:{nums}" if seed is None else seed)
    lines = [f"Need {target} from {', '.join(map(str, nums))}, each used once."]
    lines += _misses(rng, nums, target)
    lines.append("Try " + ", then ".join(_steps(tree)[1]) + f". That is {target}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"<answer>{_format(tree)[0]}</answer>"


def prompt_text(record: dict) -> str:
    """The user instruction for one problem."""
    target, nums = _problem(record)
    return (
        f"Make {target} from the numbers {', '.join(map(str, nums))}. "
        "Combine them with + - * / and parentheses, using every number exactly once. "
        "Think it through inside <think> </think>, then put only the expression inside "
        "<answer> </answer>, for example <answer>(1 + 2) * 3</answer>."
    )


def to_sft_record(record: dict, seed: int | None = None) -> dict:
    """A chat record whose assistant turn is a synthetic reasoning trace."""
    target, nums = _problem(record)
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
    target, nums = _problem(record)
    return {"prompt": [{"role": "user", "content": prompt_text(record)}], "target": target, "nums": nums}


class CountdownSource:
    """Generated (or read) Countdown problems as SFT traces or RL prompts (a data ``Source``)."""

    def __init__(
        self,
        num_problems: int = 1000,
        seed: int = 0,
        min_numbers: int = 3,
        max_numbers: int = 4,
        max_number: int = 100,
        with_traces: bool = True,
        max_target: int = 1000,
        problems: Source | None = None,
    ):
        """
        Args:
            num_problems: how many problems to generate (with ``problems``: the most to read).
            seed: random seed; the same seed gives the same problems.
            min_numbers: fewest numbers in a problem.
            max_numbers: most numbers in a problem (at most 5).
            max_number: largest number drawn.
            with_traces: True for SFT records with reasoning traces, False for RL prompt records.
            max_target: largest target allowed.
            problems: read the problems from this source (records with ``target`` and ``nums``, e.g.
                the hub's Countdown-Tasks-3to4) instead of generating them; seed and the size
                settings are then unused.
        """
        # Fail at config time rather than when the data module first reads records.
        _check_settings(num_problems, min_numbers, max_numbers, max_number, max_target)
        self.num_problems, self.seed = num_problems, seed
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.max_number, self.max_target = max_number, max_target
        self.with_traces, self.problems = with_traces, problems

    def records(self) -> Iterator[tuple[str, dict]]:
        if self.problems is not None:
            yield from self._read(self.problems)
            return
        problems = generate_problems(
            self.num_problems, self.seed, self.min_numbers, self.max_numbers, self.max_number, self.max_target
        )
        for i, problem in enumerate(problems):
            record = to_sft_record(problem) if self.with_traces else to_prompt_record(problem)
            yield f"countdown(seed={self.seed}):problem {i}", record

    def _read(self, source: Source) -> Iterator[tuple[str, dict]]:
        """The first ``num_problems`` records of ``source`` as traces or prompts, under their own origins."""
        for origin, problem in itertools.islice(source.records(), self.num_problems):
            if "target" not in problem or "nums" not in problem:
                raise DataError(f"{origin}: a Countdown problem needs fields 'target' and 'nums' (fields present: {sorted(problem)})")
            try:
                target, nums = _problem(problem)
            except (TypeError, ValueError) as e:
                raise DataError(f"{origin}: 'target' must be an integer and 'nums' a list of integers ({e})") from None
            if self.with_traces and len(nums) > _MAX_GENERATOR_NUMBERS:
                raise DataError(f"{origin}: {len(nums)} numbers; traces are written for at most {_MAX_GENERATOR_NUMBERS}")
            try:
                record = to_sft_record(problem) if self.with_traces else to_prompt_record(problem)
            except ValueError as e:  # no solution, so no trace to learn from
                raise DataError(f"{origin}: {e}") from None
            yield origin, record

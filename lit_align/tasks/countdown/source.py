"""``CountdownSource``: generated problems, or problems read from another source (the hub data
holds bare ``target``/``nums`` records), as SFT traces or RL prompts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from lit_align.data.sources import DataError, Source
from lit_align.tasks.countdown.generator import MAX_NUMBERS, check_settings, generate_problems
from lit_align.tasks.countdown.traces import to_prompt_record, to_sft_record
from lit_align.tasks.countdown.verifier import read_problem


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
        check_settings(num_problems, min_numbers, max_numbers, max_number, max_target)
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
                target, nums = read_problem(problem)
            except (TypeError, ValueError) as e:
                raise DataError(f"{origin}: 'target' must be an integer and 'nums' a list of integers ({e})") from None
            if self.with_traces and len(nums) > MAX_NUMBERS:
                raise DataError(f"{origin}: {len(nums)} numbers; traces are written for at most {MAX_NUMBERS}")
            try:
                record = to_sft_record(problem) if self.with_traces else to_prompt_record(problem)
            except ValueError as e:  # no solution, so no trace to learn from
                raise DataError(f"{origin}: {e}") from None
            yield origin, record

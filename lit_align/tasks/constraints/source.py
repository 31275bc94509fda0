"""``ConstraintSource``: generated instruction-following prompts, as a data source."""

from __future__ import annotations

from collections.abc import Iterator

from lit_align.tasks.constraints.generator import check_settings, generate_prompts


class ConstraintSource:
    """Generated instruction-following prompts for online RL (a data ``Source``)."""

    def __init__(self, num_prompts: int = 256, seed: int = 0, min_constraints: int = 1, max_constraints: int = 3):
        """
        Args:
            num_prompts: how many prompts to generate.
            seed: random seed; the same seed gives the same prompts.
            min_constraints: fewest constraints in a prompt (at least 1).
            max_constraints: most constraints in a prompt (at most 4).
        """
        # Fail at config time rather than when the data module first reads records.
        check_settings(num_prompts, min_constraints, max_constraints)
        self.num_prompts, self.seed = num_prompts, seed
        self.min_constraints, self.max_constraints = min_constraints, max_constraints

    def records(self) -> Iterator[tuple[str, dict]]:
        prompts = generate_prompts(self.num_prompts, self.seed, self.min_constraints, self.max_constraints)
        for i, record in enumerate(prompts):
            yield f"constraints(seed={self.seed}):prompt {i}", record

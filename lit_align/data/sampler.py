"""Batches grouped into gradient-accumulation windows, sharded across data-parallel ranks.

To make the SFT loss the mean over every loss token of the *global* batch (all micro-batches of
one optimiser step, on all ranks), each micro-batch must know how many loss tokens its whole window
holds. This sampler knows every example's token count, so it yields, with each micro-batch's indices,
that window total.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


class WindowBatchSampler:
    """Yield ``[(index, window_tokens), ...]`` micro-batches for one rank.

    Args:
        token_counts: loss tokens of each example.
        batch_size: examples per micro-batch on one rank.
        accumulate: micro-batches per optimiser step.
        world_size / rank: data-parallel layout; ranks see disjoint examples.
        shuffle / seed: order is reshuffled each epoch from ``seed + epoch``.
    """

    def __init__(
        self,
        token_counts: list[int],
        batch_size: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.token_counts, self.batch_size, self.accumulate = token_counts, batch_size, accumulate
        self.world_size, self.rank, self.shuffle, self.seed = world_size, rank, shuffle, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, micro-batches already trained on)
        # Lightning calls set_epoch on ``batch_sampler.sampler``; pointing it here reshuffles each epoch.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """Continue epoch ``epoch`` after its first ``consumed`` micro-batches (once; later epochs are whole)."""
        self._resume = (epoch, consumed)

    def _global_batches(self) -> list[list[int]]:
        order = list(range(len(self.token_counts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        step = self.batch_size * self.world_size
        # With several ranks every rank must get the same number of batches, so a ragged tail is dropped.
        end = len(order) if self.world_size == 1 else len(order) - len(order) % step
        return [order[i : i + step] for i in range(0, end, step)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        batches = self._global_batches()
        position = 0
        for w in range(0, len(batches), self.accumulate):
            window = batches[w : w + self.accumulate]
            tokens = sum(self.token_counts[i] for batch in window for i in batch)
            for batch in window:
                if position >= skip:  # the same order as the interrupted run, minus what it already trained on
                    yield [(i, tokens) for i in batch[self.rank :: self.world_size]]
                position += 1

    def __len__(self) -> int:
        n = len(self.token_counts)
        step = self.batch_size * self.world_size
        return -(-n // step) if self.world_size == 1 else n // step

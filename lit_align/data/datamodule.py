"""``AlignDataModule``: every source, every method, one path from records to typed batches."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_align.data.curriculum import CurriculumBatchSampler, SelfPaced
from lit_align.data.kinds import BatchKind, PromptKind
from lit_align.data.sampler import WindowBatchSampler
from lit_align.data.sources import DataError, Source, describe

log = logging.getLogger(__name__)


def rng_states() -> dict:
    """The Python, NumPy and torch (CPU and CUDA) random states as plain lists and tensors.

    Lightning loads checkpoints with ``weights_only=True``, which accepts tensors and builtins only.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _Indexed(Dataset):
    """Items are looked up by ``(index, window_tokens)`` pairs from ``WindowBatchSampler``."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) == 3:  # (problem, draw, samples) from CurriculumBatchSampler
            return self.items[key[0]], key
        if isinstance(key, tuple):
            index, window_tokens = key
            return self.items[index], window_tokens
        return self.items[key], None


@dataclass(frozen=True)
class DataView:
    """What a method may use of the data it is fed besides its batches, handed to it once before any
    run (``lit_align.cli.connect``): values flow from the data to the method, never looked up later."""

    max_length: int  # tokens every record is cut to
    # every item of a split ("train", "val" or "test") once, in order; callable once the data is set up
    ordered_batches: Callable[[str], Iterator]
    # online RL with a curriculum: book(draw, problem ids, group sizes, rewards) after each draw; else None
    book_outcomes: Callable[[int, list, list, list], dict] | None = None


@runtime_checkable
class UsesData(Protocol):
    """A method that reads something of its data beyond its batches declares it by taking a ``DataView``
    (DPO's reference pass over each split, the reward model's exported length)."""

    def use_data(self, data: DataView) -> None: ...


class AlignDataModule(L.LightningDataModule):
    """Reads, validates and tokenizes records for whichever method is being trained.

    The data module is told, never asks: before Lightning sets it up, ``connect`` hands it the
    tokenizer of the model it feeds and the batch kind the method trains on (``lit_align.data.kinds``:
    SFT, preference, reward or prompt batches); in return, ``view`` is what the method may know of it.
    ``lit_align.cli.connect(data, method)`` makes both calls, and the command line makes it for every
    subcommand. It never looks into the trainer's module, so it builds any kind of batch without a
    method (tests do).

    Splits: ``train`` and ``val`` feed ``fit`` and ``validate``; ``test`` feeds ``test`` only, and a
    test run without one is refused rather than given another split.
    """

    def __init__(
        self,
        train: Source | None = None,
        val: Source | None = None,
        test: Source | None = None,
        val_fraction: float = 0.0,
        limit: int | None = None,
        max_length: int = 1024,
        truncation: str = "truncate",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        packing: bool = False,
        curriculum: SelfPaced | None = None,
    ):
        """
        Args:
            train: where training records come from (LocalFile, HubDataset, CountdownSource, ...); None for test-only runs.
            val: where validation records come from; when None, ``val_fraction`` of train is held out.
            test: where test records come from (``lit_align test`` reads these and nothing else).
            val_fraction: share of train records held out for validation when ``val`` is None.
            limit: read at most this many records from each source (quick runs).
            max_length: longest sequence in tokens, prompt included.
            truncation: over-long records: "truncate" cuts the completion's end, "drop" skips the record.
            batch_size: examples per micro-batch on each device.
            val_batch_size: examples per validation or test batch (default: batch_size).
            num_workers: DataLoader worker processes.
            seed: seed for the train/val split and the shuffling order.
            packing: SFT: concatenate each micro-batch's examples into rows of up to max_length tokens
                (positions restart per example, attention stays within it) instead of padding each one.
            curriculum: online RL: which training prompts each step tries and how many samples each gets
                (``lit_align.data.curriculum.SelfPaced``); None: shuffled epochs, the method's k for all.
        """
        super().__init__()
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.train_source, self.val_source, self.test_source = train, val, test
        self.val_fraction, self.limit, self.seed = val_fraction, limit, seed
        self.max_length, self.truncation = max_length, truncation
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.packing = num_workers, packing
        self.curriculum = curriculum
        self.tokenizer = None
        self.batch_kind: BatchKind | None = None  # what the method trains on, told by connect
        self._kind: BatchKind | None = None  # what this stage's batches are: batch_kind, or prompts for predict
        self.train_items: list = []
        self.val_items: list = []
        self.test_items: list = []
        self.stats: dict[str, int] = {}  # over-length and dropped record counts per split
        self._position = (0, 0)  # (epoch, training micro-batches consumed in it), saved in checkpoints
        self._resume_position: tuple[int, int] | None = None
        self._resume_rng: dict | None = None

    def _read(self, source: Source) -> list[tuple[str, dict]]:
        records = []
        for origin, record in source.records():
            if self.limit is not None and len(records) >= self.limit:
                break
            records.append((origin, record))
        return records

    def connect(self, tokenizer, batch_kind: BatchKind) -> AlignDataModule:
        """Tell the data what it feeds, before ``setup`` (as LitGPT's ``data.connect``).

        Args:
            tokenizer: the tokenizer of the model the batches go to (a reward model's own, for RewardKind).
            batch_kind: SFTKind, PreferenceKind, RewardKind or PromptKind: how records become batches.

        Returns this data module, so the call can follow its construction.
        """
        self.tokenizer, self.batch_kind = tokenizer, batch_kind
        return self

    def view(self) -> DataView:
        """What the method may use of this data (``DataView``); its batches exist once ``setup`` has run."""
        return DataView(self.max_length, self.ordered_batches, self.book_outcomes if self.curriculum is not None else None)

    def setup(self, stage: str | None = None) -> None:
        # predict samples from prompts whatever the method trains on
        self._kind = PromptKind() if stage == "predict" else self.batch_kind
        if self.tokenizer is None or self._kind is None:
            raise RuntimeError(
                "AlignDataModule was not connected: call lit_align.cli.connect(data, method) (or "
                "data.connect(method.tokenizer, method.batch_kind)) before trainer.fit/validate/test; the "
                "command line does it for you"
            )
        if stage in ("test", None) and self.test_source is not None:
            self.test_items = self._prepare(self._read(self.test_source), "test")
        if stage == "test":
            if self.test_source is None:
                raise self._no_test_split()
            return  # a test run reads its own split and nothing else
        train = self._read(self.train_source) if self.train_source is not None else []
        if self.val_source is not None:
            val = self._read(self.val_source)
        else:
            random.Random(self.seed).shuffle(train)
            n_val = int(round(len(train) * self.val_fraction))
            train, val = train[n_val:], train[:n_val]
        self.train_items = self._prepare(train, "train")
        self.val_items = self._prepare(val, "val")

    def _prepare(self, records: list[tuple[str, dict]], split: str) -> list:
        kept, n_over = self._kind.prepare(records, self.tokenizer, self.max_length, self.truncation)
        dropped = len(records) - len(kept)
        if n_over or dropped:
            log.warning(
                "%s: %d of %d records longer than max_length=%d (%s): %d truncated, %d dropped",
                split, n_over, len(records), self.max_length, self.truncation, n_over - dropped, dropped,
            )
        self.stats |= {f"{split}/over_length": n_over, f"{split}/dropped": dropped}
        return kept

    def _batch(self, items: list, normalizer: float | None = None):
        return self._kind.collate(items, self.tokenizer.pad_token_id, self.max_length, self.packing, normalizer)

    def _collate(self, keyed: list, accumulate: int = 1, world_size: int = 1):
        """Collate ``(item, window_tokens)`` pairs from ``_Indexed`` into one batch of this stage's kind."""
        if keyed and isinstance(keyed[0][1], tuple):  # a curriculum's draw: its problems, number and sizes
            batch = self._batch([item for item, _ in keyed])
            batch.problem_ids = [key[0] for _, key in keyed]
            batch.draw_index = keyed[0][1][1]
            batch.group_sizes = [key[2] for _, key in keyed] if self.curriculum.adaptive_k else None
            return batch
        window_tokens = keyed[0][1]
        normalizer = None if window_tokens is None else window_tokens / (accumulate * world_size)
        return self._batch([item for item, _ in keyed], normalizer)

    def ordered_batches(self, split: str) -> Iterator:
        """Every item of ``split`` ("train", "val" or "test") once, in order, in batches of ``val_batch_size``.

        For passes that must see each example of a split exactly once before training, such as DPO's
        precomputed reference log-probs; preference batches carry each pair's position in its split.
        """
        items = {"train": self.train_items, "val": self.val_items, "test": self.test_items}[split]
        for start in range(0, len(items), self.val_batch_size):
            yield self._batch(items[start : start + self.val_batch_size])

    def train_dataloader(self) -> DataLoader:
        if not self.train_items:
            raise DataError(f"{describe(self.train_source)}: no training records left after reading and filtering it")
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if self.curriculum is not None:
            sampler = self._curriculum_sampler(accumulate, world, rank)
        else:
            counts = [self._kind.sampler_weight(item) for item in self.train_items]
            sampler = WindowBatchSampler(counts, self.batch_size, accumulate, world, rank, shuffle=True, seed=self.seed)
        if self._resume_position is not None:
            sampler.resume(*self._resume_position)
            self._resume_position = None
        collate = partial(self._collate, accumulate=accumulate, world_size=world)
        # Its own generator: starting an iterator then draws no number from torch's global RNG (exact resume).
        return DataLoader(_Indexed(self.train_items), batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def _curriculum_sampler(self, accumulate: int, world: int, rank: int) -> CurriculumBatchSampler:
        k = getattr(self._kind, "samples_per_prompt", None)
        if not isinstance(self._kind, PromptKind) or k is None:
            raise ValueError("data.curriculum draws prompts for online RL (RLOO, GRPO): the method being trained "
                             f"takes {type(self._kind).__name__} batches")
        if accumulate != 1:
            raise ValueError("data.curriculum needs trainer.accumulate_grad_batches 1 (online RL optimises by hand)")
        return CurriculumBatchSampler(self.curriculum, len(self.train_items), self.batch_size, k, world, rank, self.seed)

    def book_outcomes(self, draw: int, problems: list[int], group_sizes: list[int], rewards: list[float]) -> dict:
        """Hand one draw's scored groups to the curriculum (every rank's, in rank order, on every rank); returns
        its groups and how many carried signal."""
        return self.curriculum.book(draw, problems, group_sizes, rewards)

    # Exact resume. Lightning saves a datamodule's state_dict in every checkpoint; ours holds where the
    # training stream stands (epoch and micro-batches consumed, counted when a batch reaches the training
    # step, so prefetching does not skew it) and the RNG streams, so a resumed run sees the same
    # remaining batches and the same random draws as an uninterrupted one. The RNG streams are put back
    # just before the first resumed batch, after whatever the restart itself (hooks, callbacks) drew.
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self._resume_rng is not None and self.trainer is not None and self.trainer.training:
            set_rng_states(self._resume_rng)
            self._resume_rng = None
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch, consumed = self._position
            self._position = (trainer.current_epoch, consumed + 1 if epoch == trainer.current_epoch else 1)
        return batch

    def state_dict(self) -> dict:
        state = {"position": list(self._position), "rng": rng_states()}
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "position" in state_dict:
            self._position = tuple(state_dict["position"])
            self._resume_position = self._position
        self._resume_rng = state_dict.get("rng")
        if self.curriculum is not None and "curriculum" in state_dict:
            self.curriculum.load_state_dict(state_dict["curriculum"])

    def _in_order(self, items: list) -> DataLoader:
        return DataLoader(_Indexed(items), batch_size=self.val_batch_size, collate_fn=self._collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._in_order(self.val_items)

    def _no_test_split(self) -> DataError:
        return DataError("no test split: set data.test to the records to test on (a LocalFile, HubDataset or "
                         "task source); a test run does not fall back on the validation split")

    def test_dataloader(self) -> DataLoader:
        if self.test_source is None:
            raise self._no_test_split()
        return self._in_order(self.test_items)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

"""``AlignDataModule``: every source, every method, one path from records to typed batches."""

from __future__ import annotations

import logging
import random
from functools import partial

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_align.data import formats, preference
from lit_align.data.collate import (
    collate_preference,
    collate_prompts,
    collate_sft,
    collate_sft_packed,
)
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
        if isinstance(key, tuple):
            index, window_tokens = key
            return self.items[index], window_tokens
        return self.items[key], None


class AlignDataModule(L.LightningDataModule):
    """Reads, validates and tokenizes records for whichever method is being trained.

    The method decides the batch type through its ``data_format`` (``"sft"`` or ``"prompt"``) and
    lends its tokenizer, so the data always matches the model.
    """

    def __init__(
        self,
        train: Source | None = None,
        val: Source | None = None,
        val_fraction: float = 0.0,
        limit: int | None = None,
        max_length: int = 1024,
        truncation: str = "truncate",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        packing: bool = False,
    ):
        """
        Args:
            train: where training records come from (LocalFile, HubDataset, CountdownSource, ...); None for test-only runs.
            val: where validation records come from; when None, ``val_fraction`` of train is held out.
            val_fraction: share of train records held out for validation when ``val`` is None.
            limit: read at most this many records from each source (quick runs).
            max_length: longest sequence in tokens, prompt included.
            truncation: over-long records: "truncate" cuts the completion's end, "drop" skips the record.
            batch_size: examples per micro-batch on each device.
            val_batch_size: examples per validation batch (default: batch_size).
            num_workers: DataLoader worker processes.
            seed: seed for the train/val split and the shuffling order.
            packing: SFT: concatenate each micro-batch's examples into rows of up to max_length tokens
                (positions restart per example, attention stays within it) instead of padding each one.
        """
        super().__init__()
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.train_source, self.val_source = train, val
        self.val_fraction, self.limit, self.seed = val_fraction, limit, seed
        self.max_length, self.truncation = max_length, truncation
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.packing = num_workers, packing
        self.tokenizer = None
        self.data_format = "sft"
        self.train_items: list = []
        self.val_items: list = []
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

    def setup(self, stage: str | None = None) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None:
            self.tokenizer = module.tokenizer
            # predict samples from prompts whatever the method trains on
            self.data_format = "prompt" if stage == "predict" else module.data_format
        if self.tokenizer is None:
            raise RuntimeError("AlignDataModule needs a tokenizer: attach it to a method or set .tokenizer")
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
        if self.data_format == "prompt":
            return [(formats.prompt_ids(r, o, self.tokenizer), r) for o, r in records]
        if self.data_format == "sft":
            examples = [formats.sft_example(r, o, self.tokenizer) for o, r in records]
            over = [len(e.input_ids) > self.max_length for e in examples]
            kept = [formats.truncate(e, self.max_length, self.truncation) for e in examples]
        elif self.data_format == "preference":
            pairs = [preference.policy_example(preference.parse_pair(r, o), self.tokenizer) for o, r in records]
            over = [max(len(p.chosen.input_ids), len(p.rejected.input_ids)) > self.max_length for p in pairs]
            kept = [self._truncate_pair(p) for p in pairs]
        elif self.data_format == "reward":
            built = [preference.reward_example(preference.parse_pair(r, o), self.tokenizer, self.max_length) for o, r in records]
            over = [cut for _, cut in built]
            kept = [None if cut and self.truncation == "drop" else p for p, cut in built]
        else:
            raise ValueError(f"unknown data_format {self.data_format!r}")
        n_over, dropped = sum(over), sum(k is None for k in kept)
        if n_over or dropped:
            log.warning(
                "%s: %d of %d records longer than max_length=%d (%s): %d truncated, %d dropped",
                split, n_over, len(records), self.max_length, self.truncation, n_over - dropped, dropped,
            )
        self.stats |= {f"{split}/over_length": n_over, f"{split}/dropped": dropped}
        kept = [k for k in kept if k is not None]
        for i, item in enumerate(kept):
            if isinstance(item, preference.PreferenceExample):
                item.index = i
        return kept

    def _truncate_pair(self, pair: preference.PreferenceExample) -> preference.PreferenceExample | None:
        chosen = formats.truncate(pair.chosen, self.max_length, self.truncation)
        rejected = formats.truncate(pair.rejected, self.max_length, self.truncation)
        if chosen is None or rejected is None:
            return None
        return preference.PreferenceExample(chosen, rejected, pair.score_chosen, pair.score_rejected)

    def _collate(self, items: list, pad_id: int, accumulate: int = 1, world_size: int = 1):
        if self.data_format == "prompt":
            prompts = [item[0][0] for item in items]
            return collate_prompts(prompts, [item[0][1] for item in items], pad_id)
        if self.data_format in ("preference", "reward"):
            return collate_preference([item[0] for item in items], pad_id)
        window_tokens = items[0][1]
        normalizer = None if window_tokens is None else window_tokens / (accumulate * world_size)
        if self.packing:
            return collate_sft_packed([item[0] for item in items], pad_id, self.max_length, normalizer)
        return collate_sft([item[0] for item in items], pad_id, normalizer)

    def train_dataloader(self) -> DataLoader:
        if not self.train_items:
            raise DataError(f"{describe(self.train_source)}: no training records left after reading and filtering it")
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        counts = [x.num_loss_tokens for x in self.train_items] if self.data_format == "sft" else [1] * len(self.train_items)
        sampler = WindowBatchSampler(counts, self.batch_size, accumulate, world, rank, shuffle=True, seed=self.seed)
        if self._resume_position is not None:
            sampler.resume(*self._resume_position)
            self._resume_position = None
        collate = partial(self._collate, pad_id=self.tokenizer.pad_token_id, accumulate=accumulate, world_size=world)
        # Its own generator: starting an iterator then draws no number from torch's global RNG (exact resume).
        return DataLoader(_Indexed(self.train_items), batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

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
        return {"position": list(self._position), "rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "position" in state_dict:
            self._position = tuple(state_dict["position"])
            self._resume_position = self._position
        self._resume_rng = state_dict.get("rng")

    def val_dataloader(self) -> DataLoader:
        collate = partial(self._collate, pad_id=self.tokenizer.pad_token_id)
        return DataLoader(
            _Indexed(self.val_items), batch_size=self.val_batch_size, collate_fn=collate, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

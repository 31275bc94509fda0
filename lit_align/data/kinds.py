"""Batch kinds: how one kind of record becomes items, and items become one typed batch.

A method names the kind it trains on (``SFT.batch_kind = SFTKind()``, ``DPO``: ``PreferenceKind``,
``RewardModel``: ``RewardKind``, ``RLOO``: ``PromptKind``), and ``AlignDataModule.connect`` hands it
to the data module with the tokenizer; the data module never asks the method. Each kind is a small,
stateless object with three jobs:

- ``prepare``: validate and tokenize ``(origin, record)`` pairs into items, cutting or dropping the
  ones over ``max_length`` as ``truncation`` says, and count how many were over;
- ``sampler_weight``: what one item counts for when the training sampler balances its windows
  (loss tokens for SFT, so that accumulated micro-batches average over the whole window; 1 otherwise);
- ``collate``: pad a list of items into the kind's batch (``SFTBatch``, ``PreferenceBatch``, ``PromptBatch``).

Predict uses ``PromptKind`` whatever the method trains on: it samples from prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_align.data import formats, preference
from lit_align.data.collate import (
    PreferenceBatch,
    PromptBatch,
    SFTBatch,
    collate_preference,
    collate_prompts,
    collate_sft,
    collate_sft_packed,
)

Records = list[tuple[str, dict]]  # (origin, record) pairs, origin naming the file and line


class BatchKind:
    """Base of the batch kinds (a plain class: a method names its kind by instance, never by string)."""

    def prepare(self, records: Records, tokenizer, max_length: int, truncation: str) -> tuple[list, int]:
        """Items for ``records`` (over-long ones cut or dropped) and how many records were over ``max_length``."""
        raise NotImplementedError

    def sampler_weight(self, item) -> int:
        """What ``item`` counts for in the training sampler's windows."""
        return 1

    def collate(self, items: list, pad_id: int, max_length: int, packing: bool = False, normalizer: float | None = None):
        """Pad ``items`` into one batch. ``packing`` and ``normalizer`` matter to SFT batches only."""
        raise NotImplementedError


class SFTKind(BatchKind):
    """``messages`` or ``prompt``+``completion`` records into ``SFTBatch``: loss on completion tokens only.

    ``normalizer`` is the loss-token count a training batch's summed loss is divided by (see
    ``SFTBatch``); with ``packing``, examples share rows of up to ``max_length`` tokens.
    """

    def prepare(self, records: Records, tokenizer, max_length: int, truncation: str) -> tuple[list, int]:
        examples = [formats.sft_example(record, origin, tokenizer) for origin, record in records]
        over = sum(len(e.input_ids) > max_length for e in examples)
        kept = [formats.truncate(e, max_length, truncation) for e in examples]
        return [e for e in kept if e is not None], over

    def sampler_weight(self, item: formats.Example) -> int:
        return item.num_loss_tokens

    def collate(self, items, pad_id, max_length, packing=False, normalizer=None) -> SFTBatch:
        if packing:
            return collate_sft_packed(items, pad_id, max_length, normalizer)
        return collate_sft(items, pad_id, normalizer)


def _numbered(pairs: list) -> list:
    """The kept pairs, each told its position in the split (the key of precomputed reference log-probs)."""
    kept = [p for p in pairs if p is not None]
    for i, pair in enumerate(kept):
        pair.index = i
    return kept


def _fit_pair(pair: preference.PreferenceExample, max_length: int, truncation: str) -> preference.PreferenceExample | None:
    chosen = formats.truncate(pair.chosen, max_length, truncation)
    rejected = formats.truncate(pair.rejected, max_length, truncation)
    if chosen is None or rejected is None:
        return None
    return preference.PreferenceExample(chosen, rejected, pair.score_chosen, pair.score_rejected)


class PreferenceKind(BatchKind):
    """Preference records into ``PreferenceBatch`` for a policy (DPO): both responses after the prompt,
    tokenized with the policy's tokenizer, loss labels on the responses only."""

    def prepare(self, records: Records, tokenizer, max_length: int, truncation: str) -> tuple[list, int]:
        pairs = [preference.policy_example(preference.parse_pair(r, o), tokenizer) for o, r in records]
        over = sum(max(len(p.chosen.input_ids), len(p.rejected.input_ids)) > max_length for p in pairs)
        return _numbered([_fit_pair(p, max_length, truncation) for p in pairs]), over

    def collate(self, items, pad_id, max_length, packing=False, normalizer=None) -> PreferenceBatch:
        return collate_preference(items, pad_id)


class RewardKind(BatchKind):
    """Preference records into ``PreferenceBatch`` for a reward model: prompt and response as the RM's
    own tokenizer reads them (``preference.reward_ids``), no labels."""

    def prepare(self, records: Records, tokenizer, max_length: int, truncation: str) -> tuple[list, int]:
        built = [preference.reward_example(preference.parse_pair(r, o), tokenizer, max_length) for o, r in records]
        over = sum(cut for _, cut in built)
        return _numbered([None if cut and truncation == "drop" else pair for pair, cut in built]), over

    def collate(self, items, pad_id, max_length, packing=False, normalizer=None) -> PreferenceBatch:
        return collate_preference(items, pad_id)


@dataclass
class PromptExample:
    """A tokenized prompt, its source record, and the prompt itself (text or messages) for reward sources."""

    input_ids: list[int]
    record: dict
    prompt: str | list[dict]


class PromptKind(BatchKind):
    """Records with a prompt (or a ``messages`` chat, prompted before its last reply) into left-padded
    ``PromptBatch`` for sampling; prompts are never cut, so none counts as over-long.

    ``samples_per_prompt``: the k of the online-RL method that asks for these batches (None elsewhere);
    a curriculum's sample budget per prompt (``data.curriculum``).
    """

    def __init__(self, samples_per_prompt: int | None = None):
        self.samples_per_prompt = samples_per_prompt

    def prepare(self, records: Records, tokenizer, max_length: int, truncation: str) -> tuple[list, int]:
        items = [PromptExample(formats.prompt_ids(r, o, tokenizer), r, formats.prompt_of(r, o)) for o, r in records]
        return items, 0

    def collate(self, items, pad_id, max_length, packing=False, normalizer=None) -> PromptBatch:
        return collate_prompts([i.input_ids for i in items], [i.record for i in items], pad_id, [i.prompt for i in items])

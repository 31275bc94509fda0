"""Typed batches and the pure functions that pad examples into them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_align.data.formats import IGNORE_INDEX, Example


@dataclass
class SFTBatch:
    """Right-padded token ids with labels (``-100`` where no loss).

    ``loss_normalizer``: what the summed token loss of this batch is divided by. For training it is
    set so that, after gradient accumulation and data-parallel averaging, the gradient equals that of
    the mean over every loss token of the global batch; for evaluation it is this batch's token count.

    ``position_ids`` is set only for packed batches (``collate_sft_packed``): a row then holds several
    examples, each counting positions from 0, and attention must stay within each example.
    """

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long: 1 on real tokens, 0 on padding
    labels: torch.Tensor  # (B, T) long
    loss_normalizer: float
    position_ids: torch.Tensor | None = None  # (B, T) long, packed batches only

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class PromptBatch:
    """Left-padded prompts for generation, with the source records and their prompts (for verifiers and rewards).

    ``prompts``: each record's prompt (text or messages) as the data module read it, so reward sources
    need not parse the records again; None where a batch was built without them.

    A self-paced curriculum (``lit_align.data.curriculum``) also fills ``problem_ids`` (each prompt's
    position in the training split, what its outcomes are booked against), ``draw_index`` (the batch's
    number in the sampler's stream) and ``group_sizes`` (samples to draw for each prompt, chosen before
    generating); None everywhere else, where a method draws its own k per prompt.
    """

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    records: list[dict]
    prompts: list | None = None
    problem_ids: list[int] | None = None
    draw_index: int | None = None
    group_sizes: list[int] | None = None


def pad(sequences: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ints to a (B, max_len) tensor.

    >>> pad([[1, 2, 3], [4]], 0).tolist()
    [[1, 2, 3], [4, 0, 0]]
    >>> pad([[1, 2, 3], [4]], 0, side="left").tolist()
    [[1, 2, 3], [0, 0, 4]]
    """
    width = max(len(s) for s in sequences)
    rows = [s + [value] * (width - len(s)) if side == "right" else [value] * (width - len(s)) + s for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def collate_sft(examples: list[Example], pad_id: int, loss_normalizer: float | None = None) -> SFTBatch:
    """Pad examples into an ``SFTBatch``; the normalizer defaults to the batch's own loss-token count.

    >>> from lit_align.data.formats import Example
    >>> b = collate_sft([Example([5, 6, 7], [-100, 6, 7], "a"), Example([5, 8], [-100, 8], "b")], pad_id=0)
    >>> b.input_ids.tolist(), b.attention_mask.tolist(), b.labels.tolist(), b.loss_normalizer
    ([[5, 6, 7], [5, 8, 0]], [[1, 1, 1], [1, 1, 0]], [[-100, 6, 7], [-100, 8, -100]], 3.0)
    """
    input_ids = pad([e.input_ids for e in examples], pad_id)
    attention_mask = pad([[1] * len(e.input_ids) for e in examples], 0)
    labels = pad([e.labels for e in examples], IGNORE_INDEX)
    batch = SFTBatch(input_ids, attention_mask, labels, 0.0)
    batch.loss_normalizer = float(loss_normalizer if loss_normalizer is not None else batch.num_loss_tokens)
    return batch


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into as few rows of at most ``capacity`` tokens as fit, of near-equal length.

    Rows are padded to the longest, so they are balanced: with n = ceil(total / capacity) rows, each
    sequence (longest first) joins the row holding the fewest tokens; if a row then overflows, one more
    row is tried. A sequence longer than ``capacity`` ends up in a row of its own.

    >>> pack_rows([5, 3, 4, 2], capacity=8)
    [[0, 3], [2, 1]]
    """
    n_rows = max(1, -(-sum(lengths) // capacity))
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        loads = [0] * n_rows
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            row = loads.index(min(loads))
            rows[row].append(i)
            loads[row] += lengths[i]
        if all(load <= capacity or len(row) == 1 for row, load in zip(rows, loads)):
            return [row for row in rows if row]
        n_rows += 1


def collate_sft_packed(
    examples: list[Example], pad_id: int, capacity: int, loss_normalizer: float | None = None
) -> SFTBatch:
    """Concatenate examples into as few rows of at most ``capacity`` tokens as fit, instead of padding each.

    Position ids restart at 0 with each example and each example's first label is ignored, so no
    token learns to follow the previous example; the loss tokens are exactly those of ``collate_sft``.
    The padding at a row's end counts its own positions from 0, a segment nothing real attends to.

    >>> from lit_align.data.formats import Example
    >>> b = collate_sft_packed([Example([5, 6, 7], [-100, 6, 7], "a"), Example([5, 8], [5, 8], "b")], 0, capacity=8)
    >>> b.input_ids.tolist(), b.labels.tolist(), b.position_ids.tolist(), b.num_loss_tokens
    ([[5, 6, 7, 5, 8]], [[-100, 6, 7, -100, 8]], [[0, 1, 2, 0, 1]], 3)
    """
    ids, labels, positions = [], [], []
    for row in pack_rows([len(e.input_ids) for e in examples], capacity):
        members = [examples[i] for i in sorted(row)]  # batch order within a row
        ids.append([t for e in members for t in e.input_ids])
        labels.append([t for e in members for t in [IGNORE_INDEX] + e.labels[1:]])
        positions.append([p for e in members for p in range(len(e.input_ids))])
    width = max(len(p) for p in positions)
    position_ids = torch.tensor([p + list(range(width - len(p))) for p in positions], dtype=torch.long)
    batch = SFTBatch(pad(ids, pad_id), pad([[1] * len(r) for r in ids], 0), pad(labels, IGNORE_INDEX), 0.0, position_ids)
    batch.loss_normalizer = float(loss_normalizer if loss_normalizer is not None else batch.num_loss_tokens)
    return batch


def collate_prompts(ids: list[list[int]], records: list[dict], pad_id: int, prompts: list | None = None) -> PromptBatch:
    """Left-pad prompt token ids so that generation continues every row from the same position.

    >>> b = collate_prompts([[5, 6], [7]], [{"prompt": "a b"}, {"prompt": "c"}], pad_id=0, prompts=["a b", "c"])
    >>> b.input_ids.tolist(), b.attention_mask.tolist(), b.prompts
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]], ['a b', 'c'])
    """
    input_ids = pad(ids, pad_id, side="left")
    attention_mask = pad([[1] * len(p) for p in ids], 0, side="left")
    return PromptBatch(input_ids, attention_mask, records, prompts)


@dataclass
class PreferenceBatch:
    """Chosen rows first, then rejected rows, padded together so one forward pass sees both.

    ``labels`` mark response tokens (all ``-100`` for reward-model batches, which need none).
    ``index`` is each pair's position in its split (the key of precomputed reference log-probs).
    """

    input_ids: torch.Tensor  # (2B, T) long
    attention_mask: torch.Tensor  # (2B, T) long
    labels: torch.Tensor  # (2B, T) long
    score_chosen: torch.Tensor  # (B,) float, NaN where the record had none
    score_rejected: torch.Tensor  # (B,) float
    index: torch.Tensor  # (B,) long

    @property
    def num_pairs(self) -> int:
        return self.index.numel()


def collate_preference(examples: list, pad_id: int) -> PreferenceBatch:
    """Pad ``PreferenceExample``s into a ``PreferenceBatch``.

    >>> from lit_align.data.formats import Example
    >>> from lit_align.data.preference import PreferenceExample
    >>> pe = PreferenceExample(Example([5, 6], [-100, 6], "a"), Example([5, 7, 8], [-100, 7, 8], "a"), 1.0, 0.0, 3)
    >>> b = collate_preference([pe], pad_id=0)
    >>> b.input_ids.tolist(), b.labels.tolist(), b.index.tolist()
    ([[5, 6, 0], [5, 7, 8]], [[-100, 6, -100], [-100, 7, 8]], [3])
    """
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    input_ids = pad([r.input_ids for r in rows], pad_id)
    attention_mask = pad([[1] * len(r.input_ids) for r in rows], 0)
    labels = pad([r.labels or [IGNORE_INDEX] * len(r.input_ids) for r in rows], IGNORE_INDEX)
    return PreferenceBatch(
        input_ids,
        attention_mask,
        labels,
        torch.tensor([e.score_chosen for e in examples], dtype=torch.float32),
        torch.tensor([e.score_rejected for e in examples], dtype=torch.float32),
        torch.tensor([e.index for e in examples], dtype=torch.long),
    )


@dataclass
class ResponseRows:
    """A ``PreferenceBatch`` cut where each response starts, pair by pair: rows ``2i`` and ``2i + 1`` are
    pair i's chosen and rejected response, so the two follow one another behind one prompt.

    The prompt is everything before a row's first label (its first token at least: no collate labels a
    row's first token, and no log-prob predicts it); the completion runs from that label to the last.
    Unlabelled tokens inside it (the user turns of a multi-turn response) stay in, marked by ``labelled``;
    tokens after the last label (the newline after an end-of-turn token) change no labelled log-prob of
    a causal model and are left out.
    """

    prompt_ids: torch.Tensor  # (2B, P) long, left-padded with 0
    prompt_mask: torch.Tensor  # (2B, P) long
    completion_ids: torch.Tensor  # (2B, C) long, right-padded with 0
    completion_mask: torch.Tensor  # (2B, C) long: 1 from the first label to the last
    labelled: torch.Tensor  # (2B, C) float: 1 where a label is (within completion_mask)
    temperature: float = 1.0  # log-probs of the model's own distribution


def split_at_responses(batch: PreferenceBatch) -> ResponseRows:
    """``batch``'s rows, chosen and rejected of each pair side by side, split into prompts and responses.

    >>> from lit_align.data.preference import PreferenceExample
    >>> b = collate_preference([PreferenceExample(Example([5, 6, 7], [-100, -100, 7], "a"),
    ...                                           Example([5, 6, 8, 9], [-100, -100, 8, 9], "a"), 1.0, 0.0, 0)], 0)
    >>> rows = split_at_responses(b)
    >>> rows.prompt_ids.tolist(), rows.completion_ids.tolist(), rows.completion_mask.tolist()
    ([[5, 6], [5, 6]], [[7, 0], [8, 9]], [[1, 0], [1, 1]])
    """
    pairs = batch.num_pairs
    order = torch.stack([torch.arange(pairs), torch.arange(pairs) + pairs], dim=1).flatten().to(batch.input_ids.device)
    ids, labelled = batch.input_ids[order], batch.labels[order] != IGNORE_INDEX
    labelled[:, 0] = False  # nothing predicts a row's first token
    width = ids.size(1)
    has = labelled.any(1)
    first = torch.where(has, labelled.int().argmax(1), batch.attention_mask[order].sum(1).clamp(min=1))
    end = torch.where(has, width - labelled.flip(1).int().argmax(1), first)
    prompt_width, completion_width = (int(first.max()), int((end - first).max())) if pairs else (0, 0)
    source = first[:, None] - prompt_width + torch.arange(prompt_width, device=ids.device)
    prompt_mask = source >= 0
    columns = torch.arange(completion_width, device=ids.device)
    completion_mask = columns < (end - first)[:, None]
    taken = (first[:, None] + columns).clamp(max=width - 1)
    return ResponseRows(
        ids.gather(1, source.clamp(min=0)).masked_fill(~prompt_mask, 0), prompt_mask.long(),
        ids.gather(1, taken).masked_fill(~completion_mask, 0), completion_mask.long(),
        (labelled.gather(1, taken) & completion_mask).float(),
    )

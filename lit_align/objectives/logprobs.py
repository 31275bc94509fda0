"""Running models to get per-token log-probs.

``model_token_logprobs`` cuts each row to its attended span, regroups rows by length, runs the output
head only where a label is, and casts weights once per call under autocast. Reward scoring and
sampling reuse the row grouping (``regroup_plan``) and the cast cache (``cast_weights_once``). The
pure tensor maths the log-probs feed (masks, advantages, KL estimators) lives in ``lit_align.objectives.ops``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from lit_align.data.formats import IGNORE_INDEX
from lit_align.objectives.ops import position_ids_from_mask


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool, temperature: float = 1.0,
                   entropy_grad: bool = True):
    # log_softmax keeps only its output for backward (the logits can go): ~10 % faster than
    # logsumexp + gather on CPU, and one (positions x V) buffer less
    logits = head(hidden).float()
    if temperature != 1.0:  # the distribution sampled at temperature T is softmax(z / T)
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return picked, None
    if entropy_grad:
        return picked, -(logp.exp() * logp).sum(-1)
    # Entropy for logging only: without a graph. With one, its product node would keep logp and exp(logp),
    # two (positions x V) float32 buffers, alive until the entropy is dropped, past the loss's backward.
    with torch.no_grad():
        return picked, -(logp.exp() * logp).sum(-1)


def plan_row_groups(lengths: list[int], overhead: int) -> list[list[int]]:
    """Split rows into groups, each padded only to its own longest row, at the least padded work.

    Rows are sorted by length and cut into contiguous runs minimising ``sum(rows x longest) +
    overhead x groups``, where ``overhead`` is the fixed cost of one more forward pass, in tokens
    (exact dynamic programme over the cut points).

    >>> plan_row_groups([10, 200, 12, 190], overhead=16)
    [[0, 2], [3, 1]]
    >>> plan_row_groups([10, 200, 12, 190], overhead=10_000)
    [[0, 2, 3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):  # last group: sorted rows i .. j-1, padded to the longest, rows[j-1]
            cost = best[i] + (j - i) * longest + overhead
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def default_group_overhead(device: torch.device) -> int:
    """Fixed cost of one forward pass in tokens: tiny on CPU, large on GPUs (kernel launches, small matmuls)."""
    return 16 if device.type == "cpu" else 2048


def regroup_plan(lengths: list[int], width: int, device: torch.device, group_overhead: int | None = None):
    """``plan_row_groups`` for rows of these lengths in a batch ``width`` wide, or None where it would not
    cut anything (one group as wide as the batch): then the batch runs as it is."""
    overhead = default_group_overhead(device) if group_overhead is None else group_overhead
    groups = plan_row_groups(lengths, overhead)
    return None if len(groups) == 1 and max(lengths) == width else groups


def unpad_by_default(device: torch.device) -> bool:
    """Regroup rows by length by default on CPU only.

    On CPU, compute follows tokens: switching regrouping off made the SFT, DPO and RM steps 1.3x, 1.3x
    and 3.0x slower (docs/benchmarks.md). On a GPU, small batches are bound by kernel launches and host
    syncs: the reward-model step measured 1.6x TRL's with it on, so there it is opt-in (use packing).
    """
    return device.type == "cpu"


def attended_spans(attention_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per row, the first attended position and one past the last (0, 0 for an empty row)."""
    mask = attention_mask.bool()
    width = mask.size(1)
    any_ = mask.any(1)
    first = torch.where(any_, mask.int().argmax(1), 0)
    last = torch.where(any_, width - mask.flip(1).int().argmax(1), 0)
    return first.tolist(), last.tolist()


@contextlib.contextmanager
def cast_weights_once(device: torch.device):
    """Under autocast, cast each weight to the low-precision dtype once per call, not once per use.

    Lightning (2.6) runs steps under autocast with its weight cache switched off, a guard against a
    cast made under ``no_grad`` being reused where gradients are needed. Without the cache every
    forward casts every weight again and keeps its own copy for backward, so a model run as several
    forwards in one step (regrouped rows, each decoding step of sampling) pays the casts and their
    memory again and again. Inside this context the cache is on; it is emptied on entry and on exit,
    so a cast never outlives the call, whose grad mode does not change. No-op without autocast or
    when the cache is already on.
    """
    kind = device.type
    if not torch.is_autocast_enabled(kind) or torch.is_autocast_cache_enabled():
        yield
        return
    torch.clear_autocast_cache()
    try:
        with torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()


def model_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    unpad: bool | None = None,
    group_overhead: int | None = None,
    temperature: float = 1.0,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of ``labels`` under a causal LM, computing only what the loss reads.

    ``temperature``: log-probs (and entropies) of softmax(logits / T), the distribution that sampling
    at temperature T draws from; 1 is the model's own distribution. ``entropy_grad``: False where the
    entropies are only logged (no graph is built for them, so nothing of theirs outlives the backward).

    Two savings, neither changing the result beyond float rounding:

    - **Padding removed** (``unpad``; default: on CPU, see ``unpad_by_default``; needs ``attention_mask``): each row is cut to its attended span
      and rows are regrouped by length (``plan_row_groups``), each group padded only to its own
      longest row. Positions are kept (``position_ids``, else the row's original indices), so every
      row sees exactly the tokens and positions it had. The first attended token of a row has no
      prediction in the cut row: its log-prob is 0, as for padding (every lit_align collate puts no
      label there: it is a prompt token or the row's first).
    - **Output head only where a label is**: the model returns its final hidden states
      (``logits_to_keep=1``), the head runs on the labelled positions only, ``chunk_size`` at a time,
      and, when there is more than one chunk, under activation checkpointing, so at most one chunk of
      ``chunk_size x V`` float32 logits exists at once, in forward and in backward.

    Returns:
        (B, T-1) log-probs of ``labels[:, 1:]`` (0 where ignored) and, if asked, (B, T-1) entropies
        (0 where ignored).
    """
    batch, width = input_ids.shape
    if unpad is None:
        unpad = unpad_by_default(input_ids.device)
    with cast_weights_once(input_ids.device):
        if unpad and attention_mask is not None and batch > 0:
            starts, ends = attended_spans(attention_mask)
            lengths = [e - s for s, e in zip(starts, ends)]
            groups = regroup_plan(lengths, width, input_ids.device, group_overhead)
            if groups is not None:
                return _unpadded_logprobs(model, input_ids, attention_mask, labels, position_ids, chunk_size,
                                          with_entropy, starts, lengths, groups, temperature, entropy_grad)
        return _dense_logprobs(model, input_ids, attention_mask, labels, position_ids, chunk_size, with_entropy, temperature,
                               entropy_grad)


def _unpadded_logprobs(model, input_ids, attention_mask, labels, position_ids, chunk_size, with_entropy,
                       starts, lengths, groups, temperature, entropy_grad=True):
    """``model_token_logprobs`` on rows cut to their spans and regrouped; results put back in place."""
    batch, width = input_ids.shape
    device = input_ids.device
    if position_ids is None:
        position_ids = torch.arange(width, device=device).expand(batch, width)
    per_row: list = [None] * batch
    for group in groups:
        longest = max(lengths[i] for i in group)
        if longest == 0:
            for i in group:
                per_row[i] = (None, None)
            continue
        ids = input_ids.new_zeros(len(group), longest)
        mask = attention_mask.new_zeros(len(group), longest)
        pos = position_ids.new_zeros(len(group), longest)
        lab = labels.new_full((len(group), longest), IGNORE_INDEX)
        for r, i in enumerate(group):
            s, n = starts[i], lengths[i]
            ids[r, :n], mask[r, :n] = input_ids[i, s : s + n], attention_mask[i, s : s + n]
            pos[r, :n], lab[r, :n] = position_ids[i, s : s + n], labels[i, s : s + n]
        logps, entropy = _dense_logprobs(model, ids, mask, lab, pos, chunk_size, with_entropy, temperature, entropy_grad)
        for r, i in enumerate(group):
            per_row[i] = (logps[r, : lengths[i] - 1], entropy[r, : lengths[i] - 1] if with_entropy else None)

    def place(k: int) -> torch.Tensor:
        rows = []
        for i, parts in enumerate(per_row):
            part = parts[k]
            if part is None or part.numel() == 0:
                rows.append(torch.zeros(width - 1, device=device))
            else:
                rows.append(torch.nn.functional.pad(part, (starts[i], width - 1 - starts[i] - part.numel())))
        return torch.stack(rows)

    return place(0), (place(1) if with_entropy else None)


def chunked_head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int, checkpointed: bool,
                          with_entropy: bool, temperature: float = 1.0, entropy_grad: bool = True) -> tuple[list, list]:
    """``head_logprobs`` over (M, d) labelled hidden states and their (M,) targets, ``chunk_size`` at a time,
    each chunk under activation checkpointing where ``checkpointed``: so at most one chunk of logits
    exists at once (and, checkpointed, none is kept for backward). Returns the chunks' log-probs and
    entropies (None each without ``with_entropy``), in order."""
    picked, entropy = [], []
    for start in range(0, targets.numel(), chunk_size):
        args = (head, hidden[start : start + chunk_size], targets[start : start + chunk_size], with_entropy,
                temperature, entropy_grad)
        p, e = checkpoint(head_logprobs, *args, use_reentrant=False) if checkpointed else head_logprobs(*args)
        picked.append(p)
        entropy.append(e)
    return picked, entropy


def picked_logprobs(model, input_ids, attention_mask, position_ids, sources: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int, with_entropy: bool = False, temperature: float = 1.0, entropy_grad: bool = True):
    """One scoring or training forward of ``model`` (no KV cache; the head runs only here): the log-probs (and
    entropies) of ``targets`` (M,) read from the last hidden states at the row-major flat positions ``sources``
    (M,), in chunks as ``chunked_head_logprobs``; with the flat (rows x width, d) hidden states, for callers
    that must keep the graph where M is 0."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    flat = hidden.reshape(-1, hidden.size(-1))
    checkpointed = torch.is_grad_enabled() and targets.numel() > chunk_size
    picked, entropy = chunked_head_logprobs(model.get_output_embeddings(), flat.index_select(0, sources), targets,
                                            chunk_size, checkpointed, with_entropy, temperature, entropy_grad)
    return picked, entropy, flat


def _dense_logprobs(model, input_ids, attention_mask, labels, position_ids, chunk_size, with_entropy, temperature=1.0,
                    entropy_grad=True):
    targets = labels[:, 1:]
    where = (targets != IGNORE_INDEX).reshape(-1).nonzero().squeeze(-1)
    # label (r, c) of the (rows, width - 1) targets is read from position c of row r: flat r * width + c
    sources = where + where // max(targets.size(1), 1)
    picked, entropy, flat = picked_logprobs(model, input_ids, attention_mask, position_ids, sources,
                                            targets.reshape(-1).index_select(0, where), chunk_size, with_entropy,
                                            temperature, entropy_grad)

    def scatter(values: list) -> torch.Tensor:
        out = torch.zeros(targets.numel(), dtype=torch.float32, device=flat.device)
        if values:
            out = out.index_put((where,), torch.cat(values).float())
        elif flat.requires_grad:  # no label at all: still a (zero) function of the model, so backward runs
            out = out + flat.sum() * 0
        return out.view_as(targets)

    return scatter(picked), (scatter(entropy) if with_entropy else None)


def completion_logprobs(model, samples, with_entropy: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) log-probs (and entropies) of sampled completion tokens under ``model``, at the temperature
    they were sampled at (``entropy_grad``: as ``model_token_logprobs``). ``samples``: a ``lit_align.sampling.generate.Samples`` (left-padded prompts,
    right-padded completions, masks)."""
    input_ids = torch.cat([samples.prompt_ids, samples.completion_ids], dim=1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], dim=1)
    labels = torch.cat([torch.full_like(samples.prompt_ids, IGNORE_INDEX),
                        samples.completion_ids.masked_fill(samples.completion_mask == 0, IGNORE_INDEX)], dim=1)
    logps, entropy = model_token_logprobs(
        model, input_ids, mask, labels, position_ids_from_mask(mask), with_entropy=with_entropy,
        temperature=samples.temperature or 1.0,  # greedy samples: the model's own distribution
        entropy_grad=entropy_grad,
    )
    start = samples.prompt_ids.size(1) - 1  # position t-1 predicts token t
    return logps[:, start:], (entropy[:, start:] if entropy is not None else None)

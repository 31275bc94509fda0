"""Rows that share a prompt, run as prompt trees: each prompt once, its responses as branches of one row.

DPO's chosen and rejected responses answer one prompt. Run as whole rows, each row forwards the
prompt again, in the policy's forward and backward and in the reference's forward. As a *tree*, a
group of rows with a common prompt is one row: the prompt's tokens once, then each response's
tokens (a *branch*), every branch's positions continuing from the prompt's, under an attention mask
that lets a token see the prompt and the earlier tokens of its own branch, and nothing of another
branch. Trees are regrouped by size as rows are (``logprobs.plan_row_groups``), each group one
forward padded to its longest tree.

A branch's first token is predicted by the prompt's last hidden state, every later token by the
one before it in its branch: the log-probs are gathered at those positions, the output head runs
there only, and they land where the whole-row path puts them ((rows, T - 1), 0 where no label is).
Gradients reach the prompt from every branch and autograd sums them, so the prompt's backward runs
once too. Log-probs and gradients equal the whole-row path's (``logprobs.model_token_logprobs``) up
to float rounding (tests/objectives/test_prompt_tree.py).

The shared prompt of a group is the longest common prefix of its rows' attended tokens that ends
at or before the first label of every row; rows with none in common are branches of an empty
prompt (each then runs whole), so no input is refused. Positions are each token's column in its
row, as in the whole-row path.

A tree is a row of its own, not packed with others: attention under a mask is dense (CPU kernels
do not skip masked blocks), so four DPO pairs packed into one row spent a quarter of the step in
attention, and packing trees into rows of up to 768 tokens measured no faster than a tree a row
within the 2-core CPU's run-to-run noise (docs/benchmarks.md). Needs an
attention implementation that takes a custom (rows, 1, N, N) mask (transformers' ``sdpa``, the
default, or ``eager``) and no sliding window shorter than a row (``unsupported`` says why not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_align.data.formats import IGNORE_INDEX
from lit_align.objectives.logprobs import (attended_spans, cast_weights_once, default_group_overhead,
                                          picked_logprobs, plan_row_groups)

MASKABLE_ATTENTION = ("sdpa", "eager")


def unsupported(model, longest_row: int) -> str:
    """Why ``model`` cannot run prompt trees over rows up to ``longest_row`` tokens ("" where it can)."""
    config = getattr(model, "config", None)
    if config is None:
        return f"{type(model).__name__} has no config to read its attention implementation from"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in MASKABLE_ATTENTION:
        return (f"its attention implementation {attention!r} takes no custom attention mask (prompt trees need "
                f"one of {', '.join(MASKABLE_ATTENTION)})")
    window = getattr(config, "sliding_window", None)
    sliding = getattr(config, "use_sliding_window", True) and (
        "sliding_attention" in (getattr(config, "layer_types", None) or ["sliding_attention"]))
    if window and sliding and longest_row > window:
        return (f"its sliding attention window ({window} tokens) is shorter than a row ({longest_row}), and a "
                f"custom mask would replace the window")
    return ""


@dataclass
class TreeLayout:
    """Trees as rows of one forward, and where each labelled token's log-prob is read and put."""

    input_ids: torch.Tensor  # (R, N) tokens, a tree a row (padding: 0)
    position_ids: torch.Tensor  # (R, N) each token's column in its original row
    allowed: torch.Tensor  # (R, N, N) bool: query i may attend key j (padding: itself only)
    real: torch.Tensor  # (R, N) bool: a token of the tree (False: padding)
    sources: torch.Tensor  # (M,) flat index into (R * N) of the hidden state that predicts each labelled token
    targets: torch.Tensor  # (M,) the labelled tokens
    out_rows: torch.Tensor  # (M,) original row of each labelled token
    out_cols: torch.Tensor  # (M,) its column minus one (the whole-row path's log-prob layout)


def shared_prefix(input_ids: torch.Tensor, starts: list[int], ends: list[int], firsts: list[int], rows: list[int]) -> int:
    """Column where the group's shared prompt ends: the longest common prefix of the rows' attended tokens,
    at or before every row's first label. Rows that start at different columns share nothing.

    >>> ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6], [0, 1, 2, 3]])
    >>> shared_prefix(ids, [0, 0, 1], [4, 4, 4], [2, 3, 3], [0, 1]), shared_prefix(ids, [0, 0, 1], [4, 4, 4], [3, 3, 3], [0, 1])
    (2, 2)
    >>> shared_prefix(ids, [0, 0, 1], [4, 4, 4], [3, 3, 3], [0, 2])
    0
    """
    start = starts[rows[0]]
    if any(starts[r] != start for r in rows):
        return 0
    limit = min(min(firsts[r], ends[r]) for r in rows)
    if limit <= start:
        return start
    stretch = input_ids[rows, start:limit]
    same = (stretch == stretch[:1]).all(0)
    return start + (int(same.int().argmin()) if not bool(same.all()) else limit - start)


class Trees:
    """A batch's groups of rows as prompt trees: each group's shared prompt (``shared_prefix``) and branches."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 groups: list[list[int]]):
        rows, width = input_ids.shape
        if sorted(r for g in groups for r in g) != list(range(rows)):
            raise ValueError(f"prompt tree groups {groups} must hold each of the {rows} rows exactly once")
        self.input_ids, self.width = input_ids, width
        columns = torch.arange(width, device=input_ids.device)
        self.starts, self.ends = attended_spans(attention_mask)
        start_at = torch.tensor(self.starts, device=input_ids.device)[:, None]
        self.labelled = (labels != IGNORE_INDEX) & attention_mask.bool() & (columns[None] > start_at)
        firsts = torch.where(self.labelled.any(1), self.labelled.int().argmax(1), width).tolist()
        self.trees = []  # per group: (row holding the prompt, its columns (from, to), [(row, first branch column)])
        for g in groups:
            cut = shared_prefix(input_ids, self.starts, self.ends, firsts, g)
            prompt = (self.starts[g[0]], cut) if cut > self.starts[g[0]] else (cut, cut)
            self.trees.append((g[0], prompt, [(r, max(cut, self.starts[r])) for r in g]))

    def sizes(self) -> list[int]:
        """Tokens of each tree: its prompt once and every branch."""
        return [(p1 - p0) + sum(self.ends[r] - b for r, b in branches) for _, (p0, p1), branches in self.trees]

    def layout(self, which: list[int]) -> TreeLayout:
        """The trees ``which`` as the rows of one forward, a tree a row, padded to the longest."""
        ids_in, device = self.input_ids, self.input_ids.device
        sizes = self.sizes()
        n = max((sizes[t] for t in which), default=0)
        ids = ids_in.new_zeros(len(which), n)
        positions = ids_in.new_zeros(len(which), n)
        branch = torch.full((len(which), n), -1, dtype=torch.long, device=device)  # 0: the prompt, -1: padding
        columns = torch.arange(self.width, device=device)
        sources, targets, out_rows, out_cols = [], [], [], []
        for row, t in enumerate(which):
            prompt_row, (p0, p1), branches = self.trees[t]
            ids[row, : p1 - p0], positions[row, : p1 - p0] = ids_in[prompt_row, p0:p1], columns[p0:p1]
            branch[row, : p1 - p0] = 0
            offset = p1 - p0
            for b, (r, b0) in enumerate(branches, start=1):
                b1 = self.ends[r]
                span = slice(offset, offset + b1 - b0)
                ids[row, span], positions[row, span], branch[row, span] = ids_in[r, b0:b1], columns[b0:b1], b
                cols = self.labelled[r, b0:b1].nonzero().squeeze(-1) + b0  # labelled columns of this branch
                # column c is predicted at column c - 1: in the branch, or, for its first token, the prompt's last
                at = torch.where(cols > b0, offset + (cols - 1 - b0), torch.full_like(cols, p1 - p0 - 1))
                sources.append(row * n + at)
                targets.append(ids_in[r, cols])
                out_rows.append(torch.full_like(cols, r))
                out_cols.append(cols - 1)
                offset += b1 - b0
        keys = torch.arange(n, device=device)
        real = branch >= 0
        sees = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])  # the prompt, or its own branch
        allowed = ((sees & real[:, None, :] & real[:, :, None] & (keys[None, None, :] <= keys[None, :, None]))
                   | torch.eye(n, dtype=torch.bool, device=device)[None])  # padding: itself (SDPA needs a key a row)
        cat = lambda parts: torch.cat(parts) if parts else ids_in.new_zeros(0)  # noqa: E731
        return TreeLayout(ids, positions, allowed, real, cat(sources), cat(targets), cat(out_rows), cat(out_cols))


def attention_mask_for(model, allowed: torch.Tensor) -> torch.Tensor:
    """The (R, 1, N, N) mask in the form ``model``'s attention implementation reads: bool for SDPA,
    additive (0 or the dtype's lowest) for eager."""
    mask = allowed[:, None]
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        return mask
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def prompt_tree_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                         groups: list[list[int]], group_overhead: int | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """(rows, T - 1) log-probs of ``labels[:, 1:]`` (0 where ignored), as ``logprobs.model_token_logprobs``,
    with each group's shared prompt run once (module docstring). ``groups`` must cover every row once.
    Trees, a tree a row, are regrouped by size (``logprobs.plan_row_groups`` with ``group_overhead``,
    default: the device's), each group one forward; a very large overhead runs the whole batch as one."""
    rows, width = input_ids.shape
    trees = Trees(input_ids, attention_mask, labels, groups)
    out = torch.zeros(rows, max(width - 1, 0), dtype=torch.float32, device=input_ids.device)
    overhead = default_group_overhead(input_ids.device) if group_overhead is None else group_overhead
    sizes = trees.sizes()
    with cast_weights_once(input_ids.device):
        for which in plan_row_groups(sizes, overhead):
            if max(sizes[t] for t in which) == 0:
                continue
            layout = trees.layout(which)
            picked, _, flat = picked_logprobs(model, layout.input_ids, attention_mask_for(model, layout.allowed),
                                              layout.position_ids, layout.sources, layout.targets, chunk_size)
            if not picked:  # no label here: still a (zero) function of the model, so backward runs
                out = out + flat.sum() * 0 if flat.requires_grad else out
                continue
            out = out.index_put((layout.out_rows, layout.out_cols), torch.cat(picked).float())
    return out

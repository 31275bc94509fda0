"""How online RL cuts a step's rows into forward/backward passes, and which passes recompute.

``plan_micro_batches`` cuts rows (each group of adjacent rows shares a prompt; groups of k, or each of
its own size) into runs of at most
``max_rows`` rows and ``max_tokens`` forwarded tokens, the tokens counted as the passes run them: each
row's completion less its last token (which predicts nothing) and, with the prompt shared, each group's
prompt once per micro-batch it appears in (else once per row). Groups are kept whole wherever one fits
in a micro-batch; a group larger than the budget is split. The token budget follows veRL's dynamic
batch size (``ppo_max_token_len_per_gpu``) under the name the loop uses: ``max_tokens_per_micro_batch``.

``live_runs`` leaves out the rows whose passes the loop skips (groups whose advantages are all zero).

``needs_recompute`` decides activation checkpointing per micro-batch: only where its activations,
estimated by ``activation_bytes``, exceed the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lit_align.objectives import policy_gradient as pg


@dataclass(frozen=True)
class RowTokens:
    """Per row: completion length (tokens with a mask of 1) and prompt length (without padding)."""

    completion: list[int]
    prompt: list[int]

    @classmethod
    def of(cls, samples) -> RowTokens:
        """The lengths of a ``Samples``' rows."""
        return cls(samples.completion_mask.sum(1).tolist(), samples.prompt_mask.sum(1).tolist())

    def starts(self, sizes: pg.Sizes) -> set[int]:
        """The first row of each group of ``sizes`` (k each, or one size per group: ``pg.Sizes``)."""
        bounds, at = set(), 0
        for size in pg.size_list(sizes, len(self.completion)):
            bounds.add(at)
            at += size
        return bounds

    def forwarded(self, rows: range, share_prompt: bool, k: pg.Sizes) -> int:
        """Tokens a pass over ``rows`` forwards, in groups of ``k`` (an int, or each group's size)."""
        body = sum(max(self.completion[r] - 1, 0) for r in rows)
        if share_prompt:
            starts = self.starts(k)
            firsts = [r for r in rows if r == rows.start or r in starts]
        else:
            firsts = list(rows)
        return body + sum(self.prompt[r] for r in firsts)


def plan_micro_batches(rows: range, tokens: RowTokens, k: pg.Sizes, max_rows: int | None, max_tokens: int | None,
                       share_prompt: bool = True) -> list[range]:
    """Contiguous runs of ``rows`` within both limits (None: no limit). With a token budget, whole groups
    wherever they fit; with a row limit alone, runs of ``max_rows`` rows as they come. ``k``: rows per
    group, or each group's size (over all of ``tokens``' rows).

    >>> t = RowTokens(completion=[5, 5, 9, 9], prompt=[3, 3, 4, 4])
    >>> plan_micro_batches(range(4), t, k=2, max_rows=None, max_tokens=20)  # groups of 11 and 20 tokens
    [range(0, 2), range(2, 4)]
    >>> plan_micro_batches(range(4), t, k=2, max_rows=None, max_tokens=12)  # the second group is split
    [range(0, 2), range(2, 3), range(3, 4)]
    >>> plan_micro_batches(range(4), t, k=[1, 3], max_rows=None, max_tokens=25)  # groups of 7 and 23 tokens
    [range(0, 1), range(1, 4)]
    """
    if max_tokens is None:  # rows alone: runs of max_rows, as they come
        size = max_rows or max(len(rows), 1)
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    fits = (lambda run: _fits(run, tokens, k, max_rows, max_tokens, share_prompt))
    out, current = [], range(rows.start, rows.start)
    bounds = [rows.start] + sorted(b for b in tokens.starts(k) if rows.start < b < rows.stop) + [rows.stop]
    for group in (range(a, b) for a, b in zip(bounds, bounds[1:])):  # groups (the ends may be parts)
        if fits(range(current.start, group.stop)):
            current = range(current.start, group.stop)
            continue
        if len(current):
            out.append(current)
        current = range(group.start, group.start)
        for row in group:  # the group alone if it fits, else in parts, each as large as fits
            if len(current) and not fits(range(current.start, row + 1)):
                out.append(current)
                current = range(row, row)
            current = range(current.start, row + 1)
    if len(current):
        out.append(current)
    return out


def live_runs(rows: range, skipped: list[bool]) -> list[range]:
    """The maximal runs of ``rows`` none of whose rows is ``skipped`` (one flag per row of the batch).

    >>> live_runs(range(1, 8), [False, False, True, True, False, False, True, False])
    [range(1, 2), range(4, 6), range(7, 8)]
    >>> live_runs(range(0, 2), [True, True])
    []
    """
    out, start = [], None
    for row in rows:
        if skipped[row]:
            if start is not None:
                out.append(range(start, row))
            start = None
        elif start is None:
            start = row
    if start is not None:
        out.append(range(start, rows.stop))
    return out


def _fits(rows: range, tokens: RowTokens, k: pg.Sizes, max_rows, max_tokens, share_prompt: bool) -> bool:
    if max_rows is not None and len(rows) > max_rows:
        return False
    return max_tokens is None or tokens.forwarded(rows, share_prompt, k) <= max_tokens


def activation_bytes(config, tokens: int, element_bytes: int = 4, lora: bool = False) -> int:
    """Estimated bytes autograd keeps for a training forward over ``tokens`` tokens of a decoder
    described by ``config`` (hidden_size, intermediate_size, num_hidden_layers, vocab_size):
    ``layers x 6 x (hidden + intermediate) x element bytes`` a token for the layers, 1.4 times that with
    LoRA (without adapter dropout, as online RL runs it), plus the output head's float32 log-probs
    (``vocab x 4`` bytes). The layers' part measured on SmolLM2-135M in float32 (growth of peak RSS over
    a forward with grad of 2,048 tokens, head excluded): 1.48 MiB a token with full fine-tuning (the
    formula: 1.45), 2.07 with LoRA r16 on every linear layer (the formula: 2.03); adapter dropout of
    0.05 made it 3.0."""
    layers = config.num_hidden_layers * 6 * (config.hidden_size + config.intermediate_size) * element_bytes
    return tokens * (layers * (7 if lora else 5) // 5 + config.vocab_size * 4)


def needs_recompute(asked: bool, budget_gib: float | None, estimate: int) -> bool:
    """Recompute a micro-batch's activations in backward: where asked (``gradient_checkpointing``) and,
    with a memory budget, only where the estimate exceeds it."""
    return asked and (budget_gib is None or estimate > budget_gib * 2**30)


@dataclass(frozen=True)
class MicroBatching:
    """The loop's micro-batch settings: how a step's rows are cut and which passes recompute."""

    max_rows: int | None = None
    max_tokens: int | None = None
    share_prompt: bool = True
    recompute_asked: bool = False  # the policy's gradient_checkpointing
    memory_budget_gib: float | None = None
    lora: bool = field(default=False)

    def plan(self, samples, rows: range, sizes: pg.Sizes) -> list[range]:
        """The micro-batches of ``rows`` of ``samples``, whose groups have ``sizes``."""
        return plan_micro_batches(rows, RowTokens.of(samples), sizes, self.max_rows, self.max_tokens,
                                  self.share_prompt)

    def recompute(self, samples, rows: range, config, sizes: pg.Sizes) -> bool:
        """Whether a pass over ``rows`` recomputes its activations in backward (``needs_recompute``)."""
        tokens = RowTokens.of(samples).forwarded(rows, self.share_prompt, sizes)
        return needs_recompute(self.recompute_asked, self.memory_budget_gib,
                               activation_bytes(config, tokens, lora=self.lora))

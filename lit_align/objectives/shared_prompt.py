"""Log-probs of completions that share a prompt, with each prompt forwarded once.

Online RL samples k completions per prompt and DPO scores a chosen and a rejected answer to one
prompt. Run as independent rows, every row re-runs its prompt, in the forward and in the backward:
with a Countdown prompt of ~105 tokens and completions of ~140, a group of 8 costs 8 x 245 = 1,960
token-forwards where 105 + 8 x 140 = 1,225 carry everything.

``shared_prompt_logprobs`` runs each run of consecutive rows with the same prompt (a *group*) as

1. the prompt alone, once, keeping its keys and values (the model's KV cache) and its last hidden
   state, which predicts every row's first completion token;
2. the group's completions as rows of their own that attend to those keys and values, positions
   continuing from the prompt's; rows are cut to their own length and regrouped by length
   (``logprobs.plan_row_groups``), so padding stays under one forward's fixed cost.

Gradients reach the prompt through its keys, values and last hidden state; autograd sums the k
completions' contributions, so the prompt's backward also runs once. Per-token log-probs and
gradients equal the plain path's (``logprobs.completion_logprobs``) up to float rounding (tests:
1e-5, Llama and Qwen2 layouts, LoRA and full fine-tuning).

Layouts measured on the 2-core CPU (SmolLM2-135M with LoRA r16, one group of 8 x 140 tokens after a
105-token prompt, forward + backward): plain rows 12.1-13.6 s, the whole group packed into one row
with a block mask (completions attend to the prompt and themselves) 10.3-11.5 s, this layout
8.6-9.2 s. A packed row pays dense attention over the whole group (CPU attention kernels do not
skip masked blocks), so on CPUs the prompt cache wins.

``recompute``: activation checkpointing of the completion rows (the prompt, one short row, keeps its
activations). Hugging Face's own per-layer checkpointing drops a KV cache, so it is switched off
for the call and this replaces it.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lit_align.modeling import models
from lit_align.objectives.logprobs import (cast_weights_once, chunked_head_logprobs, completion_logprobs,
                                          default_group_overhead, plan_row_groups)


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[range]:
    """Runs of consecutive rows with the same (left-padded) prompt.

    >>> prompt_groups(torch.tensor([[0, 5], [0, 5], [4, 5]]), torch.tensor([[0, 1], [0, 1], [1, 1]]))
    [range(0, 2), range(2, 3)]
    """
    rows = prompt_ids.size(0)
    if rows == 0:
        return []
    same_ids = ((prompt_ids[1:] == prompt_ids[:-1]) | (prompt_mask[1:] == 0)).all(1)
    same = same_ids & (prompt_mask[1:] == prompt_mask[:-1]).all(1)
    starts = [0] + [i + 1 for i in (~same).nonzero().flatten().tolist()]
    return [range(s, e) for s, e in zip(starts, starts[1:] + [rows])]


@contextlib.contextmanager
def layer_checkpointing_off(model: torch.nn.Module):
    """Hugging Face's per-layer gradient checkpointing off for the duration (it would drop the KV cache)."""
    switched = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in switched:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.gradient_checkpointing = True


def _cache_argument(model: torch.nn.Module) -> str:
    """The name the model's forward takes a KV cache by (``cache`` from transformers 5.x, else ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.get_base_model().forward if hasattr(model, "get_base_model")
                                                   else model.forward).parameters else "past_key_values"


def _run_prompt(model, prompt: torch.Tensor, cache_name: str):
    """(keys and values per layer, last hidden state (d,)) of one prompt (P,)."""
    positions = torch.arange(prompt.numel(), device=prompt.device)[None]
    with layer_checkpointing_off(model):
        out = model(input_ids=prompt[None], position_ids=positions, use_cache=True, logits_to_keep=1,
                    output_hidden_states=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    return [tuple(layer[:2]) for layer in cache], out.hidden_states[-1][0, -1]


class _PromptLayer(DynamicLayer):
    """One layer's cache of a prompt that hands back prompt + new keys/values without keeping the new ones:
    a layer replayed by per-layer checkpointing then reads exactly what it read the first time."""

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _prompt_cache(model, kv: list, n: int, read_only: bool) -> DynamicCache:
    """The prompt's keys/values as a cache for ``n`` rows; ``read_only``: one whose layers hand back prompt
    + new states without keeping them (needs plain full-attention layers: ``_per_layer_recompute_ready``)."""
    cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv],
                         config=models.text_config(model))
    if read_only:
        for layer in cache.layers:
            layer.__class__ = _PromptLayer
    return cache


def _decoder_layers(model) -> list[torch.nn.Module]:
    """The model's layers that Hugging Face's per-layer checkpointing wraps."""
    return [m for m in model.modules() if hasattr(m, "_can_checkpoint_with_cache")]


@contextlib.contextmanager
def _layer_recompute(model):
    """Hugging Face's per-layer checkpointing on, reading the prompt's cache (which a replay leaves as it was)."""
    layers = _decoder_layers(model)
    saved = [(m.gradient_checkpointing, m.__dict__.get("_can_checkpoint_with_cache")) for m in layers]
    for m in layers:
        m.gradient_checkpointing, m._can_checkpoint_with_cache = True, True
    try:
        yield
    finally:
        for m, (flag, own) in zip(layers, saved):
            m.gradient_checkpointing = flag
            if own is None:
                del m._can_checkpoint_with_cache
            else:
                m._can_checkpoint_with_cache = own


def _per_layer_recompute_ready(model) -> bool:
    """Whether the model's layers can checkpoint one by one (Hugging Face set their checkpoint function)
    over a read-only prompt cache (every cache layer a plain full-attention one); else the completions'
    whole forward is replayed instead."""
    layers = _decoder_layers(model)
    plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=models.text_config(model)).layers)
    return bool(layers) and plain and all(hasattr(m, "_gradient_checkpointing_func") for m in layers)


def _run_completions(model, kv: list, ids: torch.Tensor, start: int, cache_name: str,
                     per_layer_recompute: bool = False) -> torch.Tensor:
    """(n, L, d) final hidden states of completion rows ``ids`` (n, L) after a prompt of ``start`` tokens
    whose keys and values are ``kv``. Padding after a row's end is harmless: attention is causal.
    ``per_layer_recompute``: each layer recomputed in backward on its own (one layer's activations at a
    time), through the model's own checkpointing over a read-only prompt cache."""
    n, width = ids.shape
    cache = _prompt_cache(model, kv, n, read_only=per_layer_recompute)
    positions = torch.arange(start, start + width, device=ids.device).expand(n, width)
    # off unless asked, also when ``checkpoint`` replays this whole call in backward
    with _layer_recompute(model) if per_layer_recompute else layer_checkpointing_off(model):
        out = model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, output_hidden_states=True,
                    **{cache_name: cache})
    return out.hidden_states[-1]


def sample_logprobs(model, samples, share_prompt: bool, with_entropy: bool = False, entropy_grad: bool = True,
                    recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) log-probs (and entropies) of ``samples``' completions: with ``share_prompt`` through
    ``shared_prompt_logprobs``, else the plain path (every row whole), recomputing activations in backward
    only where ``recompute`` (the model's own per-layer checkpointing, switched off otherwise)."""
    if share_prompt:
        return shared_prompt_logprobs(model, samples, with_entropy, entropy_grad, recompute=recompute)
    with contextlib.nullcontext() if recompute else layer_checkpointing_off(model):
        return completion_logprobs(model, samples, with_entropy, entropy_grad=entropy_grad)


def shared_prompt_logprobs(model, samples, with_entropy: bool = False, entropy_grad: bool = True,
                           recompute: bool = False, chunk_size: int = 1024,
                           group_overhead: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) log-probs (and entropies) of ``samples``' completion tokens, as ``completion_logprobs``
    returns them (0 on padding), each group's prompt forwarded once. ``samples``: a ``Samples``
    (left-padded prompts, right-padded completions whose mask is 1 from the first token on)."""
    ids, mask = samples.completion_ids, samples.completion_mask
    rows, width = ids.shape
    device = ids.device
    lengths = mask.sum(1).tolist()
    overhead = default_group_overhead(device) if group_overhead is None else group_overhead
    cache_name = _cache_argument(model)
    layer_by_layer = recompute and torch.is_grad_enabled() and _per_layer_recompute_ready(model)
    hidden, targets, places = [], [], []  # labelled positions: hidden state, token, flat index in (N, C)
    with cast_weights_once(device):
        for group in prompt_groups(samples.prompt_ids, samples.prompt_mask):
            members = [r for r in group if lengths[r] > 0]
            if not members:
                continue
            prompt = samples.prompt_ids[group.start][samples.prompt_mask[group.start].bool()]
            kv, last = _run_prompt(model, prompt, cache_name)
            first = torch.tensor(members, device=device)
            hidden.append(last.expand(len(members), -1))
            targets.append(ids[first, 0])
            places.append(first * width)
            # a row's last token predicts nothing: rows run their first n - 1 tokens
            for part in plan_row_groups([lengths[r] - 1 for r in members], overhead):
                picked = torch.tensor([members[i] for i in part], device=device)
                longest = max(lengths[r] for r in picked.tolist())
                if longest < 2:
                    continue
                args = (model, kv, ids[picked, : longest - 1], prompt.numel(), cache_name)
                if recompute and torch.is_grad_enabled() and not layer_by_layer:  # the whole forward, replayed
                    h = checkpoint(_run_completions, *args, use_reentrant=False)
                else:
                    h = _run_completions(*args, per_layer_recompute=recompute and layer_by_layer)
                labelled = mask[picked, 1:longest].bool()
                where = labelled.reshape(-1).nonzero().squeeze(-1)
                hidden.append(h.reshape(-1, h.size(-1)).index_select(0, where))
                targets.append(ids[picked, 1:longest].reshape(-1).index_select(0, where))
                columns = torch.arange(1, longest, device=device).expand(len(picked), -1)
                places.append((picked[:, None] * width + columns).reshape(-1).index_select(0, where))
        return _scatter_head(model.get_output_embeddings(), hidden, targets, places, (rows, width), device, chunk_size,
                             with_entropy, samples.temperature or 1.0, entropy_grad, recompute)


def _scatter_head(head, hidden, targets, places, shape, device, chunk_size, with_entropy, temperature, entropy_grad,
                  recompute):
    """The output head on the labelled hidden states, ``chunk_size`` at a time, scattered into ``shape``
    tensors. Chunks bound the logits that exist at once; with ``recompute`` each chunk is checkpointed
    too, so its (chunk x V) log-probs are not kept for backward either. Without it they are (V x 4 bytes
    a labelled token, counted in ``methods.micro_batches.activation_bytes``): recomputing the head cost
    ~8 % of a group's forward and backward on the 2-core CPU."""
    flat_zero = torch.zeros(shape[0] * shape[1], dtype=torch.float32, device=device)
    if not hidden:
        return flat_zero.view(shape), (flat_zero.view(shape) if with_entropy else None)
    hidden, targets, places = torch.cat(hidden), torch.cat(targets), torch.cat(places)
    checkpointed = recompute and torch.is_grad_enabled() and targets.numel() > chunk_size
    picked, entropy = chunked_head_logprobs(head, hidden, targets, chunk_size, checkpointed, with_entropy, temperature,
                                            entropy_grad)

    def scatter(values):
        return flat_zero.index_put((places,), torch.cat(values).float()).view(shape)

    return scatter(picked), (scatter(entropy) if with_entropy else None)

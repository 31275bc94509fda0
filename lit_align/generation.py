"""Batched sampling from a causal LM: left-padded prompts, KV cache, n samples per prompt.

Generation runs in eval mode under ``no_grad`` and restores the model's training mode afterwards.
Sampling is seeded without disturbing the global RNG streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version

from lit_align import ops

# generate()'s name for a ready KV cache: "cache" from transformers 5.24 on (the old name is deprecated there)
_CACHE_KWARG = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


@dataclass
class SamplingParams:
    """How completions are drawn."""

    max_new_tokens: int = 128
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    n: int = 1
    """Completions per prompt."""


@dataclass
class Samples:
    """``n`` completions per prompt, grouped prompt by prompt (rows ``i*n .. i*n+n-1`` share prompt ``i``)."""

    prompt_ids: torch.Tensor  # (B*n, P) left-padded
    prompt_mask: torch.Tensor  # (B*n, P)
    completion_ids: torch.Tensor  # (B*n, C) right-padded with pad id
    completion_mask: torch.Tensor  # (B*n, C) 1 up to and including the first EOS
    texts: list[str]  # decoded completions without special tokens


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on every token up to and including the first EOS of each row.

    >>> completion_mask(torch.tensor([[5, 2, 7], [5, 6, 7]]), eos_id=2).tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def _shared_prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int):
    """KV cache of every prompt but its last token, computed once per prompt and repeated ``n`` times.

    ``generate`` then feeds only the last prompt token and goes on decoding. None where it does not
    apply (one sample per prompt, a one-token prompt, a model without a cache that can be repeated).
    """
    if n < 2 or input_ids.size(1) < 2:
        return None
    # the positions generate gives left-padded rows: counted over attended tokens (padding gets 1, unused)
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    out = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                position_ids=position_ids[:, :-1], use_cache=True)
    cache = out.cache if _CACHE_KWARG == "cache" else out.past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(n)
    return cache


@torch.no_grad()
def sample(
    model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0,
    synced: bool = False, share_prompt: bool = True,
) -> Samples:
    """Draw ``params.n`` completions for each left-padded prompt row.

    ``share_prompt``: run each prompt through the model once and copy its KV cache to its ``n``
    samples, instead of computing the same prompt ``n`` times (the samples are the same, up to float
    rounding).

    ``synced``: keep every data-parallel rank decoding until all are done. Needed when parameters are
    sharded (FSDP): each forward gathers shards collectively, so ranks must run the same number of steps.
    """
    was_training = model.training
    model.eval()
    device = input_ids.device
    greedy = params.temperature == 0
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    devices = [device] if device.type == "cuda" else []
    try:
        with ops.cast_weights_once(device):
            # the prompts' states, computed once and shared by their n samples (all but the last token)
            shared = _shared_prompt_cache(model, input_ids, attention_mask, params.n) if share_prompt else None
            input_ids = input_ids.repeat_interleave(params.n, dim=0)
            attention_mask = attention_mask.repeat_interleave(params.n, dim=0)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=params.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                    synced_gpus=synced,
                    **({_CACHE_KWARG: shared} if shared is not None else {}),
                    **kwargs,
                )
    finally:
        model.train(was_training)
    completion_ids = out[:, input_ids.shape[1] :]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids * mask, skip_special_tokens=True)
    return Samples(input_ids, attention_mask, completion_ids, mask, texts)

"""Batched sampling from a causal LM: left-padded prompts, KV cache, n samples per prompt.

Generation runs in eval mode under ``no_grad`` and restores the model's training mode afterwards.
Sampling is seeded without disturbing the global RNG streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@torch.no_grad()
def sample(
    model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0,
    synced: bool = False,
) -> Samples:
    """Draw ``params.n`` completions for each left-padded prompt row.

    ``synced``: keep every data-parallel rank decoding until all are done. Needed when parameters are
    sharded (FSDP): each forward gathers shards collectively, so ranks must run the same number of steps.
    """
    was_training = model.training
    model.eval()
    device = input_ids.device
    input_ids = input_ids.repeat_interleave(params.n, dim=0)
    attention_mask = attention_mask.repeat_interleave(params.n, dim=0)
    greedy = params.temperature == 0
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    devices = [device] if device.type == "cuda" else []
    try:
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
                **kwargs,
            )
    finally:
        model.train(was_training)
    completion_ids = out[:, input_ids.shape[1] :]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids * mask, skip_special_tokens=True)
    return Samples(input_ids, attention_mask, completion_ids, mask, texts)

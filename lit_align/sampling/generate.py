"""Batched sampling from a causal LM: left-padded prompts, KV cache, n samples per prompt.

Generation runs in eval mode under ``no_grad`` and restores the model's training mode afterwards.
Sampling is seeded without disturbing the global RNG streams.

What is drawn is exactly softmax(z / T) (with top-p when asked): a completion ends at EOS or at the
chat template's end-of-turn token (``stop_token_ids``), and the model's own ``generation_config``
(a shipped repetition penalty, top-k, temperature, ...) is set aside for the call, so the log-probs
a method takes at the same temperature describe the samples. Texts are decoded from the kept tokens
only: padding after the end is never decoded (in Qwen's vocabulary id 0 is the ordinary token "!").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_align.objectives import logprobs, ops
from lit_align.data.formats import stop_token_ids

# generate()'s name for a ready KV cache: "cache" from transformers 5.24 on (the old name is deprecated there)
_CACHE_KWARG = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


@dataclass
class SamplingParams:
    """How completions are drawn. Settings out of range are refused when built, naming the setting.

    >>> SamplingParams(top_p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: SamplingParams.top_p must be in (0, 1] (1: no nucleus cut), got 1.5
    """

    max_new_tokens: int = 128
    """Longest completion in tokens (at least 1)."""
    temperature: float = 1.0
    """Softmax temperature, at least 0; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; 1 samples from the whole distribution."""
    n: int = 1
    """Completions per prompt (at least 1)."""

    def __post_init__(self) -> None:
        refused = [(not self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
                   (not self.temperature >= 0, "temperature", "must be at least 0 (0: greedy)"),
                   (not 0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1: no nucleus cut)"),
                   (not self.n >= 1, "n", "must be at least 1")]
        for out_of_range, name, allowed in refused:
            if out_of_range:
                raise ValueError(f"SamplingParams.{name} {allowed}, got {getattr(self, name)!r}")


@dataclass
class Samples:
    """``n`` completions per prompt, grouped prompt by prompt (rows ``i*n .. i*n+n-1`` share prompt ``i``)."""

    prompt_ids: torch.Tensor  # (B*n, P) left-padded
    prompt_mask: torch.Tensor  # (B*n, P)
    completion_ids: torch.Tensor  # (B*n, C) right-padded with pad id
    completion_mask: torch.Tensor  # (B*n, C) 1 up to and including the first stop token
    texts: list[str]  # decoded from the kept tokens only, without special tokens
    truncated: torch.Tensor | None = None  # (B*n,) bool: cut at max_new_tokens, no stop token
    temperature: float = 1.0  # what the completions were sampled at (0: greedy)
    engine_logps: torch.Tensor | None = None  # (B*n, C) the engine's log-probs of its tokens at T (vLLM only)

    def __len__(self) -> int:
        return self.completion_ids.size(0)

    def select(self, rows: torch.Tensor | list[int] | slice) -> Samples:
        """The samples of ``rows`` (indices or a slice), as a ``Samples`` of their own."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
        pick = (lambda t: None if t is None else t[rows])
        texts = self.texts[rows] if isinstance(rows, slice) else [self.texts[i] for i in rows.tolist()]
        return Samples(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows],
                       self.completion_mask[rows], texts, pick(self.truncated), self.temperature,
                       pick(self.engine_logps))


def concat_samples(parts: list[Samples], pad_id: int) -> Samples:
    """Samples drawn separately (e.g. the kept groups of several draws) as one batch: prompts left-padded
    and completions right-padded to the widest, masks 0 on the padding."""
    if not parts:
        raise ValueError("nothing to concatenate")
    if len({p.temperature for p in parts}) > 1:
        raise ValueError("samples drawn at different temperatures cannot form one batch")
    prompt_width = max(p.prompt_ids.size(1) for p in parts)
    width = max(p.completion_ids.size(1) for p in parts)

    def left(t, value):
        return torch.nn.functional.pad(t, (prompt_width - t.size(1), 0), value=value)

    def right(t, value):
        return torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)

    engine = None if any(p.engine_logps is None for p in parts) else torch.cat([right(p.engine_logps, 0.0) for p in parts])
    return Samples(
        torch.cat([left(p.prompt_ids, pad_id) for p in parts]), torch.cat([left(p.prompt_mask, 0) for p in parts]),
        torch.cat([right(p.completion_ids, pad_id) for p in parts]), torch.cat([right(p.completion_mask, 0) for p in parts]),
        [t for p in parts for t in p.texts], torch.cat([p.truncated for p in parts]), parts[0].temperature, engine,
    )


def completion_mask(completion_ids: torch.Tensor, stop_ids: int | list[int]) -> torch.Tensor:
    """1 on every token up to and including the first stop token of each row.

    >>> completion_mask(torch.tensor([[5, 2, 7], [5, 6, 7], [9, 4, 2]]), stop_ids=[2, 9]).tolist()
    [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    """
    stops = torch.tensor(stop_ids if isinstance(stop_ids, list) else [stop_ids], device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stops)
    after_stop = (is_stop.cumsum(dim=1) - is_stop.long()) > 0
    return (~after_stop).long()


def ends(completion_ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``completion_mask`` of the rows and which of them are truncated (no stop token at all).

    >>> ends(torch.tensor([[5, 2, 7], [5, 6, 7]]), [2])[1].tolist()
    [False, True]
    """
    mask = completion_mask(completion_ids, stop_ids)
    return mask, ~torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device)).any(dim=1)


def decode_kept(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Each row's kept tokens (``mask`` 1) decoded without special tokens; nothing past the end is read."""
    rows = [ids[keep.bool()].tolist() for ids, keep in zip(completion_ids.cpu(), mask.cpu())]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


@contextlib.contextmanager
def own_generation_config(model):
    """Set the model's ``generation_config`` aside for the call: only lit_align's settings apply.

    ``generate`` fills every setting it is not given from the model's config, so a shipped
    repetition penalty, top-k or no-repeat rule would otherwise reshape the distribution sampled.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def _shared_prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int):
    """KV cache of every prompt but its last token, computed once per prompt and repeated ``n`` times.

    ``generate`` then feeds only the last prompt token and goes on decoding. None where it does not
    apply (one sample per prompt, a one-token prompt, a model without a cache that can be repeated).
    """
    if n < 2 or input_ids.size(1) < 2:
        return None
    # positions counted over attended tokens, as generate counts them (what padding gets is never attended)
    position_ids = ops.position_ids_from_mask(attention_mask)
    out = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                position_ids=position_ids[:, :-1], use_cache=True)
    cache = out.cache if _CACHE_KWARG == "cache" else out.past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(n)
    return cache


@torch.no_grad()
def sample(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    params: SamplingParams, seed: int = 0, share_prompt: bool = True,
) -> Samples:
    """Draw ``params.n`` completions for each left-padded prompt row.

    ``share_prompt``: run each prompt through the model once and copy its KV cache to its ``n``
    samples, instead of computing the same prompt ``n`` times (the samples are the same, up to float
    rounding).

    Whether data-parallel ranks keep decoding until all are done (``synced_gpus``) is left to
    ``generate``, which turns it on for a model it sees sharded (FSDP, DeepSpeed ZeRO-3).
    """
    was_training = model.training
    model.eval()
    device = input_ids.device
    greedy = params.temperature == 0
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    devices = [device] if device.type == "cuda" else []
    stops = stop_token_ids(tokenizer)
    try:
        with logprobs.cast_weights_once(device), own_generation_config(model):
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
                    eos_token_id=stops,
                    use_cache=True,
                    **({_CACHE_KWARG: shared} if shared is not None else {}),
                    **kwargs,
                )
    finally:
        model.train(was_training)
    completion_ids = out[:, input_ids.shape[1] :]
    mask, truncated = ends(completion_ids, stops)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = decode_kept(tokenizer, completion_ids, mask)
    return Samples(input_ids, attention_mask, completion_ids, mask, texts, truncated, params.temperature)

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
from transformers.cache_utils import DynamicLayer

from lit_align.modeling import models
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


def draw_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` (R, V) from softmax(logits / T), cut to the top-p nucleus when
    ``top_p`` < 1, by inverting each row's cumulative distribution at ``uniforms`` (R,) in [0, 1).

    One uniform a row instead of ``torch.multinomial``'s one exponential draw per vocabulary entry:
    at 64 rows of SmolLM2's 49,152 tokens the multinomial took ~100 ms a decoding step on the 2-core
    CPU, about a quarter of the step; this ~4 ms. A token of probability 0 (outside the nucleus) is
    never drawn: the cumulative sum does not rise over it.

    >>> draw_tokens(torch.tensor([[0.0, 0.0, -1e9]]), 1.0, 1.0, torch.tensor([0.75])).tolist()
    [1]
    """
    logits = logits.float() / temperature
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=False)
        # the least likely tokens whose mass together stays within 1 - top_p leave (the likeliest always stays)
        leave = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        leave[:, -1] = False
        logits = logits.masked_fill(leave.scatter(1, order, leave), float("-inf"))
    cdf = logits.softmax(-1).double().cumsum(-1)
    picked = torch.searchsorted(cdf, (uniforms.double() * cdf[:, -1])[:, None], right=True).squeeze(1)
    # rounding at the very top: fall back to the last token with probability above 0
    last_positive = (logits > float("-inf")).int().cumsum(-1).argmax(-1)
    return torch.minimum(picked, last_positive)


class _InPlaceLayer(DynamicLayer):
    """One layer's KV cache in a buffer sized for the whole decode: each step writes its keys/values
    into place and hands back views, where the plain layer concatenates (copies) the whole cache every
    step (~45 ms a step at 64 rows x ~150 tokens over SmolLM2's 30 layers on the 2-core CPU)."""

    def _fill(self, room: int) -> None:
        self._length = self.keys.size(-2)
        self._k = self.keys.new_empty(*self.keys.shape[:-2], self._length + room, self.keys.size(-1))
        self._v = self.values.new_empty(*self.values.shape[:-2], self._length + room, self.values.size(-1))
        self._k[..., : self._length, :] = self.keys
        self._v[..., : self._length, :] = self.values
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._k[..., : self._length, :], self._v[..., : self._length, :]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self._length + key_states.size(-2)
        if end > self._k.size(-2):  # more than was planned for: grow
            self._fill(max(end - self._length, self._k.size(-2)))
        self._k[..., self._length : end, :] = key_states
        self._v[..., self._length : end, :] = value_states
        self._length = end
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._view()


def _decode_in_place(cache, room: int) -> None:
    """Turn ``cache``'s plain layers into ``_InPlaceLayer``s with ``room`` more positions (other layer
    kinds, e.g. sliding-window ones, stay as they are)."""
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None:
            layer.__class__ = _InPlaceLayer
            layer._fill(room)


@contextlib.contextmanager
def _lora_merged(model):
    """For the call, each LoRA layer's delta added into a copy of its base weight and the adapters
    switched off: one matmul a layer where the adapter path runs three more ops, and at 64 rows a
    decoding step's many small ops are much of what the CPU spends (docs/benchmarks.md, "Sampling with
    lit_align's own decoding loop"). The base weights are put back untouched
    (out of place: nothing is subtracted). A model it cannot merge exactly (not a peft LoRA model,
    DoRA, quantised or non-Linear bases, modules_to_save) runs as it is."""
    layers = _mergeable_lora_layers(model)
    if not layers:
        yield
        return
    saved = []
    try:
        for layer, delta in layers:
            base = layer.get_base_layer()
            saved.append((base, base.weight.data))
            base.weight.data = base.weight.data + delta.to(base.weight.dtype)
        with model.disable_adapter():
            yield
    finally:
        for base, weight in saved:
            base.weight.data = weight


def _mergeable_lora_layers(model) -> list:
    """(layer, delta) of each of the model's LoRA layers that holds an active adapter, where every LoRA
    layer can be merged exactly; else []."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return []
    if not hasattr(model, "disable_adapter") or not hasattr(model, "peft_config"):
        return []
    if any(getattr(c, "modules_to_save", None) for c in model.peft_config.values()):
        return []
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        base = m.get_base_layer() if isinstance(m, LoraLinear) else None
        if (type(base) is not torch.nn.Linear or not base.weight.is_floating_point() or m.merged
                or any(m.use_dora.get(a, False) for a in m.active_adapters)):
            return []
    return [(m, delta) for m in layers if (delta := models.lora_delta(m)) is not None]


def _decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams, seed: int,
            stops: list[int], pad_id: int, cache=None, cut_at: float | None = 0.25) -> torch.Tensor:
    """(R, C) completion tokens of the left-padded prompt rows, padded with ``pad_id`` after each row's
    stop token; ``cache``: the rows' keys/values of every prompt token but the last.

    lit_align's own decoding loop, for what ``generate`` spends on a CPU without need: the KV cache is
    written in place (``_InPlaceLayer``), rows that have stopped leave the batch (the cache is cut to
    the running rows once ``cut_at`` of them have stopped; None: never) and tokens are drawn by
    ``draw_tokens``. Row r's t-th token uses the t-th uniform of row r's stream (``seed``), so what a
    row draws does not depend on which other rows still run. Greedy decoding takes the arg-max."""
    from lit_align.objectives.shared_prompt import _cache_argument

    rows, device = input_ids.size(0), input_ids.device
    cache_name = _cache_argument(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    stop_ids = torch.tensor(stops, device=device)
    out = torch.full((rows, params.max_new_tokens), pad_id, dtype=torch.long, device=device)
    running = torch.arange(rows, device=device)  # original row of each batch row
    mask = attention_mask.long()
    feed = input_ids if cache is None else input_ids[:, -1:]
    positions = ops.position_ids_from_mask(mask)[:, -feed.size(1):]
    alive = torch.ones(rows, dtype=torch.bool, device=device)  # per batch row: not yet stopped
    width = 0
    for step in range(params.max_new_tokens):
        output = model(input_ids=feed, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                       **({cache_name: cache} if cache is not None else {}))
        if step == 0:
            cache = getattr(output, "cache", None) or output.past_key_values
            _decode_in_place(cache, params.max_new_tokens)
        logits = output.logits[:, -1]
        if params.temperature == 0:
            tokens = logits.argmax(-1)
        else:
            uniforms = torch.rand(rows, generator=generator, device=device, dtype=torch.float64)
            tokens = draw_tokens(logits, params.temperature, params.top_p, uniforms[running])
        out[running[alive], step] = tokens[alive]
        width = step + 1
        alive &= ~torch.isin(tokens, stop_ids)
        if not bool(alive.any()):
            break
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        feed = tokens[:, None]
        if cut_at is not None and int((~alive).sum()) >= cut_at * alive.numel():  # enough have stopped: cut them out
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            running, mask, positions, feed, alive = running[keep], mask[keep], positions[keep], feed[keep], alive[keep]
    return out[:, :width]


@torch.no_grad()
def sample(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    params: SamplingParams, seed: int = 0, share_prompt: bool = True, loop: str = "auto",
) -> Samples:
    """Draw ``params.n`` completions for each left-padded prompt row.

    ``loop``: which decoding loop runs: ``"lit_align"`` (``_decode``: stopped rows leave the batch,
    one uniform a token), ``"generate"`` (Hugging Face's), or ``"auto"``: lit_align's for sampling
    (temperature > 0) on a model FSDP does not shard, ``generate`` for greedy decoding (so evaluations
    decode as they always have) and for sharded models. The two loops draw different samples from the
    same distribution for one seed.

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
    stops = stop_token_ids(tokenizer)
    if loop not in ("auto", "lit_align", "generate"):
        raise ValueError(f"loop must be 'auto', 'lit_align' or 'generate', got {loop!r}")
    own = loop == "lit_align" or (loop == "auto" and not greedy and not models.fsdp_sharded(model))
    try:
        with logprobs.cast_weights_once(device), own_generation_config(model):
            # the prompts' states, computed once and shared by their n samples (all but the last token)
            shared = _shared_prompt_cache(model, input_ids, attention_mask, params.n) if share_prompt else None
            input_ids = input_ids.repeat_interleave(params.n, dim=0)
            attention_mask = attention_mask.repeat_interleave(params.n, dim=0)
            if own:
                with _lora_merged(model):
                    completion_ids = _decode(model, input_ids, attention_mask, params, seed, stops,
                                             tokenizer.pad_token_id, cache=shared)
            else:
                completion_ids = _generate(model, tokenizer, input_ids, attention_mask, params, seed, stops, shared)
    finally:
        model.train(was_training)
    mask, truncated = ends(completion_ids, stops)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = decode_kept(tokenizer, completion_ids, mask)
    return Samples(input_ids, attention_mask, completion_ids, mask, texts, truncated, params.temperature)


def _generate(model, tokenizer, input_ids, attention_mask, params, seed, stops, shared):
    """(R, C) completion tokens from Hugging Face's ``generate``; ``shared``: the prompts' cache or None."""
    greedy = params.temperature == 0
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=params.max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops, use_cache=True,
                             **({_CACHE_KWARG: shared} if shared is not None else {}), **kwargs)
    return out[:, input_ids.shape[1] :]

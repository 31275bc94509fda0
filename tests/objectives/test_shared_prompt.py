"""The prompt forwarded once per group gives the plain path's log-probs, entropies and gradients."""

import pytest
import torch

from lit_align.modeling import models, tiny
from lit_align.objectives import logprobs, shared_prompt
from lit_align.sampling.generate import Samples

from conftest import causal_lm_layouts, weighted_grads


def _samples(vocab: int, k: int = 3, seed: int = 0) -> Samples:
    """Two groups of k completions of ragged lengths after left-padded prompts of different lengths, plus
    a lone row; one completion is empty and one is a single token."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, vocab, (9,), generator=g), torch.randint(4, vocab, (5,), generator=g),
               torch.randint(4, vocab, (7,), generator=g)]
    lengths = [[11, 4, 1][:k] + [8] * (k - 3), [0, 12, 6][:k] + [3] * (k - 3), [10]]
    rows = [(p, n) for p, ns in zip(prompts, lengths) for n in ns]
    width, cwidth = 9, 12
    prompt_ids = torch.zeros(len(rows), width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.zeros(len(rows), cwidth, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for r, (p, n) in enumerate(rows):
        prompt_ids[r, width - p.numel():], prompt_mask[r, width - p.numel():] = p, 1
        completion_ids[r, :n], completion_mask[r, :n] = torch.randint(4, vocab, (n,), generator=g), 1
    return Samples(prompt_ids, prompt_mask, completion_ids, completion_mask, [""] * len(rows), temperature=0.7)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name,model", list(causal_lm_layouts()), ids=lambda x: x if isinstance(x, str) else "")
def test_log_probs_entropies_and_gradients_equal_the_plain_path(name, model, recompute):
    torch.manual_seed(0)
    model.train()
    samples = _samples(model.config.vocab_size)
    plain, plain_entropy = logprobs.completion_logprobs(model, samples, with_entropy=True)
    shared, shared_entropy = shared_prompt.shared_prompt_logprobs(model, samples, with_entropy=True, recompute=recompute,
                                                                  chunk_size=5)
    assert shared.shape == plain.shape
    assert torch.allclose(shared, plain, atol=1e-5) and torch.allclose(shared_entropy, plain_entropy, atol=1e-5)
    assert (shared[samples.completion_mask == 0] == 0).all() and (shared[samples.completion_mask == 1] != 0).all()
    expected, got = weighted_grads(model, plain), weighted_grads(model, shared)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, got))


def test_each_prompt_runs_once_per_group_and_rows_are_cut_to_their_length():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer())
    samples = _samples(model.config.vocab_size, k=4)
    seen = []
    def record(module, args, kwargs):  # (rows, tokens, whether the forward reads a prompt's cache)
        cached = kwargs.get("cache", kwargs.get("past_key_values")) is not None
        seen.append((*kwargs["input_ids"].shape, cached))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        shared_prompt.shared_prompt_logprobs(model, samples, group_overhead=0)
    hook.remove()
    prompts = [s for s in seen if not s[2]]
    assert sorted(s[:2] for s in prompts) == [(1, 5), (1, 7), (1, 9)]  # three groups, three prompt forwards
    tokens = sum(s[0] * s[1] for s in seen if s[2])
    # no overhead allowed: no padding at all; a row runs all its tokens but the last (which predicts nothing)
    assert tokens == int((samples.completion_mask.sum(1) - 1).clamp(min=0).sum())


def test_gradient_checkpointing_of_the_model_is_restored_after_the_call():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer())
    models.enable_activation_checkpointing(model)
    model.train()
    flags = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert flags
    shared_prompt.shared_prompt_logprobs(model, _samples(model.config.vocab_size))
    assert all(m.gradient_checkpointing is True for m in flags)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_layer_by_layer_recompute_over_the_prompt_cache_gives_the_plain_gradients(monkeypatch, lora):
    """A model with Hugging Face's per-layer checkpointing on: the completion rows recompute one layer at a
    time over a read-only prompt cache (a replayed layer must read what it read first) and give the plain
    path's log-probs and gradients."""
    model = models.load_causal_lm("tiny:qwen2")
    if lora:
        model = models.apply_lora(model, models.LoRA(r=2, alpha=4, dropout=0.0))
    models.enable_activation_checkpointing(model)
    model.train()
    ways = []
    run = shared_prompt._run_completions
    monkeypatch.setattr(shared_prompt, "_run_completions", lambda *a, **k: ways.append(k.get("per_layer_recompute"))
                        or run(*a, **k))
    samples = _samples(model.config.vocab_size)
    plain, _ = logprobs.completion_logprobs(model, samples)
    expected = weighted_grads(model, plain)
    shared, _ = shared_prompt.shared_prompt_logprobs(model, samples, recompute=True)
    assert ways and all(ways)
    assert torch.allclose(shared, plain, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, weighted_grads(model, shared)))

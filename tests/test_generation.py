import torch

from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids
from lit_align.generation import SamplingParams, completion_mask, sample

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
    assert completion_mask(ids, eos_id=3).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]

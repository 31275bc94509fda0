"""Sampling on the study's model family: the Qwen vocabulary (id 0 is "!"), the base layout whose EOS
is not the chat's end-of-turn token, an instruct generation_config with a repetition penalty, and
temperature 0.7."""

from __future__ import annotations

import torch

from lit_align.modeling import models
from lit_align.data.collate import collate_prompts
from lit_align.data.formats import chat_example, prompt_ids, stop_token_ids
from lit_align.sampling.generate import SamplingParams, sample
from lit_align.methods.rloo import RLOO
from lit_align.rewards.base import Reward
from transformers import GenerationConfig

from conftest import completion_logits, end_of_turn_biased

RECORDS = [{"prompt": [{"role": "user", "content": "hello there"}]},
           {"prompt": [{"role": "user", "content": "count to three"}]}]
STUDY = SamplingParams(max_new_tokens=6, temperature=0.7, n=4)


def _batch(tokenizer, records=RECORDS):
    return collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)


def test_base_layout_stops_at_eos_and_at_the_template_end_of_turn(qwen_tokenizer):
    tokens = qwen_tokenizer.convert_ids_to_tokens(stop_token_ids(qwen_tokenizer))
    assert qwen_tokenizer.eos_token == "<|endoftext|>" and tokens == ["<|endoftext|>", "<|im_end|>"]
    assert qwen_tokenizer.convert_ids_to_tokens(0) == "!"


def test_sampling_stops_at_im_end_and_masks_end_there(qwen_tokenizer, qwen_lm):
    """Every row here ends with <|im_end|> long before max_new_tokens, at lengths that differ: generation
    must stop once the last row has ended, and each row's mask must end on its first <|im_end|>. A
    sampler that does not stop at the end-of-turn token decodes on to max_new_tokens (the batch comes
    back that wide) or leaves the rows cut; with a row cut at max_new_tokens in the batch, as the study's
    settings give, the width would be max_new_tokens either way and the check could not fail."""
    params = SamplingParams(max_new_tokens=48, temperature=0.7, n=4)
    batch = _batch(qwen_tokenizer)
    out = sample(qwen_lm, qwen_tokenizer, batch.input_ids, batch.attention_mask, params, seed=0)
    eot = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    lengths = out.completion_mask.sum(1).tolist()
    assert not out.truncated.any(), "every row ends at a stop token"
    assert len(set(lengths)) > 1, "the rows end at different lengths"
    for row, n in enumerate(lengths):  # the mask ends on the first <|im_end|>, and it is the last kept token
        assert out.completion_ids[row, n - 1] == eot and (out.completion_ids[row, : n - 1] != eot).all()
        assert (out.completion_ids[row, n:] == qwen_tokenizer.pad_token_id).all()
    # generation stopped once every row had ended, not at max_new_tokens regardless
    assert out.completion_ids.size(1) == max(lengths) < params.max_new_tokens


def test_texts_are_decoded_from_the_kept_tokens_only(qwen_tokenizer, qwen_lm):
    """Padding past the end is id 0 nowhere: in Qwen's vocabulary id 0 is "!", and must never reach a reward."""
    batch = _batch(qwen_tokenizer)
    out = sample(qwen_lm, qwen_tokenizer, batch.input_ids, batch.attention_mask, STUDY, seed=0)
    short = (out.completion_mask.sum(1) < out.completion_ids.size(1)).nonzero().flatten().tolist()
    assert short, "some rows must end before others"
    for row, text in enumerate(out.texts):
        kept = out.completion_ids[row][out.completion_mask[row].bool()].tolist()
        assert text == qwen_tokenizer.decode(kept, skip_special_tokens=True)
    assert all(not out.texts[row].endswith("!") for row in short)


def test_a_shipped_repetition_penalty_changes_nothing():
    tokenizer = models.load_tokenizer("tiny:qwen2-instruct")
    model = end_of_turn_biased(models.load_causal_lm("tiny:qwen2-instruct"), tokenizer, lift=1.5)
    assert model.generation_config.repetition_penalty == 1.1 and model.generation_config.top_k == 20
    batch = _batch(tokenizer)
    with torch.no_grad():  # favour the prompt's own tokens, so that a penalty on repeats would bite
        model.get_input_embeddings().weight[batch.input_ids.unique(), 0] = 2.0
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=4)
    shipped = sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=5)
    assert model.generation_config.repetition_penalty == 1.1, "the model's own config is restored afterwards"
    model.generation_config = GenerationConfig()
    plain = sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=5)
    assert torch.equal(shipped.completion_ids, plain.completion_ids) and shipped.texts == plain.texts


class Length(Reward):
    def __call__(self, prompts, completions, records):
        return torch.tensor([float(len(c)) for c in completions])


def test_rloo_log_probs_are_those_of_the_sampling_temperature(qwen_tokenizer, qwen_lm):
    """The log-probs RLOO trains on equal log_softmax(z / T) of the tokens actually sampled."""
    module = RLOO(model="tiny:qwen2", reward=Length(), rloo_k=4, generation=SamplingParams(max_new_tokens=6, temperature=0.7))
    module.policy = qwen_lm.eval()
    batch = _batch(qwen_tokenizer)
    samples = sample(qwen_lm, qwen_tokenizer, batch.input_ids, batch.attention_mask, module.sampling, seed=1)
    assert samples.temperature == 0.7
    with torch.no_grad():
        logps, _ = module._logps(qwen_lm, samples)
    logits = completion_logits(qwen_lm, samples).float()
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, samples.completion_ids[..., None]).squeeze(-1)
    keep = samples.completion_mask.bool()
    assert torch.allclose(logps[keep], expected[keep], atol=1e-4)
    at_one = torch.log_softmax(logits, -1).gather(-1, samples.completion_ids[..., None]).squeeze(-1)
    assert (logps[keep] - at_one[keep]).abs().max() > 1e-2, "T = 0.7 and T = 1 must differ here"


def test_sft_targets_end_with_im_end_once_under_the_base_layout(qwen_tokenizer):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "no"}]
    example = chat_example(chat, 0, "r", qwen_tokenizer)
    eot = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = [i for i, label in zip(example.input_ids, example.labels) if label != -100]
    expected = (qwen_tokenizer("yes", add_special_tokens=False)["input_ids"] + [eot]
                + qwen_tokenizer("no", add_special_tokens=False)["input_ids"] + [eot])
    assert targets == expected  # each turn's text and exactly one <|im_end|>; the newline after it is no target
    assert example.input_ids.count(qwen_tokenizer.eos_token_id) == 0  # no <|endoftext|> written by the template


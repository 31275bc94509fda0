"""Under autocast with the weight cache off (as Lightning runs steps), each call casts every weight once."""

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_align.objectives import logprobs
from lit_align.modeling import tiny
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import IGNORE_INDEX
from lit_align.sampling.generate import SamplingParams, sample
from lit_align.methods import SFT
from lit_align.rewards.model import reward_scores

from in_memory import InMemory

UNCACHED = {"device_type": "cpu", "dtype": torch.bfloat16, "cache_enabled": False}


class CastCounter(TorchDispatchMode):
    """Counts float32 → bfloat16 copies of one weight."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight, self.casts = weight, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
                and args[0].data_ptr() == self.weight.data_ptr()):
            self.casts += 1
        return func(*args, **kwargs)


def _ragged_batch():
    """Four right-padded rows of very different lengths: regrouping runs them as several forwards."""
    torch.manual_seed(0)
    lengths = [3, 5, 18, 20]
    ids = torch.randint(4, 300, (4, 20))
    mask = (torch.arange(20)[None] < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :2] = IGNORE_INDEX
    return ids, mask, labels


def _logprobs_and_grads(model, cache_enabled: bool):
    ids, mask, labels = _ragged_batch()
    model.zero_grad(set_to_none=True)
    counter = CastCounter(model.model.layers[0].self_attn.q_proj.weight)
    with torch.autocast(**(UNCACHED | {"cache_enabled": cache_enabled})), counter:
        logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels, unpad=True, group_overhead=0)
    logps.sum().backward()
    return counter.casts, logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_regrouped_forwards_cast_each_weight_once_and_match_the_cached_autocast():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer()).train()
    ids, mask, _ = _ragged_batch()
    groups = logprobs.regroup_plan(mask.sum(1).tolist(), ids.size(1), ids.device, 0)
    assert groups is not None and len(groups) >= 2, "the batch must run as several forwards"
    casts, logps, grads = _logprobs_and_grads(model, cache_enabled=False)
    assert casts == 1, f"q_proj was cast {casts} times for {len(groups)} forwards"
    _, logps_cached, grads_cached = _logprobs_and_grads(model, cache_enabled=True)
    assert torch.equal(logps, logps_cached)
    assert all(torch.equal(g, grads_cached[n]) for n, g in grads.items())
    with torch.autocast(**UNCACHED):
        logprobs.model_token_logprobs(model, ids, mask, ids, unpad=True, group_overhead=0)
        assert not torch.is_autocast_cache_enabled(), "the caller's cache setting comes back on exit"


def test_a_cast_does_not_outlive_its_call():
    """A reference or sampling call under no_grad, then the policy's call with grad, in one uncached
    step: the second call casts afresh (torch before the fix for no_grad casts would reuse a cast
    without gradient history), and gradients reach the weights."""
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer()).train()
    ids, mask, labels = _ragged_batch()
    counter = CastCounter(model.model.layers[0].self_attn.q_proj.weight)
    with torch.autocast(**UNCACHED), counter:
        with torch.no_grad():
            logprobs.model_token_logprobs(model, ids, mask, labels, unpad=True, group_overhead=0)
        logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels, unpad=True, group_overhead=0)
    assert counter.casts == 2
    logps.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_sampling_casts_each_weight_once_not_once_per_token():
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tok)
    prompt = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = (prompt != 0).long()
    counter = CastCounter(model.model.layers[0].mlp.up_proj.weight)
    with torch.autocast(**UNCACHED), counter:
        out = sample(model, tok, prompt, mask, SamplingParams(max_new_tokens=6, temperature=0.0, n=2))
    assert out.completion_ids.size(1) > 1
    assert counter.casts == 1


def test_reward_scores_cast_each_weight_once():
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_classifier(tok)
    ids, mask, _ = _ragged_batch()
    counter = CastCounter(model.bert.encoder.layer[0].attention.self.query.weight)
    with torch.autocast(**UNCACHED), counter:
        reward_scores(model, ids, mask, unpad=True, group_overhead=0)
    assert counter.casts == 1


def test_lightning_bf16_mixed_sft_step_casts_each_weight_once():
    torch.manual_seed(0)
    module = SFT(model="tiny:causal-lm")
    records = [{"messages": [{"role": "user", "content": "q " * (1 + 7 * i)}, {"role": "assistant", "content": "a " * (2 + 5 * i)}]}
               for i in range(4)]
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    module.configure_model()
    counter = CastCounter(module.policy.model.layers[0].self_attn.q_proj.weight)
    with counter:
        trainer.fit(module, AlignDataModule(InMemory(records), batch_size=4, max_length=64).connect(module.tokenizer, module.batch_kind))
    assert trainer.global_step == 1
    assert counter.casts == 1

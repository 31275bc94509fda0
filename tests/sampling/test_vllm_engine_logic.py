"""The colocated vLLM engine's own logic, with stand-ins for vLLM's objects (runs without vLLM):
how a row ended, the order of waking and pushing in sleep mode, and QLoRA refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_align.data.formats import stop_token_ids
from lit_align.sampling import vllm_engine
from lit_align.sampling.engines import VLLM
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.vllm_engine import engine_samples


def _output(*completions):
    """What ``vllm_engine.generate`` answers for one prompt with these ``(token ids, finish reason)`` completions."""
    return [{"completions": [{"token_ids": ids, "logprobs": [-0.5] * len(ids), "finish_reason": reason}
                             for ids, reason in completions]}]


def test_truncation_comes_from_the_engines_finish_reason_not_from_the_pad_id(qwen_tokenizer):
    """Qwen2.5 base pads with <|endoftext|>, which is also a stop token: a row cut by max_model_len and
    padded to the batch's width must stay truncated, with no phantom end token in its mask."""
    pad = qwen_tokenizer.pad_token_id
    assert pad in stop_token_ids(qwen_tokenizer)  # the layout the test is about
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    words = qwen_tokenizer("one two three four five", add_special_tokens=False).input_ids[:5]
    outputs = _output((words[:2] + [im_end], "stop"),  # ended by a stop token: 3 tokens, the stop kept
                      (words[:3], "length"),  # cut by max_model_len, shorter than the widest row
                      (words[:5], "length"))  # cut at max_tokens
    prompt = torch.tensor([[7, 8]])
    samples = engine_samples(qwen_tokenizer, prompt, torch.ones_like(prompt), SamplingParams(max_new_tokens=5, n=3), outputs)
    assert samples.completion_mask.sum(-1).tolist() == [3, 3, 5]
    assert samples.truncated.tolist() == [False, True, True]
    assert samples.completion_ids[1, 3:].tolist() == [pad, pad]  # padding, outside the mask
    assert samples.engine_logps[1].tolist() == [-0.5, -0.5, -0.5, 0.0, 0.0]


class _RecordingLLM:
    """A stand-in for ``vllm.LLM`` that records what the engine asks of it, in order."""

    def __init__(self, calls: list[str]):
        self.calls = calls

    def wake_up(self, tags=None):
        self.calls.append("wake_up" + (f"({','.join(tags)})" if tags else "()"))

    def sleep(self, level=1):
        self.calls.append(f"sleep({level})")


def test_sleep_mode_wakes_the_weights_then_pushes_then_wakes_the_cache(monkeypatch):
    """A level-1 sleep releases the weights; waking restores the copy taken at sleep time. Pushing the new
    weights before waking would write into released memory or be overwritten by the stale copy."""
    calls: list[str] = []
    engine = VLLM(sleep_between_rollouts=True)
    engine.llm = _RecordingLLM(calls)

    def sync(model):  # the push itself, as VLLM.sync ends: the engine now holds the current weights
        calls.append("sync")
        engine.stale = False

    monkeypatch.setattr(engine, "sync", sync)
    monkeypatch.setattr(vllm_engine, "requests", lambda *args: [])
    monkeypatch.setattr(vllm_engine, "generate", lambda *args: calls.append("generate"))
    monkeypatch.setattr(vllm_engine, "engine_samples", lambda *args: None)
    ids = torch.tensor([[1, 2]])
    engine.sample(None, None, ids, torch.ones_like(ids), SamplingParams())  # the first sampling: awake already
    assert calls == ["generate", "sleep(1)"]
    calls.clear()
    engine.weights_changed()  # an optimiser step
    engine.sample(None, None, ids, torch.ones_like(ids), SamplingParams())
    assert calls == ["wake_up(weights)", "sync", "wake_up(kv_cache)", "generate", "sleep(1)"]
    calls.clear()
    engine.sample(None, None, ids, torch.ones_like(ids), SamplingParams())  # no step in between: no push
    assert calls == ["wake_up(weights)", "wake_up(kv_cache)", "generate", "sleep(1)"]


def test_qlora_with_the_vllm_engine_is_refused_with_the_reason():
    from lit_align.methods import RLOO
    from lit_align.modeling.models import LoRA

    with pytest.raises(ValueError, match="load_in_4bit.*VLLM.*float dtype"):
        RLOO(model="tiny:causal-lm", reward=None, lora=LoRA(), load_in_4bit=True, rollout=VLLM())


def test_weights_are_pushed_in_the_engines_dtype(tiny_lm):
    """A bf16 engine fed float32 weights casts each one and logs a warning per tensor at every sync; the
    push itself must hand over the engine's dtype (the policy here is float32)."""
    received = []

    class Runner:
        model_config = SimpleNamespace(dtype=torch.bfloat16)

        def reload_weights(self, weights_iterator):
            received.extend((name, tensor.dtype) for name, tensor in weights_iterator)

    engine = VLLM(dtype="bfloat16")
    worker = SimpleNamespace(worker=SimpleNamespace(model_runner=Runner()))  # where vLLM keeps it, in-process
    engine.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker)),
                                 reset_prefix_cache=lambda: None)
    assert next(tiny_lm.parameters()).dtype == torch.float32
    engine.sync(tiny_lm)
    assert len(received) == len(tiny_lm.state_dict()) and {dtype for _, dtype in received} == {torch.bfloat16}
    assert engine.syncs == 1 and not engine.stale

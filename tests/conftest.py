"""Shared fixtures: an offline tokenizer, tiny models, and a no-network guard."""

from __future__ import annotations

import os

# Tests never reach a hub: fail fast instead of retrying connections.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from lit_align.modeling import tiny  # noqa: E402

# Tiny models gain nothing from threads, and several threaded processes on 2 cores slow each other
# down badly (OpenMP spin-waits), e.g. when a training run shares the machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.tiny_tokenizer()


@pytest.fixture
def tiny_lm(tokenizer):
    return tiny.tiny_causal_lm(tokenizer)


def pinned_grpo(monkeypatch, tokenizer, records: list[dict], lora: bool, **settings):
    """A GRPO on the tiny model (LoRA r2 where ``lora``; plain SGD at lr 1 unless ``optimizer`` is given)
    whose engine always returns the samples first drawn for ``records`` (seed 3): the module, its
    trainable weights before training, and the samples."""
    from lit_align.data.collate import collate_prompts
    from lit_align.data.formats import prompt_ids
    from lit_align.methods import GRPO
    from lit_align.modeling.models import LoRA
    from lit_align.sampling.generate import SamplingParams, sample

    torch.manual_seed(0)
    settings = {"optimizer": lambda p: torch.optim.SGD(p, lr=1.0), **settings}
    module = GRPO(model="tiny:causal-lm", lora=LoRA(r=2, alpha=4, dropout=0.0) if lora else None,
                  generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0), **settings)
    module.configure_model()
    start = {n: t.detach().clone() for n, t in module.policy.named_parameters() if t.requires_grad}
    batch = collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)
    pinned = sample(module.policy, tokenizer, batch.input_ids, batch.attention_mask, module.sampling, seed=3)
    monkeypatch.setattr(module.rollout, "sample", lambda *a, **k: pinned)
    return module, start, pinned


def weighted_grads(model, value: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of the trainable parameters of ``value`` weighted 0.5 .. 1.5 along its elements (so every
    element's gradient counts, each differently), summed."""
    model.zero_grad()
    (value * torch.linspace(0.5, 1.5, value.numel()).view_as(value)).sum().backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def causal_lm_layouts(eager: bool = False):
    """(name, tiny model) for the Llama and Qwen2 layouts, full and LoRA; with ``eager``, also a Llama whose
    attention runs transformers' eager implementation (an additive mask, where SDPA takes a bool one)."""
    from lit_align.modeling import models

    tok = tiny.tiny_tokenizer()
    lora = models.LoRA(r=2, alpha=4, dropout=0.0)
    yield "llama-full", tiny.tiny_causal_lm(tok)
    yield "llama-lora", models.apply_lora(tiny.tiny_causal_lm(tok), lora)
    yield "qwen2-full", models.load_causal_lm("tiny:qwen2")
    yield "qwen2-lora", models.apply_lora(models.load_causal_lm("tiny:qwen2"), lora)
    if eager:
        model = tiny.tiny_causal_lm(tok)
        model.config._attn_implementation = "eager"
        yield "llama-eager", model


def largest_relative_difference(got: dict, expected: dict) -> float:
    """The largest absolute difference between two dicts of tensors (weight changes, say), over the
    expected side's largest magnitude (at least 1)."""
    scale = max(1.0, max(float(t.abs().max()) for t in expected.values()))
    return max(float((got[n] - t).abs().max()) for n, t in expected.items()) / scale


def trainer(**settings):
    """A quiet Lightning trainer on one CPU: no logger, checkpoints, progress bar, model summary or sanity
    validation; ``settings`` add to these or override them (``from conftest import trainer``)."""
    import lightning as L

    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    return L.Trainer(**(defaults | settings))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def end_of_turn_biased(model, tokenizer, lift: float = 2.0):
    """Make a random Qwen2 end its turns after a few tokens: every embedding gets a shared first
    coordinate of 1 (a constant logit shift, since the head is tied) and ``<|im_end|>`` gets ``lift``."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[:, 0] = 1.0
        weight[eot, 0] = lift
    return model


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen tokenizer set up as Qwen2.5-0.5B base (EOS <|endoftext|>, turns end with <|im_end|>)."""
    from lit_align.modeling import models

    return models.load_tokenizer("tiny:qwen2")


@pytest.fixture
def qwen_lm(qwen_tokenizer):
    """tiny:qwen2, biased to end its turns with <|im_end|> within a few tokens at temperature 0.7."""
    from lit_align.modeling import models

    return end_of_turn_biased(models.load_causal_lm("tiny:qwen2"), qwen_tokenizer)


def completion_logits(model, samples) -> torch.Tensor:
    """(N, C, V) logits that predict each completion token, from one plain forward of prompt + completion."""
    from lit_align.objectives import ops

    ids = torch.cat([samples.prompt_ids, samples.completion_ids], 1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=ops.position_ids_from_mask(mask)).logits
    p = samples.prompt_ids.size(1)
    return logits[:, p - 1 : -1]


def first_token_chi2(engine, model, tokenizer, temperature: float = 0.7, draws: int = 4000) -> float:
    """Chi-squared of ``engine``'s first sampled tokens against softmax(z / T) of ``model``: five tokens
    lifted to hold most of the mass, every other token in one bin (5 degrees of freedom)."""
    from lit_align.data.collate import collate_prompts
    from lit_align.data.formats import prompt_ids
    from lit_align.sampling.generate import SamplingParams

    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[:, 0] = 1.0
        weight[10:15, 0] = torch.tensor([1.35, 1.3, 1.25, 1.2, 1.15])
    record = {"prompt": "hello world"}
    rows = draws // 100
    batch = collate_prompts([prompt_ids(record, "r", tokenizer)] * rows, [record] * rows, tokenizer.pad_token_id)
    params = SamplingParams(max_new_tokens=1, temperature=temperature, n=100)
    first = engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=0).completion_ids[:, 0]
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids[:1], attention_mask=batch.attention_mask[:1]).logits[0, -1]
    probs = torch.softmax(logits.double() / temperature, -1)
    top = probs.argsort(descending=True)[:5]
    expected = torch.cat([probs[top], (1 - probs[top].sum()).view(1)]) * first.numel()
    observed = torch.stack([(first == t).sum() for t in top] + [(~torch.isin(first, top)).sum()]).double()
    assert expected.min() > 20, expected  # every bin well filled, or the test says nothing
    return float(((observed - expected) ** 2 / expected).sum())


CHI2_5_DOF_P001 = 20.52  # the chi-squared value a true 5-degree-of-freedom fit exceeds with probability 0.001


# The study's stage plans and runner are tools of the checkout (tools/study), not of the package.
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def tiny_llama_hd32(folder, seed: int = 0, layers: int = 2):
    """A tiny Llama whose heads are 32 wide (vLLM's CPU attention has no 16-wide kernels), with its
    tokenizer, saved to ``folder``; returns (model in eval mode, tokenizer)."""
    from lit_align.modeling import tiny

    tokenizer = tiny.tiny_tokenizer()
    config = tiny._llama_config(tokenizer)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    config.num_hidden_layers = layers
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tiny.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


from lit_align.rewards.base import Reward  # noqa: E402


class LengthReward(Reward):
    """A reward that varies between samples: each completion's length in characters."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([float(len(c)) for c in completions])


class ChatPrompts:
    """Eight one-turn chat prompts, as a data source."""

    def records(self):
        for i in range(8):
            yield f"p:{i}", {"prompt": [{"role": "user", "content": f"say something {i}"}]}


def step_outputs_recorder():
    """A Lightning callback that keeps what every training step returned (its ``outputs``; {} for a step
    that returned nothing)."""
    import lightning as L

    class Outputs(L.Callback):
        def __init__(self):
            self.outputs = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.outputs.append(outputs)

    return Outputs()


def engine_gap_recorder():
    """A Lightning callback that keeps ``train/engine_logprob_gap`` after every training batch (its ``gaps``)."""
    import lightning as L

    class Gaps(L.Callback):
        def __init__(self):
            self.gaps = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if outputs:  # a step that only drew (drawing ahead) learnt nothing and logged no gap
                self.gaps.append(float(trainer.callback_metrics["train/engine_logprob_gap"]))

    return Gaps()

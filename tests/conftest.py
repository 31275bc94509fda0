"""Shared fixtures: an offline tokenizer, tiny models, and a no-network guard."""

from __future__ import annotations

import os

# Tests never reach a hub: fail fast instead of retrying connections.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from lit_align import tiny  # noqa: E402

# Tiny models gain nothing from threads, and several threaded processes on 2 cores slow each other
# down badly (OpenMP spin-waits), e.g. when a training run shares the machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.tiny_tokenizer()


@pytest.fixture
def tiny_lm(tokenizer):
    return tiny.tiny_causal_lm(tokenizer)


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
    from lit_align import models

    return models.load_tokenizer("tiny:qwen2")


@pytest.fixture
def qwen_lm(qwen_tokenizer):
    """tiny:qwen2, biased to end its turns with <|im_end|> within a few tokens at temperature 0.7."""
    from lit_align import models

    return end_of_turn_biased(models.load_causal_lm("tiny:qwen2"), qwen_tokenizer)


def completion_logits(model, samples) -> torch.Tensor:
    """(N, C, V) logits that predict each completion token, from one plain forward of prompt + completion."""
    from lit_align import ops

    ids = torch.cat([samples.prompt_ids, samples.completion_ids], 1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=ops.position_ids_from_mask(mask)).logits
    p = samples.prompt_ids.size(1)
    return logits[:, p - 1 : -1]

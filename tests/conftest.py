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
